"""Metrics for two tasks beside translation: transliteration of names (word accuracy, CER, the
NEWS shared task's mean F-score, accuracy@5 and MRR over an n-best list) and summarization
(ROUGE-1/2/L F1 and BLEU, against a lead baseline of each text's first words), both broken down
by source length, with Markdown tables for the report."""

from __future__ import annotations

from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

NAME_LENGTH_BUCKETS = (4, 8, 12, 16, 20)  # source characters: 1-4, 5-8, ..., 17-20, 21+
TEXT_LENGTH_BUCKETS = (20, 40, 60, 80, 120)  # source words: 1-20, 21-40, ..., 81-120, 121+


# A copy of seq2seq.evaluate.bucket_name: importing that module would load torch and the
# translator just to score text.
def bucket_name(length: int, edges: tuple[int, ...]) -> str:
    low = 1
    for edge in edges:
        if length <= edge:
            return f"{low}-{edge}"
        low = edge + 1
    return f"{low}+"


def bucket_order(edges: tuple[int, ...]) -> list[str]:
    return [bucket_name(e, edges) for e in edges] + [bucket_name(edges[-1] + 1, edges)]


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit-cost insertions, deletions and substitutions."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of characters."""
    previous = [0] * (len(b) + 1)
    for ca in a:
        current = [0]
        for j, cb in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if ca == cb else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _check_aligned(hyps: list, refs: list, srcs: list) -> None:
    if len(hyps) != len(refs) or len(refs) != len(srcs):
        raise ValueError(f"{len(srcs)} sources, {len(hyps)} hypotheses and {len(refs)} references: "
                         "every source needs exactly one hypothesis and its references")
    if not srcs:
        raise ValueError("no sources to score: the lists of sources, hypotheses and references are empty")


def _check_name_lists(lists: list, what: str) -> None:
    for i, items in enumerate(lists):
        # A bare string would be read as a list of one-character names and scored silently.
        if isinstance(items, str):
            raise ValueError(f"{what}[{i}] is the string {items!r}: give a list of strings for each source")
        if not items:
            raise ValueError(f"{what}[{i}] is empty: every source needs at least one")
        if what == "refs" and any(not r for r in items):
            raise ValueError(f"refs[{i}] contains an empty reference: a name cannot be transliterated as nothing")


def _news_f(hyp: str, refs: list[str]) -> float:
    # NEWS (2009-2018) takes the reference closest by insertion/deletion distance
    # |c| + |r| - 2 LCS (first one on ties, as its evaluation script does), not by Levenshtein.
    lcs, ref = min(((lcs_length(hyp, r), r) for r in refs), key=lambda p: len(hyp) + len(p[1]) - 2 * p[0])
    recall = lcs / len(ref)
    precision = lcs / len(hyp) if hyp else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def transliteration_scores(hyps: list[str], refs: list[list[str]], srcs: list[str],
                           nbest: list[list[str]] | None = None) -> dict:
    """Top-1 hypotheses (and optionally n-best lists, best first) against one or more valid
    references per source name."""
    _check_aligned(hyps, refs, srcs)
    _check_name_lists(refs, "refs")
    if nbest is not None:
        if len(nbest) != len(srcs):
            raise ValueError(f"{len(srcs)} sources but {len(nbest)} n-best lists: give one list per source")
        _check_name_lists(nbest, "nbest")

    correct, distances, ref_lengths, f_scores, buckets = [], [], [], [], {}
    for hyp, options, src in zip(hyps, refs, srcs):
        distance, ref_length = min((levenshtein(hyp, r), len(r)) for r in options)  # ties: shorter
        correct.append(hyp in options)
        distances.append(distance)
        ref_lengths.append(ref_length)
        f_scores.append(_news_f(hyp, options))
        buckets.setdefault(bucket_name(len(src), NAME_LENGTH_BUCKETS), []).append(len(correct) - 1)

    n = len(srcs)
    result = {
        "sentences": n,
        "word_accuracy": sum(correct) / n,
        "cer": sum(distances) / sum(ref_lengths),
        "mean_f": sum(f_scores) / n,
    }
    if nbest is not None:
        ranks = [next((k for k, h in enumerate(cands, 1) if h in options), 0) for cands, options in zip(nbest, refs)]
        result["accuracy_at_5"] = sum(0 < k <= 5 for k in ranks) / n
        result["mrr"] = sum(1 / k for k in ranks if k) / n
    result["by_length"] = [
        {"bucket": name, "names": len(buckets[name]),
         "word_accuracy": sum(correct[i] for i in buckets[name]) / len(buckets[name]),
         "cer": sum(distances[i] for i in buckets[name]) / sum(ref_lengths[i] for i in buckets[name])}
        for name in bucket_order(NAME_LENGTH_BUCKETS) if name in buckets]
    return result


def lead_texts(srcs: list[str], words: int) -> list[str]:
    """The lead baseline: each text's first `words` whitespace-separated words."""
    return [" ".join(s.split()[:words]) for s in srcs]


def _rouge_per_pair(hyps: list[str], refs: list[str]) -> list[dict[str, float]]:
    # The default tokenizer lowercases and keeps only runs of Latin letters a-z and digits 0-9, so
    # text in other scripts scores 0; use_stemmer=False keeps the scores language-neutral otherwise.
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    return [{k: s.fmeasure for k, s in scorer.score(r, h).items()} for h, r in zip(hyps, refs)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summarization_scores(hyps: list[str], refs: list[str], srcs: list[str]) -> dict:
    """Summaries against one reference each, with the lead baseline scored on the same pairs."""
    _check_aligned(hyps, refs, srcs)
    for i, r in enumerate(refs):
        if not isinstance(r, str):
            raise ValueError(f"refs[{i}] is a {type(r).__name__}: summarization takes one reference string per text")
        if not r.strip():
            raise ValueError(f"refs[{i}] is empty: every text needs a reference summary")

    hyp_words = [len(h.split()) for h in hyps]
    ref_words = [len(r.split()) for r in refs]
    src_words = [len(s.split()) for s in srcs]
    # Halves round up (Python's round() would send 2.5 to 2); at least one word.
    words = max(1, int(_mean(ref_words) + 0.5))
    leads = lead_texts(srcs, words)

    model, lead = _rouge_per_pair(hyps, refs), _rouge_per_pair(leads, refs)
    bleu = BLEU()
    model_bleu = bleu.corpus_score(hyps, [refs]).score
    buckets = {}
    for i, n in enumerate(src_words):
        buckets.setdefault(bucket_name(n, TEXT_LENGTH_BUCKETS), []).append(i)
    return {
        "sentences": len(srcs),
        # ROUGE as mean per-pair F1, the way the package's users report it.
        **{k: _mean([p[k] for p in model]) for k in ("rouge1", "rouge2", "rougeL")},
        "bleu": model_bleu, "bleu_signature": str(bleu.get_signature()),
        "hyp_words_mean": _mean(hyp_words), "ref_words_mean": _mean(ref_words), "src_words_mean": _mean(src_words),
        "length_ratio": sum(hyp_words) / sum(ref_words),
        "lead": {"words": words, **{k: _mean([p[k] for p in lead]) for k in ("rouge1", "rouge2", "rougeL")},
                 "bleu": BLEU().corpus_score(leads, [refs]).score},
        "by_length": [
            {"bucket": name, "texts": len(buckets[name]),
             "rougeL": _mean([model[i]["rougeL"] for i in buckets[name]]),
             "lead_rougeL": _mean([lead[i]["rougeL"] for i in buckets[name]])}
            for name in bucket_order(TEXT_LENGTH_BUCKETS) if name in buckets],
    }


def transliteration_markdown(scores: dict) -> str:
    has_nbest = "accuracy_at_5" in scores
    head = "| names | word acc. | CER | mean F |" + (" acc@5 | MRR |" if has_nbest else "")
    row = (f"| {scores['sentences']:,} | {scores['word_accuracy']:.3f} | {scores['cer']:.3f} | {scores['mean_f']:.3f} |"
           + (f" {scores['accuracy_at_5']:.3f} | {scores['mrr']:.3f} |" if has_nbest else ""))
    lines = [
        head, "|" + "---:|" * head.count(" |"), row,
        "",
        "| source characters | names | word acc. | CER |",
        "|---|---:|---:|---:|",
        *(f"| {b['bucket']} | {b['names']} | {b['word_accuracy']:.3f} | {b['cer']:.3f} |" for b in scores["by_length"]),
    ]
    return "\n".join(lines) + "\n"


def summarization_markdown(scores: dict) -> str:
    lead = scores["lead"]
    lines = [
        f"{scores['sentences']:,} texts; mean words: source {scores['src_words_mean']:.1f}, "
        f"summary {scores['hyp_words_mean']:.1f}, reference {scores['ref_words_mean']:.1f} "
        f"(length ratio {scores['length_ratio']:.2f})",
        "",
        "| system | ROUGE-1 | ROUGE-2 | ROUGE-L | BLEU |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {s['rouge1'] * 100:.2f} | {s['rouge2'] * 100:.2f} | {s['rougeL'] * 100:.2f} | {s['bleu']:.2f} |"
          for name, s in (("model", scores), (f"lead-{lead['words']} baseline", lead))),
        "",
        "| source words | texts | model ROUGE-L | lead ROUGE-L | gain |",
        "|---|---:|---:|---:|---:|",
        *(f"| {b['bucket']} | {b['texts']} | {b['rougeL'] * 100:.2f} | {b['lead_rougeL'] * 100:.2f} | "
          f"{(b['rougeL'] - b['lead_rougeL']) * 100:+.2f} |" for b in scores["by_length"]),
        "",
        "ROUGE: mean per-text F1 ×100 (rouge_score, no stemming).  ",
        f"BLEU signature: `{scores['bleu_signature']}`",
    ]
    return "\n".join(lines) + "\n"
