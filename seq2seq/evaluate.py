"""Evaluation: sacreBLEU BLEU and chrF on detokenized cased output, perplexity and token
accuracy by teacher forcing, sequence accuracy, and BLEU by source length.

    seq2seq evaluate --model runs/demo/best.pt --split test --beam-size 5 --out runs/demo/eval

writes ``report.json``, ``report.md`` and ``hypotheses.txt`` (one line per source) to --out.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.config import DecodingOptions
from seq2seq.data import BatchIterator, encode_pairs
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


def evaluate(translator: Translator, pairs: list[tuple[str, str]], opts: DecodingOptions,
             split: str = "", progress: bool = False) -> dict:
    from seq2seq.train import evaluate_loss

    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
    started = time.perf_counter()
    results = translator.translate(srcs, opts, progress=progress)
    seconds = time.perf_counter() - started
    hyps = [r[0].text for r in results]
    report = {
        "model": str(translator.checkpoint.get("path", "")), "family": translator.model_cfg.family,
        "parameters": sum(p.numel() for p in translator.model.parameters()),
        "corpus": translator.data_cfg.corpus, "languages": f"{translator.data_cfg.src}-{translator.data_cfg.tgt}",
        "split": split, "decoding": asdict(opts),
        **score(hyps, refs, srcs),
        "decode_seconds": seconds, "sentences_per_s": len(srcs) / seconds if seconds else 0.0,
        "output_tokens_per_s": sum(len(r[0].tokens) + 1 for r in results) / seconds if seconds else 0.0,
    }
    batches = BatchIterator(encode_pairs(translator.tokenizer, pairs), translator.data_cfg, shuffle=False)
    teacher = evaluate_loss(translator.model, batches, translator.device)
    report.update(perplexity=teacher["val_ppl"], token_accuracy=teacher["val_token_acc"])
    report["hypotheses"] = hyps
    return report


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
    lines = [
        f"**{report['family']}** model{' (' + report['backend'] + ' backend)' if report.get('backend') else ''} `{report['model']}` on {report['corpus']} {report['languages']} "
        f"`{report['split']}` ({report['sentences']:,} sentences), {search}",
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


def write_report(report: dict, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypotheses.txt").write_text("".join(h + "\n" for h in report["hypotheses"]), encoding="utf-8")
    summary = {k: v for k, v in report.items() if k != "hypotheses"}
    (out / "report.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    return out
