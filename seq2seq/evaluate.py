"""Evaluation by task. Translation: sacreBLEU BLEU and chrF on detokenized cased output,
sequence accuracy and BLEU by source length. Transliteration: word accuracy against any of
a name's references, character error rate, the NEWS mean F-score and, with a beam of 5 or
more, accuracy in the 5-best (seq2seq/metrics.py). Summarization: ROUGE-1/2/L beside BLEU
and the lead baseline. Every task adds perplexity and token accuracy by teacher forcing.

    seq2seq evaluate --model runs/demo/best.pt --split test --beam-size 5 --out runs/demo/eval

writes ``report.json``, ``report.md`` and ``hypotheses.txt`` (one line per source) to --out.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from seq2seq import metrics
from seq2seq.config import DecodingOptions
from seq2seq.data import BatchIterator, encode_pairs
from seq2seq.data.corpora import corpus_task
from seq2seq.translate import Translator

LENGTH_BUCKETS = (10, 20, 30, 40, 50)  # source words: 1-10, 11-20, ..., 41-50, 51+


def bucket_name(words: int, edges=LENGTH_BUCKETS) -> str:
    low = 1
    for edge in edges:
        if words <= edge:
            return f"{low}-{edge}"
        low = edge + 1
    return f"{low}+"


def score(hyps: list[str], refs: list[str], srcs: list[str], edges=LENGTH_BUCKETS) -> dict:
    """Corpus-level metrics of detokenized hypotheses against one reference each."""
    if len(hyps) != len(refs) or len(refs) != len(srcs):
        raise ValueError(f"{len(srcs)} sources, {len(hyps)} hypotheses and {len(refs)} references: "
                         "every source needs exactly one hypothesis and one reference")
    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    by_length = {}
    for h, r, s in zip(hyps, refs, srcs):
        by_length.setdefault(bucket_name(len(s.split()), edges), []).append((h, r))
    order = [bucket_name(e, edges) for e in edges] + [bucket_name(edges[-1] + 1, edges)]
    return {
        "sentences": len(hyps),
        "bleu": b.score, "bleu_signature": str(bleu.get_signature()), "bleu_detail": str(b),
        "chrf": c.score, "chrf_signature": str(chrf.get_signature()),
        "sequence_accuracy": sum(h == r for h, r in zip(hyps, refs)) / max(len(hyps), 1),
        "bleu_by_source_length": [
            {"bucket": name, "sentences": len(by_length[name]),
             "bleu": BLEU().corpus_score([h for h, _ in by_length[name]], [[r for _, r in by_length[name]]]).score}
            for name in order if name in by_length],
    }


def grouped_references(pairs: list[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Each distinct source once, in first-seen order, with every target it has."""
    refs: dict[str, list[str]] = {}
    for s, t in pairs:
        if t not in refs.setdefault(s, []):
            refs[s].append(t)
    return list(refs), list(refs.values())


def task_options(task: str, opts: DecodingOptions) -> DecodingOptions:
    """The decoding a task's metrics need: accuracy in the 5-best needs five hypotheses."""
    from dataclasses import replace

    if task == "transliteration" and opts.beam_size >= 5:
        return replace(opts, n_best=max(opts.n_best, 5))
    return opts


def task_scores(task: str, results, srcs: list[str], refs: list[list[str]]) -> dict:
    """The task's metrics for n-best ``results`` of ``srcs`` against their references."""
    hyps = [r[0].text for r in results]
    if task == "transliteration":
        nbest = [[t.text for t in r] for r in results] if all(len(r) >= 5 for r in results) else None
        return metrics.transliteration_scores(hyps, refs, srcs, nbest)
    if task == "summarization":
        return metrics.summarization_scores(hyps, [r[0] for r in refs], srcs)
    return score(hyps, [r[0] for r in refs], srcs)


def evaluate(translator: Translator, pairs: list[tuple[str, str]], opts: DecodingOptions,
             split: str = "", progress: bool = False) -> dict:
    from seq2seq.train import evaluate_loss

    task = corpus_task(translator.data_cfg)
    opts = task_options(task, opts)
    if task == "transliteration":
        srcs, refs = grouped_references(pairs)
    else:
        srcs, refs = [s for s, _ in pairs], [[t] for _, t in pairs]
    started = time.perf_counter()
    # A summarizer reads a text's first tokens, up to what the model takes; the few longer
    # texts (the test split has one of 1,442 tokens) are cut there, as both backends do alike.
    results = translator.translate(srcs, opts, progress=progress, truncate=task == "summarization")
    seconds = time.perf_counter() - started
    report = {
        "model": str(translator.checkpoint.get("path", "")), "family": translator.model_cfg.family,
        "parameters": sum(p.numel() for p in translator.model.parameters()), "task": task,
        "corpus": translator.data_cfg.corpus, "languages": f"{translator.data_cfg.src}-{translator.data_cfg.tgt}",
        "split": split, "decoding": asdict(opts),
        **task_scores(task, results, srcs, refs),
        "decode_seconds": seconds, "sentences_per_s": len(srcs) / seconds if seconds else 0.0,
        "output_tokens_per_s": sum(len(r[0].tokens) + 1 for r in results) / seconds if seconds else 0.0,
    }
    examples = encode_pairs(translator.tokenizer, pairs)
    if task == "summarization":
        # The teacher-forced loss reads the texts as decoding did: cut to the model's limit
        # (a Transformer has no positions beyond it), <eos> kept.
        limit = translator.source_limit()
        examples = [(src[:-1][:limit] + src[-1:], tgt) for src, tgt in examples]
    batches = BatchIterator(examples, translator.data_cfg, shuffle=False)
    teacher = evaluate_loss(translator.model, batches, translator.device)
    report.update(perplexity=teacher["val_ppl"], token_accuracy=teacher["val_token_acc"])
    report["sources"] = srcs
    report["hypotheses"] = [r[0].text for r in results]
    return report


HEADLINE = {"translation": ("bleu", "BLEU"), "transliteration": ("word_accuracy", "word acc."),
            "summarization": ("rougeL", "ROUGE-L")}


def headline(report: dict) -> tuple[str, float]:
    """The task's main figure: (its name, its value)."""
    key, name = HEADLINE[report.get("task", "translation")]
    return name, report[key]


def parity(sources: list[str], first: dict, second: dict) -> dict:
    """How many outputs of two evaluations of the same sentences are identical."""
    a, b = first["hypotheses"], second["hypotheses"]
    same = [x == y for x, y in zip(a, b)]
    result = {"identical": sum(same), "sentences": len(same), "first_difference": None}
    if not all(same):
        i = same.index(False)
        result["first_difference"] = {"index": i, "source": sources[i], "first": a[i], "second": b[i]}
    return result


def markdown(report: dict) -> str:
    d = report["decoding"]
    search = "greedy" if d["beam_size"] == 1 else f"beam {d['beam_size']}, {d['length_penalty']} length penalty"
    title = (f"**{report['family']}** model{' (' + report['backend'] + ' backend)' if report.get('backend') else ''} "
             f"`{report['model']}` on {report['corpus']} {report['languages']} "
             f"`{report['split']}` ({report['sentences']:,} {UNITS[report.get('task', 'translation')]}), {search}")
    teacher = (f"Teacher-forced perplexity {report['perplexity']:.2f}, token accuracy {report['token_accuracy']:.3f}; "
               f"{report['sentences_per_s']:.1f} per second.")
    if report.get("task") == "transliteration":
        return "\n".join([title, "", metrics.transliteration_markdown(report), teacher]) + "\n"
    if report.get("task") == "summarization":
        return "\n".join([title, "", metrics.summarization_markdown(report), teacher]) + "\n"
    lines = [
        title,
        "",
        "| BLEU | chrF | perplexity | token acc. | sequence acc. | sentences/s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {report['bleu']:.2f} | {report['chrf']:.2f} | {report['perplexity']:.2f} | "
        f"{report['token_accuracy']:.3f} | {report['sequence_accuracy']:.3f} | {report['sentences_per_s']:.1f} |",
        "",
        "| source words | sentences | BLEU |",
        "|---|---:|---:|",
        *(f"| {b['bucket']} | {b['sentences']} | {b['bleu']:.2f} |" for b in report["bleu_by_source_length"]),
        "",
        f"BLEU signature: `{report['bleu_signature']}`  ",
        f"chrF signature: `{report['chrf_signature']}`",
    ]
    return "\n".join(lines) + "\n"


UNITS = {"translation": "sentences", "transliteration": "names", "summarization": "texts"}


def write_report(report: dict, out: str | Path) -> Path:
    """report.json, report.md, hypotheses.txt and, for the new tasks, the by-length plot."""
    from seq2seq import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypotheses.txt").write_text("".join(h + "\n" for h in report["hypotheses"]), encoding="utf-8")
    summary = {k: v for k, v in report.items() if k not in ("hypotheses", "sources")}
    name = f"{report['corpus']} {report['languages']} {report['split']}"
    if report.get("task") == "transliteration":
        plots.plot_accuracy_by_length(report["by_length"], out / "accuracy_by_length.png", name)
    elif report.get("task") == "summarization":
        plots.plot_rouge_by_length(report["by_length"], out / "rouge_by_length.png", name)
    (out / "report.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return out
