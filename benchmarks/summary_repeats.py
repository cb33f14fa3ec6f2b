"""Repeated words in summaries, and whether one set of summaries beats another.

For a hypotheses file of a summarization split (one summary per line, in split order, as
`seq2seq evaluate --out` writes it): the share of summaries, and of references, that hold
a word twice (words as rouge-score's tokenizer makes them, lowercased); ROUGE-L F1 as it
is and with every repeated word deleted after its first occurrence. With --against, the
mean per-text ROUGE-L difference to another hypotheses file of the same split and its 95%
interval by a paired bootstrap over texts (texts resampled, the two systems together).

    python benchmarks/summary_repeats.py recipes/debian_summarize_transformer_copy.toml \\
        --split test runs/X/eval/cpp/hypotheses.txt --against runs/Y/eval/cpp/hypotheses.txt
"""

from __future__ import annotations

import argparse
import random
import statistics


def has_repeat(words: list[str]) -> bool:
    return len(words) != len(set(words))


def without_repeats(text: str) -> str:
    """The text with every word deleted that, lowercased, occurred earlier in it."""
    seen, kept = set(), []
    for word in text.split():
        key = word.lower()
        if key not in seen:
            seen.add(key)
            kept.append(word)
    return " ".join(kept)


def paired_interval(diffs: list[float], rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def read_lines(path: str, n: int) -> list[str]:
    lines = open(path, encoding="utf-8").read().split("\n")[:n]
    if len(lines) != n:
        raise SystemExit(f"{path}: {len(lines)} lines for a split of {n} texts")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a summarization recipe (its [data] table picks the corpus)")
    parser.add_argument("hypotheses", help="one summary per line, in the split's order")
    parser.add_argument("--split", default="test")
    parser.add_argument("--against", help="another hypotheses file of the same split")
    args = parser.parse_args()

    from rouge_score import tokenize
    from rouge_score.rouge_scorer import RougeScorer

    from seq2seq.data.corpora import open_corpus
    from seq2seq.train import load_recipe

    data_cfg, _, _ = load_recipe(args.recipe)
    pairs, _ = open_corpus(data_cfg).read(args.split)
    refs = [ref for _, ref in pairs]
    hyps = read_lines(args.hypotheses, len(refs))
    words = lambda text: tokenize.tokenize(text, None)  # noqa: E731  (rouge-score's, no stemming)
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    rouge = lambda texts: [scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(texts, refs)]  # noqa: E731

    print(f"{data_cfg.corpus} {args.split}: {len(refs)} texts")
    print(f"summaries with a repeated word: {statistics.fmean(has_repeat(words(h)) for h in hyps):.1%}, "
          f"references: {statistics.fmean(has_repeat(words(r)) for r in refs):.1%}")
    scores = rouge(hyps)
    print(f"ROUGE-L F1: {statistics.fmean(scores):.4f}, "
          f"repeated words deleted: {statistics.fmean(rouge([without_repeats(h) for h in hyps])):.4f}")
    if args.against:
        other = rouge(read_lines(args.against, len(refs)))
        diffs = [a - b for a, b in zip(scores, other)]
        low, high = paired_interval(diffs)
        print(f"against {args.against}: {statistics.fmean(other):.4f}; difference {statistics.fmean(diffs):+.4f}, "
              f"95% paired bootstrap interval [{low:+.4f}, {high:+.4f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
