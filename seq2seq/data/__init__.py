"""The data pipeline: corpus -> normalized, filtered splits -> tokenizer -> batches.

    cfg = DataConfig(corpus="multi30k", src="de", tgt="en")
    data = load_dataset(cfg)                       # splits of normalized text pairs
    tok = PairTokenizer.train(data.splits["train"], cfg)
    train = BatchIterator(encode_pairs(tok, data.splits["train"]), cfg)
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from seq2seq.config import DataConfig, validate_data_config
from seq2seq.data.batching import Batch, BatchIterator, Example, bucket_batches, collate, make_example
from seq2seq.data.clean import filter_pairs, normalize, normalize_pairs, truncate_sources
from seq2seq.data.corpora import REGISTRY, SYNTHETIC_TASKS, Corpus, DataError, Pair, data_dir, open_corpus
from seq2seq.data.tokenizers import BOS, EOS, PAD, SPECIALS, UNK, PairTokenizer

__all__ = [
    "Batch", "BatchIterator", "BOS", "Corpus", "DataConfig", "DataError", "Dataset", "EOS", "Example",
    "PAD", "Pair", "PairTokenizer", "REGISTRY", "SPECIALS", "SYNTHETIC_TASKS", "UNK", "bucket_batches",
    "collate", "data_dir", "encode_pairs", "length_summary", "load_dataset", "normalize", "open_corpus",
    "split_stats",
]


@dataclass
class Dataset:
    name: str
    src: str
    tgt: str
    splits: dict[str, list[Pair]]
    log: list[str] = field(default_factory=list)  # every pair skipped or removed, and why


def load_dataset(cfg: DataConfig, splits: list[str] | None = None) -> Dataset:
    """Read, normalize and (on the training split only, so that evaluation sets stay
    comparable with published results) filter the splits of the corpus ``cfg`` names."""
    try:
        validate_data_config(cfg)
    except ValueError as e:
        raise DataError(str(e)) from None
    corpus = open_corpus(cfg)
    data = Dataset(corpus.name, corpus.src, corpus.tgt, {})
    for split in splits or corpus.split_names:
        pairs, report = corpus.read(split)
        where = f"{corpus.name}/{split}"
        data.log += report.lines(where)
        pairs = normalize_pairs(pairs, cfg.lowercase, cfg.ascii_fold)
        kept = [p for p in pairs if p[0] and p[1]]
        if len(kept) != len(pairs):
            data.log.append(f"{where}: skipped {len(pairs) - len(kept)} pair(s) empty after normalization")
        if split == "train" and cfg.truncate_source:
            kept, cut = truncate_sources(kept, cfg.truncate_source)
            data.log.append(f"{where}: cut {cut} source(s) to their first {cfg.truncate_source} words")
        if split == "train":
            kept, steps = filter_pairs(kept, cfg.min_len, cfg.max_len, cfg.max_ratio, cfg.dedup)
            data.log += [f"{where}: filter '{s.name}' removed {s.removed} pair(s)" for s in steps]
        data.splits[split] = kept
    return data


def encode_pairs(tokenizer: PairTokenizer, pairs: list[Pair]) -> list[Example]:
    return [make_example(tokenizer.src.encode(s), tokenizer.tgt.encode(t)) for s, t in pairs]


def length_summary(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0}
    ordered = sorted(lengths)
    return {
        "mean": statistics.fmean(ordered),
        "median": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "max": ordered[-1],
    }


def split_stats(pairs: list[Pair]) -> dict:
    """Pair count, and per side the length distribution and vocabulary size, in words."""
    out = {"pairs": len(pairs)}
    for side, index in (("src", 0), ("tgt", 1)):
        words = [p[index].split() for p in pairs]
        out[side] = length_summary([len(w) for w in words])
        out[side]["vocab"] = len({w for ws in words for w in ws})
    return out
