"""How far a summary made of the text's own words could go: for each text of a summarization
corpus's split, the best ROUGE-L F1 against its reference of any contiguous span of the
text's words (an oracle that knows the reference), and the share of reference words that
occur in the text. Words as rouge-score's default tokenizer makes them; the lead baseline
is scored both by rouge-score and by this script's own LCS, which must agree.

    python benchmarks/summary_oracle.py recipes/debian_summarize_transformer_copy.toml --split test
"""

from __future__ import annotations

import argparse
import statistics


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_f1(hyp: list[str], ref: list[str]) -> float:
    common = lcs_length(hyp, ref) if hyp and ref else 0
    if not common:
        return 0.0
    p, r = common / len(hyp), common / len(ref)
    return 2 * p * r / (p + r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a summarization recipe (its [data] table picks the corpus)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-span", type=int, default=20, help="the longest span tried, in words")
    args = parser.parse_args()

    from rouge_score import tokenize
    from rouge_score.rouge_scorer import RougeScorer

    from seq2seq.data.corpora import open_corpus
    from seq2seq.metrics import lead_texts
    from seq2seq.train import load_recipe

    data_cfg, _, _ = load_recipe(args.recipe)
    pairs, _ = open_corpus(data_cfg).read(args.split)
    words = lambda text: tokenize.tokenize(text, None)  # noqa: E731  (rouge-score's, no stemming)
    best, found = [], []
    for src, ref in pairs:
        s, r = words(src), words(ref)
        best.append(max((lcs_f1(s[i:j], r) for i in range(len(s)) for j in range(i + 1, min(len(s), i + args.max_span) + 1)),
                        default=0.0))
        present = set(s)
        found.append(sum(w in present for w in r) / max(1, len(r)))
    refs, srcs = [r for _, r in pairs], [s for s, _ in pairs]
    n = max(1, round(statistics.mean(len(r.split()) for r in refs)))
    scorer = RougeScorer(["rougeL"], use_stemmer=False)
    package = statistics.mean(scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(lead_texts(srcs, n), refs))
    ours = statistics.mean(lcs_f1(words(h), words(r)) for h, r in zip(lead_texts(srcs, n), refs))
    print(f"{data_cfg.corpus} {args.split}: {len(pairs)} texts")
    print(f"best span of up to {args.max_span} words, ROUGE-L F1: {statistics.mean(best):.3f}")
    print(f"reference words found in the text: {statistics.mean(found):.1%}")
    print(f"lead-{n} ROUGE-L F1: {package:.4f} by rouge-score, {ours:.4f} by this script's LCS")
    return 0 if abs(package - ours) < 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
