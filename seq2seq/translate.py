"""Translating text with a trained checkpoint through the reference decoder.

    translator = Translator("runs/demo/best.pt")
    results = translator.translate(["Il fait beau."], DecodingOptions(beam_size=5))
    results[0][0].text

Sources are normalized exactly as the training data was (the checkpoint's DataConfig),
sorted by length into batches under a token budget, decoded, and returned in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from seq2seq.config import DataConfig, DecodingOptions, ModelConfig, validate_decoding_options
from seq2seq.data import PairTokenizer, collate, make_example, normalize
from seq2seq.decoding import Hypothesis, decode
from seq2seq.models import build_model


class CheckpointError(Exception):
    pass


@dataclass
class Translation:
    text: str
    tokens: list[int]
    score: float
    log_prob: float
    attention: torch.Tensor | None = None  # (output tokens + 1, [heads,] source tokens + 1)


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint's dict, or a CheckpointError saying why the file is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or not {"model", "model_state", "tokenizer", "data"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a seq2seq training checkpoint (model, model_state, tokenizer, data missing)")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, checkpoint dict) from a training checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a .pt file or a training out_dir holding best.pt")
    ckpt = read_checkpoint(path)
    ckpt["path"] = str(path)
    model = build_model(ModelConfig(**ckpt["model"]))
    model.load_state_dict(ckpt["model_state"])
    return model.to(device).eval(), PairTokenizer.from_state(ckpt["tokenizer"]), ckpt


class TextTranslator:
    """Text in, n-best translations out, around a ``decode_ids`` that subclasses provide.

    Sources are normalized as the training data was, sorted by length into batches under a
    token budget, decoded, and returned in input order. A source longer than
    ``max_source_tokens`` is an error, or is cut to that length when ``truncate`` is set."""

    tokenizer: PairTokenizer
    data_cfg: DataConfig
    model_cfg: ModelConfig
    max_source_tokens: int = 1024

    def decode_ids(self, sources: list[list[int]], opts: DecodingOptions) -> list[list[Hypothesis]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.src.encode(normalize(text, self.data_cfg.lowercase, self.data_cfg.ascii_fold))

    def source_limit(self) -> int:
        if self.model_cfg.family == "transformer":
            return min(self.max_source_tokens, self.model_cfg.max_positions - 1)
        return self.max_source_tokens

    def translate(self, sentences: list[str], opts: DecodingOptions = DecodingOptions(),
                  max_tokens: int = 2000, progress: bool = False, truncate: bool = False,
                  decode=None) -> list[list[Translation]]:
        """The n-best translations of each sentence; an empty source gives one empty translation.
        ``decode(ids, opts)`` decodes each batch (default: this translator's decode_ids)."""
        decode = decode or self.decode_ids
        validate_decoding_options(opts)
        ids = [self.encode(s) for s in sentences]
        limit = self.source_limit()
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                if not truncate:
                    raise ValueError(f"sentence {i + 1} has {len(seq)} tokens; this model reads at most {limit} "
                                     "(split the sentence, or ask for truncation)")
                ids[i] = seq[:limit]
        results: list[list[Translation]] = [[Translation("", [], 0.0, 0.0)] if not seq else [] for seq in ids]
        order = sorted((i for i, seq in enumerate(ids) if seq), key=lambda i: len(ids[i]))
        bar = tqdm(total=len(order), unit="sent", disable=not progress)
        start = 0
        while start < len(order):
            # Sorted by length, so the batch's longest sentence is its last one.
            end = start + 1
            while end < len(order) and (end - start + 1) * (len(ids[order[end]]) + 1) * opts.beam_size <= max_tokens:
                end += 1
            chunk = order[start:end]
            for i, hyps in zip(chunk, decode([ids[i] for i in chunk], opts)):
                results[i] = [self.translation(h) for h in hyps]
            bar.update(len(chunk))
            start = end
        bar.close()
        return results

    def translation(self, h: Hypothesis) -> Translation:
        """A hypothesis of token ids as text."""
        return Translation(self.tokenizer.tgt.decode(h.tokens), h.tokens, h.score, h.log_prob, h.attention)


class Translator(TextTranslator):
    """The reference decoder on a training checkpoint (.pt or its out_dir) or an export directory."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        from seq2seq.export import is_export, load_export

        self.device = torch.device(device)
        if is_export(checkpoint):
            exp = load_export(checkpoint)
            self.model, self.tokenizer = exp.model(self.device), exp.tokenizer
            self.checkpoint = {"path": str(exp.path), "model": exp.config["model"], "data": exp.config["data"]}
        else:
            self.model, self.tokenizer, self.checkpoint = load_checkpoint(checkpoint, self.device)
        self.data_cfg = DataConfig(**self.checkpoint["data"])
        self.model_cfg = ModelConfig(**self.checkpoint["model"])

    def decode_ids(self, sources: list[list[int]], opts: DecodingOptions) -> list[list[Hypothesis]]:
        batch = collate([make_example(seq, []) for seq in sources], range(len(sources))).to(self.device)
        return decode(self.model, batch.src, batch.src_lengths, opts)
