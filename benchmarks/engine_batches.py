"""The C++ engine alone, sentences/s at several batch sizes, on random mixes of test
sentences: the batches a server forms, where `seq2seq bench` takes the corpus in order.

    python benchmarks/engine_batches.py runs/demo/export --cases greedy:1,greedy:21,beam5:1,beam5:21

Each case decodes the same sentences (drawn with the case's name as seed) in --rounds rounds and
prints the median and every round. To compare two versions of the engine, build the other
one in a worktree and put it first on the path, alternating runs on a noisy machine:

    git worktree add /tmp/before COMMIT && (cd /tmp/before && python setup.py build_ext --inplace)
    PYTHONPATH=/tmp/before python benchmarks/engine_batches.py runs/demo/export
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="an export directory")
    parser.add_argument("--cases", default="greedy:1,greedy:21,greedy:32,beam5:1,beam5:21,beam5:32",
                        help="SEARCH:BATCH list, SEARCH greedy or beamK")
    parser.add_argument("--split", help="default: test_2016_flickr on Multi30k, else test")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="the engine's intra-op threads")
    parser.add_argument("--compute-type", default="float32")
    args = parser.parse_args()

    import torch

    import seq2seq
    from seq2seq.bench import parse_cases
    from seq2seq.config import DecodingOptions
    from seq2seq.data import load_dataset
    from seq2seq.engine import Engine

    try:
        cases = parse_cases(args.cases)
    except ValueError as e:
        raise SystemExit(f"--cases: {e}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    torch.set_num_threads(args.threads)
    engine = Engine(args.export, threads=args.threads, compute_type=args.compute_type)
    split = args.split or ("test_2016_flickr" if engine.data_cfg.corpus == "multi30k" else "test")
    sources = [ids for ids in (engine.encode(s) for s, _ in load_dataset(engine.data_cfg, [split]).splits[split])
               if ids]
    if not sources:
        raise SystemExit(f"{split}: no sentences to translate")
    print(f"seq2seq from {seq2seq.__path__[0]}; {len(sources)} sentences of {split}; {args.threads} thread(s), "
          f"{args.compute_type}")
    print("| case | sentences/s (median) | rounds |\n|---|---:|---|")
    for case in cases:
        rng = random.Random(case.name)  # the same mix for a case whatever else --cases holds
        batch = case.batch
        count = 200 if batch == 1 else max(8 * batch, 256)
        mix = [sources[rng.randrange(len(sources))] for _ in range(count)]
        opts = DecodingOptions(beam_size=case.beam_size)
        rates = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for i in range(0, count, batch):
                engine.decode_ids(mix[i:i + batch], opts)
            rates.append(count / (time.perf_counter() - start))
        print(f"| {case.name} | {statistics.median(rates):.1f} | {', '.join(f'{r:.1f}' for r in rates)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
