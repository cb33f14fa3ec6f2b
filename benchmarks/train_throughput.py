"""Training throughput per recipe: median source+target tokens per second over timed steps.

    python benchmarks/train_throughput.py recipes/multi30k_de_en_*.toml --steps 20

Every recipe with the same [data] table trains on the same batches (the first ones of
epoch 1), after a few untimed warm-up steps; the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from seq2seq.data import BatchIterator, PairTokenizer, encode_pairs, load_dataset
from seq2seq.models import build_model
from seq2seq.train import load_recipe, make_optimizer, pick_device, token_nll


def batches_for(data_cfg, count: int, cache: dict):
    key = json.dumps(asdict(data_cfg), sort_keys=True)
    if key not in cache:
        data = load_dataset(data_cfg, ["train"])
        tokenizer = PairTokenizer.train(data.splits["train"], data_cfg)
        iterator = BatchIterator(encode_pairs(tokenizer, data.splits["train"]), data_cfg)
        iterator.set_epoch(1)
        cache[key] = (tokenizer, [b for b, _ in zip(iterator, range(count))])
    return cache[key]


def measure(recipe: str, steps: int, warmup: int, device_name: str, cache: dict) -> dict:
    data_cfg, model_cfg, train_cfg = load_recipe(recipe, [f"--device={device_name}"])
    tokenizer, batches = batches_for(data_cfg, warmup + steps, cache)
    model_cfg.src_vocab, model_cfg.tgt_vocab = tokenizer.src.vocab_size, tokenizer.tgt.vocab_size
    device = pick_device(train_cfg)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg).to(device).train()
    optimizer = make_optimizer(model.parameters(), train_cfg)
    rates = []
    for i, batch in enumerate(tqdm(batches, desc=Path(recipe).stem, unit="step", leave=False)):
        batch = batch.to(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_cfg.bf16 and device.type == "cuda"):
            log_probs = model(batch.src, batch.src_lengths, batch.tgt[:, :-1])
        nll, n = token_nll(log_probs.float(), batch.tgt[:, 1:], train_cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (nll / n).backward()
        if train_cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_norm)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            tokens = n + int(batch.src_lengths.sum())
            rates.append(tokens / (time.perf_counter() - started))
    return {"recipe": Path(recipe).stem, "family": model_cfg.family,
            "params": sum(p.numel() for p in model.parameters()), "device": str(device),
            "threads": torch.get_num_threads(), "steps": steps,
            "median_tok_s": statistics.median(rates), "min_tok_s": min(rates), "max_tok_s": max(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    cache: dict = {}
    rows = [measure(r, args.steps, args.warmup, args.device, cache) for r in args.recipes]
    print(f"| recipe | family | parameters | device | median tok/s | min | max |")
    print("|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['recipe']} | {r['family']} | {r['params'] / 1e6:.1f}M | {r['device']} ({r['threads']} threads) "
              f"| {r['median_tok_s']:,.0f} | {r['min_tok_s']:,.0f} | {r['max_tok_s']:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
