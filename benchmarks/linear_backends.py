"""MKL's sgemm against oneDNN with prepacked weights, the two ways the engine multiplies a
batch of rows by a float32 matrix (csrc/layers/dense.cpp: Dense::float32), on --threads
threads (one by default). The engine's own kernel of a few rows (linear_float_rows) keeps its
weights packed, which the op for tests repacks at every call: it is timed in the decoding
step instead (`seq2seq bench`).

    python benchmarks/linear_backends.py --shapes 4000x640,768x640,768x256,128x256 --rows 1,2,5,32,160

Shapes are OUTxIN (the demo model's output layer, GRU input and hidden products and
attention query by default). Prints microseconds per call (median of --rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time


def per_call_us(fn, calls: int = 200, rounds: int = 5) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4000x640,768x640,768x256,128x256")
    parser.add_argument("--rows", default="1,2,5,32,160")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not torch.backends.mkldnn.is_available():
        raise SystemExit("this torch build has no oneDNN")
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    import seq2seq._C  # noqa: F401  (torch.ops.seq2seq)

    print("| OUTxIN | rows | MKL addmm, us | oneDNN, us | MKL / oneDNN |\n|---|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        out, inp = (int(v) for v in shape.split("x"))
        w, b = torch.randn(out, inp), torch.randn(out)
        wt, packed = w.t().contiguous(), torch.ops.mkldnn._reorder_linear_weight(w, None)
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, inp)
            mkl = per_call_us(lambda: torch.addmm(b, x, wt), rounds=args.rounds)
            dnnl = per_call_us(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""),
                               rounds=args.rounds)
            print(f"| {shape} | {rows} | {mkl:.0f} | {dnnl:.0f} | {mkl / dnnl:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
