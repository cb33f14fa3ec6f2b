"""Where the C++ engine spends a decoding call: torch.profiler's self CPU time per operator,
over calls of --batch sentences (one by default) on the first test sentences of an export's
corpus.

    python benchmarks/engine_profile.py runs/tatoeba_fr_en_transformer/export --threads 2 --beam-size 1
    python benchmarks/engine_profile.py runs/tatoeba_fr_en_transformer/export --threads 1 --beam-size 5 \
        --batch 32 --sentences 192 --length-penalty none
"""

from __future__ import annotations

import argparse

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="an export directory")
    parser.add_argument("--threads", type=int, default=2, help="the engine's intra-op threads")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1, help="sentences per call")
    parser.add_argument("--length-penalty", default="gnmt")
    parser.add_argument("--split", default="test")
    parser.add_argument("--compute-type", default="float32", help="float32, int8 or bfloat16")
    args = parser.parse_args()

    from seq2seq.config import DecodingOptions
    from seq2seq.data import load_dataset
    from seq2seq.engine import Engine

    engine = Engine(args.export, threads=args.threads, compute_type=args.compute_type)
    pairs = load_dataset(engine.data_cfg, [args.split]).splits[args.split][:args.sentences]
    opts = DecodingOptions(beam_size=args.beam_size, length_penalty=args.length_penalty)
    sources = [source for source, _ in pairs]
    batches = [sources[i:i + args.batch] for i in range(0, len(sources), args.batch)]
    for batch in batches[:2]:  # warm up: the first calls pay for allocations
        engine.translate(batch, opts)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for batch in batches:
            engine.translate(batch, opts)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
