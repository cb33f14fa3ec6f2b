"""The products of one decoder step of a Transformer export, through the engine's own kernels
for a few rows (linear_float_rows, linear_bf16_rows) with their weights packed once, as
layers::Dense keeps them: microseconds per step and the rate at which they read the
weights, beside the rate at which this machine reads a buffer of the same size
(torch.sum), on 1 and 2 threads. It says how far the step's products are from the memory
they read, and what bfloat16's half of the bytes buys over float32 there.

    python benchmarks/step_products.py runs/tatoeba_fr_en_transformer/export --rows 1,5

The kernels are C++ functions of the extension, not operators (the operators repack the
weights at every call), so a small module is compiled against it on first use (about 30 s,
in --build-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

CPP = r"""
#include <torch/extension.h>
#include <chrono>
#include "ops/ops.h"

// Microseconds per call of each product (out, in) on `rows` rows, median of `rounds` rounds
// of `calls` passes over all the products in order, as a step runs them.
std::vector<double> step_products(const std::vector<std::pair<int64_t, int64_t>>& shapes, int64_t rows,
                                  bool bf16, int64_t calls, int64_t rounds) {
  std::vector<seq2seq::Panels> weights;
  std::vector<at::Tensor> biases, inputs;
  for (auto [out, in] : shapes) {
    const auto w = at::randn({out, in});
    weights.push_back(bf16 ? seq2seq::pack_bf16_panels(w) : seq2seq::pack_float_panels(w));
    biases.push_back(at::randn({out}));
    inputs.push_back(at::randn({rows, in}));
  }
  auto run = [&](size_t k) {
    return bf16 ? seq2seq::linear_bf16_rows(inputs[k], weights[k], biases[k], false)
                : seq2seq::linear_float_rows(inputs[k], weights[k], biases[k], false);
  };
  for (size_t k = 0; k < shapes.size(); ++k) run(k);
  std::vector<std::vector<double>> per(shapes.size());
  for (int64_t r = 0; r < rounds; ++r) {
    std::vector<double> total(shapes.size(), 0.0);
    for (int64_t c = 0; c < calls; ++c)
      for (size_t k = 0; k < shapes.size(); ++k) {
        const auto start = std::chrono::steady_clock::now();
        run(k);
        total[k] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      }
    for (size_t k = 0; k < shapes.size(); ++k) per[k].push_back(total[k] / calls * 1e6);
  }
  std::vector<double> medians;
  for (auto& p : per) {
    std::sort(p.begin(), p.end());
    medians.push_back(p[p.size() / 2]);
  }
  return medians;
}
"""


def step_shapes(config: dict) -> list[tuple[str, int, int]]:
    """(name, out, in) of each product a decoder step runs, in order (csrc/models/transformer.cpp)."""
    m = config["model"]
    if m["family"] != "transformer":
        raise SystemExit(f"{m['family']} export: this benchmark reads a Transformer's step")
    d, ff = m["d_model"], m["ff_dim"]
    layer = [("self qkv", 3 * d, d), ("self out", d, d), ("cross query", d, d), ("cross out", d, d),
             ("ff inner", ff, d), ("ff outer", d, ff)]
    return layer * m["dec_layers"] + [("output", m["tgt_vocab"], d)]


def read_rate_gbs(megabytes: float, torch) -> float:
    x = torch.ones(int(megabytes * 2**20 / 4))
    calls = max(5, int(500 / megabytes))
    for _ in range(3):
        x.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            x.sum()
        times.append((time.perf_counter() - start) / calls)
    return x.numel() * 4 / statistics.median(times) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a Transformer export directory")
    parser.add_argument("--rows", default="1,5", help="rows per product: 1 for greedy batch 1, 5 for its beam")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--calls", type=int, default=500, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--build-dir", default="build/step_products")
    args = parser.parse_args()

    import torch
    from torch.utils.cpp_extension import load_inline

    from seq2seq.engine import extension

    root = Path(__file__).resolve().parent.parent
    Path(args.build_dir).mkdir(parents=True, exist_ok=True)
    module = load_inline("step_products", cpp_sources=[CPP], functions=["step_products"],
                         extra_include_paths=[str(root / "csrc")], build_directory=args.build_dir,
                         extra_cflags=["-O2", "-fopenmp"], extra_ldflags=[extension().__file__, "-fopenmp"])
    config = json.loads((Path(args.export) / "config.json").read_text())
    shapes = step_shapes(config)
    weights = sum(o * i for _, o, i in shapes)
    print(f"{args.export}: {len(shapes)} products a step, {weights / 1e6:.2f}M weights "
          f"({weights * 4 / 2**20:.1f} MiB in float32, {weights * 2 / 2**20:.1f} MiB in bfloat16); "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print("\n| threads | rows | type | us a step | weights read, GB/s | torch.sum of as many bytes, GB/s | "
          "share | float32 / bfloat16 |\n|---:|---:|---|---:|---:|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for rows in (int(r) for r in args.rows.split(",")):
            step_us = {}
            for name, size in (("float32", 4), ("bfloat16", 2)):
                per = module.step_products([(o, i) for _, o, i in shapes], rows, name == "bfloat16",
                                           args.calls, args.rounds)
                us = sum(per)
                step_us[name] = us
                rate = weights * size / us / 1e3
                stream = read_rate_gbs(weights * size / 2**20, torch)
                ratio = f"{step_us['float32'] / us:.2f}x" if name == "bfloat16" else ""
                print(f"| {threads} | {rows} | {name} | {us:.0f} | {rate:.1f} | {stream:.1f} | "
                      f"{100 * rate / stream:.0f}% | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
