"""Export directories of small random models, for the export and engine tests."""

from dataclasses import asdict
from pathlib import Path

import torch

from seq2seq.config import DataConfig, ModelConfig
from seq2seq.data import PairTokenizer
from seq2seq.data.tokenizers import SPECIALS, WORD_START, WordTokenizer
from seq2seq.export import export
from seq2seq.models import build_model
from tests.test_models import FAMILIES, SMALL


def sentencepiece_tokenizer(sentences: list[str], vocab_size: int = 400) -> PairTokenizer:
    from seq2seq.data.tokenizers import SentencePieceTokenizer

    sp = SentencePieceTokenizer.train(sentences, vocab_size)
    return PairTokenizer(sp, sp)


def random_export(folder: Path, family: str, seed: int = 0, sharpen: float = 4.0, tokenizer: PairTokenizer = None,
                  **changes) -> Path:
    """Export a randomly initialized model of one of test_models.FAMILIES with a word vocabulary.

    An untrained model's next-token distribution is nearly flat, so two different outputs
    can score within float rounding of each other and any two correct decoders may part
    ways on them; scaling the output layer by ``sharpen`` gives it real preferences."""
    if tokenizer is not None:  # the model's vocabularies follow the given tokenizer's
        changes = {**changes, "src_vocab": tokenizer.src.vocab_size, "tgt_vocab": tokenizer.tgt.vocab_size}
    cfg = ModelConfig(dropout=0.0, **{**SMALL, **FAMILIES[family], **changes})
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        model.out.weight.mul_(sharpen)
        model.out.bias.mul_(sharpen)
    if tokenizer is None:
        words = WordTokenizer(list(SPECIALS) + [f"{WORD_START}w{i}" for i in range(cfg.src_vocab - len(SPECIALS))])
        tokenizer = PairTokenizer(words, words)
    data = DataConfig(tokenizer="word" if tokenizer.src.kind == "word" else "sentencepiece")
    ckpt = {"model": asdict(cfg), "model_state": model.state_dict(), "tokenizer": tokenizer.state(),
            "data": asdict(data)}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "model.pt")
    return export(folder / "model.pt", folder / "export")
