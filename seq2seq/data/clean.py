"""Text normalization and the filters applied to training pairs."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from seq2seq.data.corpora import Pair


def normalize(text: str, lowercase: bool = False, ascii_fold: bool = False) -> str:
    """Unicode NFC, control characters dropped, runs of whitespace made one space.

    ``ascii_fold`` is the classic tutorial's unicodeToAscii: decompose and drop the
    combining marks ("Ça été" -> "Ca ete"); characters with no ASCII base are kept.
    """
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    text = " ".join(text.split())
    if ascii_fold:
        decomposed = unicodedata.normalize("NFD", text)
        text = unicodedata.normalize("NFC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn"))
    if lowercase:
        text = text.lower()
    return text


def normalize_pairs(pairs: list[Pair], lowercase: bool = False, ascii_fold: bool = False) -> list[Pair]:
    return [(normalize(s, lowercase, ascii_fold), normalize(t, lowercase, ascii_fold)) for s, t in pairs]


def truncate_sources(pairs: list[Pair], words: int) -> tuple[list[Pair], int]:
    """Cut each source to its first ``words`` words; returns the pairs and how many were cut."""
    out, cut = [], 0
    for src, tgt in pairs:
        tokens = src.split(" ")
        if len(tokens) > words:
            src, cut = " ".join(tokens[:words]), cut + 1
        out.append((src, tgt))
    return out, cut


@dataclass
class FilterStep:
    name: str
    removed: int


def filter_pairs(
    pairs: list[Pair], min_len: int = 1, max_len: int = 0, max_ratio: float = 0.0, dedup: bool = False
) -> tuple[list[Pair], list[FilterStep]]:
    """Drop pairs by length in words, length ratio and exact duplication, in that order.

    Returns the kept pairs (order preserved) and how many each filter removed.
    """
    steps = []

    def keep(name: str, predicate) -> None:
        nonlocal pairs
        kept = [p for p in pairs if predicate(p)]
        steps.append(FilterStep(name, len(pairs) - len(kept)))
        pairs = kept

    def lengths(p: Pair) -> tuple[int, int]:
        return len(p[0].split()), len(p[1].split())

    if min_len > 1:
        keep(f"shorter than {min_len} words", lambda p: min(lengths(p)) >= min_len)
    if max_len > 0:
        keep(f"longer than {max_len} words", lambda p: max(lengths(p)) <= max_len)
    if max_ratio > 0:
        def ratio_ok(p: Pair) -> bool:
            a, b = lengths(p)
            return max(a, b) <= max_ratio * max(min(a, b), 1)
        keep(f"length ratio above {max_ratio:g}", ratio_ok)
    if dedup:
        seen: set[Pair] = set()

        def first_time(p: Pair) -> bool:
            if p in seen:
                return False
            seen.add(p)
            return True
        keep("duplicate pairs", first_time)
    return pairs, steps
