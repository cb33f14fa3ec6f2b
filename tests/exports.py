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


def int8_agreement() -> float:
    """The share of int8 outputs that should equal the float32 ones. On CPUs without int8
    dot-product instructions (AVX-512 VNNI) int8 engines give each activation 7 bits, not 8
    (FBGEMM's 16-bit sums would saturate), and more outputs move: measured on an AVX2 EPYC,
    64-79% where VNNI machines give 80-95%. A wrong conversion agrees on next to nothing."""
    from seq2seq.engine import extension

    return 0.8 if extension().int8_activation_bits() == 8 else 0.6


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
