"""The engine on a device against the Python reference on the same device (make gpu-check).

For each export: token ids of the engine (float32; on CUDA with TF32 off, as the reference)
and of the Python reference, greedy and beam 5, each sentence inside batches of 64 and alone;
then BLEU of the engine's float32 and bfloat16 translations against the references. Prints a
markdown table and writes it, with the JSON of every figure, under --out.

    python benchmarks/gpu_parity.py --device cuda --model runs/gpu/demo/export \\
        --model runs/gpu/transformer/export --pairs runs/gpu/test.tsv --out runs/gpu-check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import sacrebleu
import torch
from tqdm import tqdm

from seq2seq.config import DecodingOptions
from seq2seq.engine import Engine
from seq2seq.translate import Translator

BATCH = 64


def batched(decoder, sources, opts, size):
    out = []
    for i in range(0, len(sources), size):
        out += decoder.decode_ids(sources[i:i + size], opts)
    return out


def tokens(results):
    return [r[0].tokens if r else None for r in results]


def check_model(export: str, pairs: list[tuple[str, str]], device: str, alone: int) -> dict:
    reference = Translator(export, device=device)
    engines = {t: Engine(export, device=device, compute_type=t) for t in ("float32", "bfloat16")}
    sources = [reference.encode(s) for s, _ in pairs]
    kept = [i for i, ids in enumerate(sources) if ids]
    sources, refs = [sources[i] for i in kept], [pairs[i][1] for i in kept]
    row = {"model": export, "sentences": len(sources)}
    for beam in (1, 5):
        opts = DecodingOptions(beam_size=beam)
        started = time.perf_counter()
        theirs = tokens(batched(reference, sources, opts, BATCH))
        python_s = time.perf_counter() - started
        started = time.perf_counter()
        together = tokens(batched(engines["float32"], sources, opts, BATCH))
        engine_s = time.perf_counter() - started
        apart = tokens([engines["float32"].decode_ids([s], opts)[0] for s in tqdm(sources[:alone], desc=f"beam {beam} alone",
                                                                                 file=sys.stderr)])
        row[f"beam{beam} in batches of {BATCH}"] = sum(a == b for a, b in zip(together, theirs))
        row[f"beam{beam} alone"] = sum(a == b for a, b in zip(apart, theirs))
        row[f"beam{beam} alone of"] = len(apart)
        row[f"beam{beam} engine s"], row[f"beam{beam} python s"] = engine_s, python_s
    for t, engine in engines.items():
        hyps = [engine.tokenizer.tgt.decode(h[0].tokens) if h else "" for h in
                batched(engine, sources, DecodingOptions(beam_size=5), BATCH)]
        row[f"BLEU {t}"] = sacrebleu.corpus_bleu(hyps, [refs]).score
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="an export directory (repeatable)")
    p.add_argument("--pairs", required=True, help="SOURCE<TAB>REFERENCE lines")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--alone", type=int, default=1000, help="how many of them also decoded alone")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if torch.device(args.device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32, in the reference too
        torch.backends.cudnn.allow_tf32 = False
    lines = Path(args.pairs).read_text(encoding="utf-8").splitlines()[: args.sentences]
    pairs = [tuple(line.split("\t")[:2]) for line in lines if "\t" in line]
    rows = [check_model(m, pairs, args.device, args.alone) for m in args.model]
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else args.device
    table = [f"device {args.device} ({name}), torch {torch.__version__}", "",
             "| model | sentences | greedy, batches | greedy, alone | beam 5, batches | beam 5, alone "
             "| BLEU float32 | BLEU bfloat16 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ok = True
    for r in rows:
        n = r["sentences"]
        table.append(f"| {r['model']} | {n} | {r[f'beam1 in batches of {BATCH}']} | {r['beam1 alone']} of "
                     f"{r['beam1 alone of']} | {r[f'beam5 in batches of {BATCH}']} | {r['beam5 alone']} of "
                     f"{r['beam5 alone of']} | {r['BLEU float32']:.2f} | {r['BLEU bfloat16']:.2f} |")
        ok &= all(r[f"beam{b} in batches of {BATCH}"] == n and r[f"beam{b} alone"] == r[f"beam{b} alone of"]
                  for b in (1, 5))
        ok &= abs(r["BLEU float32"] - r["BLEU bfloat16"]) <= 0.3
    text = "\n".join(table)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.md").write_text(text + "\n")
    (out / "parity.json").write_text(json.dumps(rows, indent=2))
    print("parity: " + ("every token identical, bfloat16 BLEU within 0.3" if ok else "FAILED (see the table)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
