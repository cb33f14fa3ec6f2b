"""FBGEMM's dynamic int8 product against the engine's own few-rows kernel, the two ways the
engine multiplies rows by an int8 matrix (csrc/layers/dense.cpp: Dense::apply), on
--threads threads (one by default).

    python benchmarks/int8_rows.py --shapes 4000x256,1024x256,256x1024,768x256,256x256 --rows 1,2,5,8,16,32

Shapes are OUTxIN (by default the Tatoeba Transformer's output layer, feed-forward,
self-attention and attention products). Prints microseconds per call (median of
--rounds), the ratio, the largest difference from the float32 product relative to its
largest value, and which one the engine's rule picks.
"""

from __future__ import annotations

import argparse
import warnings

from linear_backends import per_call_us

FEW_ROWS = 2  # csrc/layers/dense.cpp: kInt8FewRows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="4000x256,1024x256,256x1024,768x256,256x256")
    parser.add_argument("--rows", default="1,2,5,8,16,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    import seq2seq._C  # noqa: F401  (registers torch.ops.seq2seq)

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    print("| OUTxIN | rows | FBGEMM, us | ours, us | FBGEMM / ours | error FBGEMM | error ours | the engine uses |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|")
    for shape in args.shapes.split(","):
        out, inp = (int(v) for v in shape.split("x"))
        w, b = torch.randn(out, inp), torch.randn(out)
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12)
        q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(out, dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, b)
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, inp)
            with torch.inference_mode():
                fbgemm = lambda: torch.ops.quantized.linear_dynamic(x, packed, True)  # noqa: E731
                ours = lambda: torch.ops.seq2seq.linear_int8_rows(x, q, scale, b)  # noqa: E731
                exact = x @ w.t() + b
                err = [((f() - exact).abs().max() / exact.abs().max()).item() for f in (fbgemm, ours)]
                t_fb, t_ours = per_call_us(fbgemm, rounds=args.rounds), per_call_us(ours, rounds=args.rounds)
            engine = "ours" if rows <= FEW_ROWS else "FBGEMM"
            print(f"| {shape} | {rows} | {t_fb:.1f} | {t_ours:.1f} | {t_fb / t_ours:.2f} | {err[0]:.4f} | "
                  f"{err[1]:.4f} | {engine} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
