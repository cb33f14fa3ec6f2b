"""Studies that show why attention was needed, and what beam search buys.

    seq2seq study synthetic --out docs/study      # vanilla vs attention on reverse / sort
    seq2seq study beams --model CKPT --out DIR    # greedy vs beam 2, 5, 10: BLEU and speed
    seq2seq study families --out DIR              # every model family on Multi30k, one budget

Each writes a JSON file of rows, a Markdown table and a PNG plot into --out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from seq2seq.config import DecodingOptions
from seq2seq.plots import plot_lines

SYNTHETIC_MODELS = {
    "vanilla LSTM": ["--family=rnn", "--cell=lstm"],
    "attention LSTM (Bahdanau)": ["--family=attention", "--cell=lstm", "--attention=bahdanau"],
}


def synthetic_study(out: str | Path, tasks=("reverse", "sort"), max_len: int = 24, train_size: int = 20000,
                    epochs: int = 6, log=print) -> list[dict]:
    """Train each model on each task with the same budget; sequence accuracy by length."""
    from seq2seq.data import load_dataset
    from seq2seq.train import load_recipe, train
    from seq2seq.translate import Translator

    out = Path(out)
    rows = []
    for task in tasks:
        for name, flags in SYNTHETIC_MODELS.items():
            run_dir = out / "runs" / f"{task}_{flags[0].split('=')[1]}"
            args = [f"--corpus={task}", "--tokenizer=word", "--min_freq=1", "--synthetic_min_len=2",
                    f"--synthetic_max_len={max_len}", f"--synthetic_train_size={train_size}",
                    "--synthetic_eval_size=1000", "--max_tokens=2000", "--emb_dim=64", "--hidden=128",
                    "--layers=1", "--dropout=0", f"--epochs={epochs}", "--lr=3e-3", "--samples=0",
                    "--val_bleu=false", "--tensorboard=false", "--patience=0", f"--out_dir={run_dir}", *flags]
            started = time.perf_counter()
            train(*load_recipe(None, args), log=lambda *_: None, progress=False)
            seconds = time.perf_counter() - started
            translator = Translator(run_dir / "best.pt")
            pairs = load_dataset(translator.data_cfg, ["test"]).splits["test"]
            outputs = translator.translate([s for s, _ in pairs], DecodingOptions(beam_size=1))
            by_len: dict[int, list[bool]] = {}
            for (src, ref), nbest in zip(pairs, outputs):
                by_len.setdefault(len(src.split()), []).append(nbest[0].text == ref)
            for length, hits in sorted(by_len.items()):
                rows.append({"task": task, "model": name, "length": length, "sentences": len(hits),
                             "sequence_accuracy": sum(hits) / len(hits), "train_seconds": seconds})
            total = sum(len(h) for h in by_len.values())
            log(f"{task:8} {name:28} sequence accuracy {sum(sum(h) for h in by_len.values()) / total:.3f} "
                f"({seconds:.0f} s of training)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.json").write_text(json.dumps(rows, indent=1) + "\n")
    for task in tasks:
        series = {r["model"]: ([], []) for r in rows if r["task"] == task}
        for r in rows:
            if r["task"] == task:
                series[r["model"]][0].append(r["length"])
                series[r["model"]][1].append(r["sequence_accuracy"])
        plot_lines(series, "sequence length (symbols)", "sequence accuracy (exact match)",
                   out / f"synthetic_{task}.png", title=f"{task}: fixed context vector vs attention")
    return rows


# Every family at one size (embeddings 256, hidden 256, one layer; a small Transformer), so
# that the budget, not the capacity, is what differs least.
FAMILY_MODELS = {
    "vanilla LSTM": ["--family=rnn", "--cell=lstm"],
    "vanilla GRU": ["--family=rnn", "--cell=gru"],
    "vanilla bi-LSTM encoder": ["--family=rnn", "--cell=lstm", "--bidirectional=true"],
    "Bahdanau (bi-GRU)": ["--family=attention", "--attention=bahdanau", "--cell=gru", "--bidirectional=true"],
    "Luong dot (bi-LSTM)": ["--family=attention", "--attention=dot", "--cell=lstm", "--bidirectional=true"],
    "Luong general (bi-LSTM)": ["--family=attention", "--attention=general", "--cell=lstm", "--bidirectional=true"],
    "Luong concat (bi-LSTM)": ["--family=attention", "--attention=concat", "--cell=lstm", "--bidirectional=true"],
    "Transformer (3+3 layers)": ["--family=transformer", "--d_model=256", "--heads=4", "--ff_dim=1024",
                                 "--enc_layers=3", "--dec_layers=3", "--tie_embeddings=true", "--optimizer=adamw",
                                 "--lr=7e-4", "--schedule=inverse_sqrt", "--warmup_steps=300",
                                 "--label_smoothing=0.1"],
}
FAMILY_LENGTH_BUCKETS = (8, 12, 16, 20, 25)  # Multi30k sources are short: finer buckets


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    """Rows of a rerun replace the same models' rows in an earlier results file; the rest
    are kept, in the study's order, so one model can be rerun without retraining all."""
    if not path.exists():
        return rows
    fresh = {r["model"]: r for r in rows}
    kept = [r for r in json.loads(path.read_text()) if r["model"] not in fresh]
    order = {name: i for i, name in enumerate(FAMILY_MODELS)}
    return sorted(kept + rows, key=lambda r: order.get(r["model"], len(order)))


def families_study(out: str | Path, corpus: str = "multi30k", src: str = "de", tgt: str = "en",
                   split: str = "test_2016_flickr", epochs: int = 2, beam: int = 5, models=None,
                   overrides=(), log=print) -> list[dict]:
    """Train every family with the same data, epochs and batches; score each on one split."""
    from seq2seq.data import load_dataset
    from seq2seq.evaluate import evaluate, score
    from seq2seq.train import load_recipe, train
    from seq2seq.translate import Translator

    out = Path(out)
    rows = []
    for name in models or FAMILY_MODELS:
        run_dir = out / "runs" / name.split(" (")[0].replace(" ", "_").lower()
        args = [f"--corpus={corpus}", f"--src={src}", f"--tgt={tgt}", "--vocab_size=8000", "--max_tokens=4096",
                "--emb_dim=256", "--hidden=256", "--layers=1", "--dropout=0.2", f"--epochs={epochs}",
                "--lr=1e-3", "--samples=0", "--val_bleu=false", "--tensorboard=false", "--patience=0",
                f"--out_dir={run_dir}", *FAMILY_MODELS[name], *overrides]
        started = time.perf_counter()
        train(*load_recipe(None, args), log=lambda *_: None, progress=False)
        seconds = time.perf_counter() - started
        # Training picks CUDA when there is one ("auto"); scoring goes where training went.
        translator = Translator(run_dir / "best.pt", device="cuda" if torch.cuda.is_available() else "cpu")
        pairs = load_dataset(translator.data_cfg, [split]).splits[split]
        report = evaluate(translator, pairs, DecodingOptions(beam_size=beam), split=split)
        by_length = score(report["hypotheses"], [t for _, t in pairs], [s for s, _ in pairs],
                          FAMILY_LENGTH_BUCKETS)["bleu_by_source_length"]
        rows.append({"model": name, "bleu": report["bleu"], "chrf": report["chrf"],
                     "perplexity": report["perplexity"], "parameters": report["parameters"],
                     "train_seconds": seconds, "epochs": epochs, "beam": beam, "split": split,
                     "bleu_signature": report["bleu_signature"], "bleu_by_source_length": by_length})
        log(f"{name:26} BLEU {report['bleu']:5.2f}  chrF {report['chrf']:5.2f}  ppl {report['perplexity']:7.2f}  "
            f"{report['parameters'] / 1e6:5.1f}M params  {seconds / 60:5.1f} min")
    rows = merge_rows(out / "families.json", rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(rows, indent=1) + "\n")
    buckets = [b["bucket"] for b in rows[0]["bleu_by_source_length"]]
    series = {r["model"]: (list(range(len(buckets))), [b["bleu"] for b in r["bleu_by_source_length"]])
              for r in rows}
    plot_lines(series, "source length (words): " + ", ".join(f"{i}={b}" for i, b in enumerate(buckets)), "BLEU",
               out / "families_bleu_by_length.png", title=f"{corpus} {src}-{tgt} {split}: BLEU by source length")
    return rows


def beam_study(checkpoint: str | Path, split: str, out: str | Path, beams=(1, 2, 5, 10), log=print) -> list[dict]:
    """BLEU and speed of greedy search and beam search on one split."""
    from seq2seq.data import load_dataset
    from seq2seq.evaluate import evaluate

    from seq2seq.translate import Translator

    translator = Translator(checkpoint)
    pairs = load_dataset(translator.data_cfg, [split]).splits[split]
    rows = []
    for beam in beams:
        report = evaluate(translator, pairs, DecodingOptions(beam_size=beam), split=split)
        rows.append({"beam": beam, "bleu": report["bleu"], "chrf": report["chrf"],
                     "sentences_per_s": report["sentences_per_s"], "bleu_signature": report["bleu_signature"]})
        log(f"beam {beam:2}: BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f}, "
            f"{report['sentences_per_s']:.1f} sentences/s")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "beams.json").write_text(json.dumps(rows, indent=1) + "\n")
    plot_lines({"BLEU": ([r["beam"] for r in rows], [r["bleu"] for r in rows])}, "beam size", "BLEU",
               out / "beams_bleu.png", title=f"greedy (1) vs beam search, {split}")
    return rows


def markdown_synthetic(rows: list[dict]) -> str:
    lengths = sorted({r["length"] for r in rows})
    keys = sorted({(r["task"], r["model"]) for r in rows})
    acc = {(r["task"], r["model"], r["length"]): r["sequence_accuracy"] for r in rows}
    lines = ["| task | model | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|---|" + "---:|" * len(lengths)]
    for task, model in keys:
        lines.append(f"| {task} | {model} | " + " | ".join(
            f"{acc[(task, model, n)]:.2f}" if (task, model, n) in acc else "" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def markdown_beams(rows: list[dict]) -> str:
    lines = ["| beam | BLEU | chrF | sentences/s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['beam']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['sentences_per_s']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_families(rows: list[dict]) -> str:
    buckets = [b["bucket"] for b in rows[0]["bleu_by_source_length"]]
    lines = ["| model | BLEU | chrF | perplexity | parameters | training | "
             + " | ".join(f"BLEU {b}" for b in buckets) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(buckets)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bleu']:.2f} | {r['chrf']:.2f} | {r['perplexity']:.2f} | "
                     f"{r['parameters'] / 1e6:.1f}M | {r['train_seconds'] / 60:.1f} min | "
                     + " | ".join(f"{b['bleu']:.1f}" for b in r["bleu_by_source_length"]) + " |")
    sentences = " / ".join(f"{b['bucket']}: {b['sentences']}" for b in rows[0]["bleu_by_source_length"])
    return "\n".join(lines) + f"\n\nSentences per bucket: {sentences}.\n"
