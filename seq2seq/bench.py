"""`seq2seq bench`: the C++ engine against the Python reference decoder (and, with
``--against ctranslate2``, CTranslate2), side by side.

Both decode the same token ids (tokenization is left out: it is the same code for both) in
batches of the same sentences, in corpus order, with the same number of threads; the
Python reference runs batched under torch.inference_mode. Reported per case and backend:
sentences/s, target tokens/s, p50/p90 latency of a batch, and the peak resident memory
above the level at the start of the case. Then how close the engine comes to the machine:
its model GFLOP/s at the largest beam batch against the decoder's largest matrix product
alone (the faster of MKL and oneDNN), and at batch 1 the decoder weight bytes it reads per
second against the memory bandwidth of a large copy.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, replace

import torch

from seq2seq.config import DecodingOptions, ModelConfig

@dataclass
class Case:
    name: str
    beam_size: int
    batch: int


def parse_cases(text: str) -> list[Case]:
    """'greedy:1,beam5:32' -> cases; greedy is beam 1."""
    cases = []
    for item in text.split(","):
        item = item.strip()
        search, _, batch = item.partition(":")
        beam = 1 if search == "greedy" else int(search[4:]) if search.startswith("beam") and search[4:].isdigit() else 0
        if beam < 1 or not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"bench case {item!r}: write SEARCH:BATCH with SEARCH greedy or beamK, "
                             "for example greedy:1 or beam5:32")
        cases.append(Case(item, beam, int(batch)))
    return cases


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096


class MemorySampler:
    """The resident set size of a process (this one unless ``pid`` is given), at the start,
    every ``every`` seconds while the block runs, and at the end: ``samples`` holds
    (seconds since the start, MiB)."""

    def __init__(self, pid: int | str = "self", every: float = 0.005):
        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        self.samples.append((round(time.monotonic() - self._started, 3), rss_bytes(self.pid) / 2**20))

    def _run(self):
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self):
        self._started = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def above_start_mb(self) -> float:
        return max(m for _, m in self.samples) - self.samples[0][1]


def _spin(core: int) -> None:
    import os

    os.sched_setaffinity(0, {core})
    while True:
        pass


class BusyCores:
    """``count`` processes that each keep one core busy (the last cores of this process's
    affinity, one process pinned to each) while the block runs: the engine's speed when
    other work shares the machine, as a server's does. ``cores`` says which were taken."""

    def __init__(self, count: int):
        import os

        available = sorted(os.sched_getaffinity(0))
        if count < 0 or count >= len(available):
            raise ValueError(f"--busy-cores must be 0 to {len(available) - 1} on this machine "
                             f"({len(available)} cores available), not {count}")
        self.cores = available[len(available) - count:] if count else []
        self._procs = []

    def __enter__(self):
        import multiprocessing

        spawn = multiprocessing.get_context("spawn")
        for core in self.cores:
            proc = spawn.Process(target=_spin, args=(core,), daemon=True)
            proc.start()
            self._procs.append(proc)
        return self

    def __exit__(self, *exc):
        for proc in self._procs:
            proc.kill()
            proc.join()
        self._procs = []


def run_case(translator, sources: list[list[int]], case: Case, opts: DecodingOptions) -> dict:
    opts = replace(opts, beam_size=case.beam_size, n_best=1)
    translator.decode_ids(sources[: case.batch], opts)  # warm-up: first-call allocations
    resident = rss_bytes() / 2**20  # the process with the model loaded and warmed up
    latencies, outputs = [], []
    with MemorySampler() as memory:
        started = time.perf_counter()
        for i in range(0, len(sources), case.batch):
            t = time.perf_counter()
            hyps = translator.decode_ids(sources[i:i + case.batch], opts)
            latencies.append(time.perf_counter() - t)
            outputs += [h[0].tokens for h in hyps]
        seconds = time.perf_counter() - started
    out_tokens = sum(len(t) + 1 for t in outputs)  # + <eos>
    qs = statistics.quantiles(latencies, n=10) if len(latencies) > 1 else [latencies[0]] * 9
    return {"sentences_per_s": len(sources) / seconds, "tokens_per_s": out_tokens / seconds,
            "p50_ms": 1000 * statistics.median(latencies), "p90_ms": 1000 * qs[8], "seconds": seconds,
            "peak_memory_mb": memory.above_start_mb, "resident_mb": resident, "output_tokens": out_tokens,
            "outputs": outputs}


def decoder_step_weights(model: torch.nn.Module) -> int:
    """Elements of the weight matrices one decoder step multiplies by, per row: every 2-d
    weight except the embedding tables (a lookup) and the encoder's (run once per source)."""
    from seq2seq.engine import decoder_step_matrix

    # remove_duplicate=False: a tied output layer shares the embedding's Parameter, and is a product.
    return sum(p.numel() for name, p in model.named_parameters(remove_duplicate=False)
               if decoder_step_matrix(name, p))


def model_flops(cfg: ModelConfig, model: torch.nn.Module, sources: list[list[int]], outputs: list[list[int]],
                beam: int) -> float:
    """Multiply-adds x 2 of the encoder over every source token and of the decoder for
    `beam` rows per output token (a lower bound: beams still open after the best
    hypothesis ended are not counted), attention over the source included (and, for the
    Transformer, self-attention over the positions decoded so far)."""
    once = ("encoder.", "enc.")
    enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(once) and p.dim() == 2
              and "embed" not in n)
    # Projections of the source computed once per sentence: RNN keys, Transformer cross keys/values.
    key = sum(p.numel() for n, p in model.named_parameters()
              if p.dim() == 2 and ("key_proj" in n or ".cross_attn.k_proj" in n or ".cross_attn.v_proj" in n))
    step = decoder_step_weights(model)
    # Per attended position: the score and the context sum, each over the attended width.
    if cfg.family == "transformer":
        src_width, self_width = 2 * cfg.d_model * cfg.dec_layers, 2 * cfg.d_model * cfg.dec_layers
        enc_attn = 2 * cfg.d_model * cfg.enc_layers  # per source position pair
    else:
        additive = cfg.attention in ("bahdanau", "concat")
        src_width = (cfg.attention_dim if additive else cfg.hidden) + cfg.hidden if cfg.family == "attention" else 0
        self_width = enc_attn = 0
    flops = 0.0
    for src, out in zip(sources, outputs):
        s, t = len(src) + 1, len(out) + 1
        flops += 2 * s * (enc + key) + 2 * s * s * enc_attn
        # Step i attends over s source positions and i + 1 decoded ones.
        flops += 2 * beam * (t * (step + s * src_width) + t * (t + 1) // 2 * self_width)
    return flops


def median_seconds(fn, repeat: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_gflops(rows: int, inner: int, cols: int) -> tuple[float, str]:
    """GFLOP/s of a float32 (rows x inner) @ (inner x cols) product, and which library gave
    them: the faster of MKL (torch.matmul) and oneDNN with the matrix prepacked, the two the
    engine chooses between."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    seconds = {"MKL": median_seconds(lambda: torch.matmul(a, b))}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), None)
        seconds["oneDNN"] = median_seconds(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    best = min(seconds, key=seconds.get)
    return 2 * rows * inner * cols / seconds[best] / 1e9, best


def copy_bandwidth_gbs(megabytes: int = 256) -> float:
    """Bytes read plus bytes written per second by a large tensor copy."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_seconds(lambda: dst.copy_(src), repeat=10) / 1e9


def limits(cfg: ModelConfig, model, sources, results: dict, cases: list[Case]) -> list[str]:
    """Lines on how close each engine backend comes to this machine's compute and memory limits."""
    lines = []
    engines = [b for b in next(iter(results.values())) if b.startswith("cpp")]
    beams = [c for c in cases if c.beam_size > 1]
    if beams and engines:
        case = max(beams, key=lambda c: c.beam_size * c.batch)
        out = model.out.weight
        rows = case.beam_size * case.batch
        ref, library = matmul_gflops(rows, out.size(1), out.size(0))
        # The peer's lines by the same count, to say how far any engine comes on these shapes.
        peers = [b for b in results[case.name] if b.startswith("ct2")]
        for backend in engines + peers:
            r = results[case.name][backend]
            gflops = model_flops(cfg, model, sources, r["outputs"], case.beam_size) / r["seconds"] / 1e9
            lines.append(f"compute, {case.name}, {backend}: at least {gflops:.1f} model GFLOP/s; the output layer's "
                         f"float32 product ({rows} x {out.size(1)}) @ ({out.size(1)} x {out.size(0)}) alone does "
                         f"{ref:.1f} GFLOP/s with {library}, the faster of MKL and oneDNN ({100 * gflops / ref:.0f}%)")
    ones = [c for c in cases if c.batch == 1]
    if ones and engines:
        bandwidth = copy_bandwidth_gbs()
        for backend in engines:
            size = 1 if "int8" in backend else 2 if "bfloat16" in backend else 4
            weight_bytes = size * decoder_step_weights(model)
            for case in ones:
                r = results[case.name][backend]
                steps = sum(len(o) + 1 for o in r["outputs"])  # a step per output token reads every weight once
                rate = weight_bytes * steps / r["seconds"] / 1e9
                lines.append(f"memory, {case.name}, {backend}: {weight_bytes / 2**20:.1f} MiB of decoder weights per "
                             f"step, read at {rate:.1f} GB/s; a large copy moves {bandwidth:.1f} GB/s, read + write "
                             f"({100 * rate / bandwidth:.0f}%)")
    return lines


def kernel_lines(model: torch.nn.Module, types: list[str], cases: list[Case]) -> list[str]:
    """Which kernel each of the decoder's step products takes in the engine, per compute type
    and case (a step multiplies beam x batch rows), on this CPU at this thread count: the
    engine's own rule (csrc/layers/dense.cpp, Dense::choose), asked through the binding."""
    from seq2seq import _C
    from seq2seq.engine import decoder_step_matrix

    shapes: dict[tuple[int, int], list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if decoder_step_matrix(name, p):
            shapes.setdefault(tuple(p.shape), []).append(name)
    lines = []
    for t in types:
        for (out, inp), names in sorted(shapes.items()):
            kernels = _C.dense_kernels(t, out, inp, [c.beam_size * c.batch for c in cases])
            each = "; ".join(f"{c.name} {k}" for c, k in zip(cases, kernels))
            lines.append(f"kernels, {t}, {out}x{inp} ({len(names)} of the step's products, "
                         f"e.g. {names[0]}): {each}")
    return lines


def peer_ratio(row: dict, backend: str) -> str:
    """An engine backend's speed over CTranslate2's best of the same compute type (bfloat16,
    which CTranslate2 refuses on the CPU: over its best of any type)."""
    kind = backend.split(" ")[1] if " " in backend else "float32"
    peers = [r["sentences_per_s"] for b, r in row.items() if b.startswith("ct2") and (kind in b or kind == "bfloat16")]
    return f"{row[backend]['sentences_per_s'] / max(peers):.2f}x" if peers else ""


def markdown(results: dict, cases: list[Case]) -> str:
    lines = ["| case | backend | sentences/s | tokens/s | p50 ms | p90 ms | resident MiB | peak memory MiB | "
             "/ Python | C++ / CTranslate2 | same output |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        row = results[case.name]
        for backend, r in row.items():
            ratio = ""
            if backend != "python" and "python" in row:
                ratio = f"{r['sentences_per_s'] / row['python']['sentences_per_s']:.1f}x"
            peer = peer_ratio(row, backend) if backend.startswith("cpp") else ""
            lines.append(f"| {case.name} | {backend} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r.get('resident_mb', 0):.0f} | "
                         f"{r['peak_memory_mb']:.0f} | {ratio} | {peer} | "
                         f"{r.get('identical', '')} |")
    return "\n".join(lines) + "\n"


class Isolated:
    """A backend built and measured in a process of its own, one per case: ``make(**kwargs)``
    there. CTranslate2 bundles its own OpenMP runtime, and once its threads had run, the
    engine in the same process decoded up to 3x slower until the process ended
    (benchmarks/ctranslate2_interference.py, docs/bench.md), so peers are timed apart from
    the engine and each other; and the engine's compute types apart from each other and
    from the Python reference."""

    def __init__(self, make, **kwargs):
        self.make, self.kwargs = make, kwargs

    def run_case(self, sources: list[list[int]], case: Case, opts: DecodingOptions) -> dict:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_run_isolated, self.make, self.kwargs, sources, case, opts,
                               torch.get_num_threads()).result()


def _run_isolated(make, kwargs: dict, sources, case: Case, opts: DecodingOptions, threads: int) -> dict:
    torch.set_num_threads(threads)
    return run_case(make(**kwargs), sources, case, opts)


def bench(translators: dict, sources: list[list[int]], cases: list[Case], opts: DecodingOptions, log=print,
          rounds: int = 1) -> dict:
    """results[case][backend] for every case and backend; identical outputs are counted.

    With several rounds the backends take turns (engine, reference, peer, engine, ...), so
    a machine that slows down or speeds up over minutes, as shared ones do, weighs on every
    backend alike; each backend's round of median speed is reported, with every round's
    sentences/s in ``rounds``."""
    results: dict = {}
    for case in cases:
        runs: dict = {backend: [] for backend in translators}
        for turn in range(rounds):
            for backend, translator in translators.items():
                isolated = isinstance(translator, Isolated)
                r = translator.run_case(sources, case, opts) if isolated else run_case(translator, sources, case, opts)
                runs[backend].append(r)
                each = f"  (round {turn + 1} of {rounds})" if rounds > 1 else ""
                log(f"{case.name:10} {backend:12} {r['sentences_per_s']:8.1f} sent/s  {r['tokens_per_s']:8.0f} tok/s  "
                    f"p50 {r['p50_ms']:7.1f} ms  p90 {r['p90_ms']:7.1f} ms{each}")
        results[case.name] = {}
        for backend, done in runs.items():
            ranked = sorted(done, key=lambda r: r["sentences_per_s"])
            results[case.name][backend] = {**ranked[(len(ranked) - 1) // 2],
                                           "rounds": [round(r["sentences_per_s"], 1) for r in done]}
        row = results[case.name]
        for backend in [b for b in row if b != "python" and "python" in row]:
            same = sum(a == b for a, b in zip(row[backend]["outputs"], row["python"]["outputs"]))
            log(f"{case.name:10} {backend}: {same} of {len(sources)} outputs identical to the Python reference's")
            row[backend]["identical"] = same
    return results
