"""`seq2seq bench-server`: concurrent clients against a local server process.

Each case starts `seq2seq serve` (or, with ``binary``, the C++ front end seq2seq-serve) on 127.0.0.1 (a free port) with the case's batch limit,
then runs N client threads, each sending one sentence per request, until T seconds or R
requests have passed, whichever comes first. Reported: requests/s, p50/p90/p99 latency,
errors, and the server's resident memory after start-up and at the end. Then one client
alternates direct engine calls (same threads and compute type) with calls through a
server: the latency a server adds for a lone caller.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

import functools
import itertools
import json
import tempfile

import grpc

from seq2seq.bench import MemorySampler

from .client import Client


def start_server(export: str, *extra: str, stderr=subprocess.DEVNULL, binary: str = "",
                 models: list[str] | None = None) -> tuple[subprocess.Popen, int, int | None]:
    """A `seq2seq serve` process, or the C++ ``binary``, on a free port: (process, port,
    metrics port if asked for). It serves ``export`` as model "m", or the given ``--model``
    arguments. Its log (stderr) goes to ``stderr``."""
    models = models or ["--model", f"m={export}"]
    command = [binary] if binary else [sys.executable, "-m", "seq2seq", "serve"]
    proc = subprocess.Popen([*command, *models, "--port", "0", *extra], stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    found = re.search(r"on 127\.0\.0\.1:(\d+)(?:, metrics on 127\.0\.0\.1:(\d+))?", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, int(found.group(1)), int(found.group(2)) if found.group(2) else None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_load(target: str, sentences: list[str], clients: int, seconds: float, max_requests: int,
             beam_size: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(max_requests))
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(k: int):
        client = Client(target, timeout=30)
        while time.monotonic() < end:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t = time.perf_counter()
            try:
                client.translate([sentences[(i + k) % len(sentences)]], beam_size=beam_size)
                latency = time.perf_counter() - t
                with lock:
                    latencies.append(latency)
            except grpc.RpcError as e:
                with lock:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
        client.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"requests": len(latencies), "seconds": wall, "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p90_ms": 1000 * percentile(latencies, 0.9),
            "p99_ms": 1000 * percentile(latencies, 0.99), "errors": errors}


def run_load_cpp(loadgen: str, target: str, sentences: list[str], clients: int, seconds: float, max_requests: int,
                 beam_size: int) -> dict:
    """run_load's figures from the C++ load generator ``loadgen`` (seq2seq-loadgen): the same
    calls, each client a thread of a native process, costing the shared CPU less per call."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("".join(s.replace("\n", " ") + "\n" for s in sentences))
        f.flush()
        done = subprocess.run([loadgen, "--target", target, "--sentences", f.name, "--clients", str(clients),
                               "--seconds", str(seconds), "--max-requests", str(max_requests),
                               "--beam-size", str(beam_size)], capture_output=True, text=True,
                              timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"{loadgen} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def beside(export: str, sentences: list[str], seconds: float, max_requests: int, beam_size: int,
           server_args: list[str], binary: str, load, count: int) -> tuple[dict, dict, dict]:
    """A normal client's latency alone, then beside ``count`` threads each running
    ``load(target, stop)`` until told to stop; one server for both phases. Returns the two
    latency summaries and how the load's calls ended (status name -> count)."""
    proc, port, _ = start_server(export, *server_args, binary=binary)
    target, outcomes, lock = f"127.0.0.1:{port}", {}, threading.Lock()
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                load(target, stop)
                name = "OK"
            except grpc.RpcError as e:
                name = e.code().name
            with lock:
                outcomes[name] = outcomes.get(name, 0) + 1

    try:
        alone = run_load(target, sentences, 1, seconds, max_requests, beam_size)
        threads = [threading.Thread(target=run) for _ in range(count)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the load is in the engine
        loaded = run_load(target, sentences, 1, seconds, max_requests, beam_size)
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop.set()
        proc.terminate()
        proc.wait()
    return alone, loaded, outcomes


def abusive_clients(export: str, sentences: list[str], abusive: int, seconds: float, max_requests: int,
                    beam_size: int, *server_args: str, binary: str = "", max_cost: int = 65536) -> dict:
    """A normal client's latency alone, then beside ``abusive`` clients that each send, again and
    again, the costliest request the server admits: 8 copies of the longest sentence, at the
    largest beam whose cost (sentences x beam x the longest output they may reach) stays within
    ``max_cost`` (the server's --max-request-cost), max_length 512. One server for both phases."""
    from seq2seq.config import DecodingOptions
    from seq2seq.engine import Engine
    from seq2seq.server.service import request_cost

    engine = Engine(export)
    longest = max(sentences, key=lambda text: len(engine.encode(text)))
    ids = [engine.encode(longest)] * 8
    beam = max((b for b in range(1, 33) if request_cost(ids, DecodingOptions(beam_size=b, max_length=512)) <= max_cost),
               default=1)
    cost = request_cost(ids, DecodingOptions(beam_size=beam, max_length=512))

    def abuse(target, stop):
        client = Client(target, timeout=300)
        try:
            client.translate([longest] * 8, beam_size=beam, max_length=512)
        finally:
            client.close()

    alone, loaded, outcomes = beside(export, sentences, seconds, max_requests, beam_size,
                                     ["--max-request-cost", str(max_cost), *server_args], binary, abuse, abusive)
    return {"alone": alone, "loaded": loaded, "abusive_clients": abusive, "abusive_request":
            {"sentences": 8, "source_tokens": len(ids[0]), "beam_size": beam, "max_length": 512, "cost": cost},
            "abusive_outcomes": outcomes, "p99_ratio": loaded["p99_ms"] / alone["p99_ms"]}


def evaluate_jobs(export: str, sentences: list[str], jobs: int, seconds: float, max_requests: int,
                  beam_size: int, *server_args: str) -> dict:
    """A normal client's latency alone, then beside ``jobs`` Evaluate jobs over the same
    sentences (the C++ engine, beam 5; each sentence its own reference, since only the load
    matters here), each started again when it ends. The Python server only: the C++ front
    end has no Evaluate."""
    def job(target, stop):
        client = Client(target, timeout=3600)
        try:
            for _ in client.evaluate(sources=sentences, references=sentences, backend="cpp", beam_size=5):
                if stop.is_set():
                    break
        finally:
            client.close()

    alone, loaded, outcomes = beside(export, sentences, seconds, max_requests, beam_size, list(server_args), "",
                                     job, jobs)
    return {"alone": alone, "loaded": loaded, "evaluate_jobs": jobs, "job_sentences": len(sentences),
            "evaluate_outcomes": outcomes, "p99_ratio": loaded["p99_ms"] / alone["p99_ms"]}


def one_client_overhead(export: str, sentences: list[str], beam_size: int, n: int = 300, threads: int = 1,
                        compute_type: str = "float32", *server_args: str, binary: str = "") -> dict:
    """What a Translate call costs over a direct engine call with the server's settings.

    The two alternate sentence by sentence (the benchmark's own engine, then the same
    sentence through a server process), so drifts in this shared machine's speed touch both
    alike; one sentence per call."""
    from seq2seq.config import DecodingOptions
    from seq2seq.engine import Engine

    engine, opts = Engine(export, threads=threads, compute_type=compute_type), DecodingOptions(beam_size=beam_size)
    log = tempfile.TemporaryFile("w+")
    proc, port, metrics_port = start_server(export, "--threads", str(threads), "--compute-type", compute_type,
                                            *metrics_args(binary), *server_args, binary=binary, stderr=log)
    direct, served = [], []
    try:
        client = Client(f"127.0.0.1:{port}", timeout=60)
        sample = [sentences[i % len(sentences)] for i in range(n)]
        for s in sample[:5]:  # warm-up
            engine.translate([s], opts), client.translate([s], beam_size=beam_size)
        handled_before = metric_totals(metrics_port, "seq2seq_request_seconds", '"Translate"') if not binary else 0
        for s in sample:
            t0 = time.perf_counter()
            engine.translate([s], opts)
            t1 = time.perf_counter()
            client.translate([s], beam_size=beam_size)
            direct.append(t1 - t0)
            served.append(time.perf_counter() - t1)
        if not binary:
            handled = [b - a for a, b in zip(handled_before, metric_totals(metrics_port, "seq2seq_request_seconds",
                                                                           '"Translate"'))]
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    if binary:  # its log has a line per call, the warm-up's first
        ms_per_call = [e["ms"] for e in log_events(log) if e.get("method") == "Translate"][5:]
        handled = [len(ms_per_call), sum(ms_per_call) / 1000]
    log.close()
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    mean = lambda xs: 1000 * statistics.fmean(xs)  # noqa: E731
    return {"sentences": n, "direct_p50_ms": ms(direct), "served_p50_ms": ms(served),
            "overhead_ms": ms(served) - ms(direct), "overhead_p50_ms": ms([b - a for a, b in zip(direct, served)]),
            # Means, because the server's latency histogram gives its handler's mean only.
            "direct_mean_ms": mean(direct), "handler_mean_ms": 1000 * handled[1] / max(handled[0], 1),
            "served_mean_ms": mean(served)}


def bench_server(export: str, sentences: list[str], clients: list[int], batches: list[int], seconds: float,
                 max_requests: int, beam_size: int = 5, threads: int = 1, compute_type: str = "float32",
                 workers: int = 0, max_delay_ms: float = 3.0, log=print, binary: str = "", rounds: int = 1,
                 loadgen: str = "") -> list[dict]:
    """Every (batch, clients) case, ``rounds`` times over: the cases of one round run close in
    time, so a ratio between them is less moved by a shared machine's drift than the same
    ratio across rounds. The clients are Python threads, or the C++ ``loadgen``'s."""
    rows = []
    for round_, batch, n in itertools.product(range(1, rounds + 1), batches, clients):
        server_log = tempfile.TemporaryFile("w+")
        proc, port, metrics_port = start_server(
            export, "--max-batch", str(batch), "--max-queue", "100000", "--threads", str(threads),
            "--workers", str(workers), "--max-delay-ms", str(max_delay_ms), "--compute-type", compute_type,
            *metrics_args(binary), binary=binary, stderr=server_log)
        try:
            Client(f"127.0.0.1:{port}").translate(sentences[:4], beam_size=beam_size)  # warm-up
            before = engine_batches(metrics_port) if not binary else (0, 0)
            with MemorySampler(proc.pid, every=1.0) as memory:
                load = functools.partial(run_load_cpp, loadgen) if loadgen else run_load
                r = load(f"127.0.0.1:{port}", sentences, n, seconds, max_requests, beam_size)
            after = engine_batches(metrics_port) if not binary else None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if binary:  # the C++ server counts its batches up to its end, the warm-up's among them
            after = next(e["engine_batches"]["m"] for e in log_events(server_log) if e.get("event") == "stopped")
            after = (after["batches"], after["sentences"])
        server_log.close()
        mib = [(t, round(m, 1)) for t, m in memory.samples]
        r.update(round=round_, max_batch=batch, clients=n, server_mib_start=mib[0][1],
                 server_mib_peak=max(m for _, m in mib), server_mib_end=mib[-1][1], server_mib=mib,
                 mean_batch=(after[1] - before[1]) / max(after[0] - before[0], 1))
        rows.append(r)
        log(f"{f'round {round_}: ' if rounds > 1 else ''}max batch {batch:3} clients {n:3}: {r['requests']:6} requests, "
            f"{r['requests_per_s']:7.1f}/s, p50 {r['p50_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, errors {sum(r['errors'].values())}")
    return rows


def batching_gains(rows: list[dict]) -> list[tuple[int, int, list[float]]]:
    """(clients, largest max batch, [its throughput over max batch 1's, per round]) for every
    client count measured at max batch 1 and at a larger one."""
    by = {(r.get("round", 1), r["max_batch"], r["clients"]): r["requests_per_s"] for r in rows}
    best = max(r["max_batch"] for r in rows)
    gains = []
    for n in dict.fromkeys(r["clients"] for r in rows):
        per_round = [by[(k, best, n)] / by[(k, 1, n)] for k in sorted({r.get("round", 1) for r in rows})
                     if by.get((k, 1, n)) and (k, best, n) in by]
        if best > 1 and per_round:
            gains.append((n, best, per_round))
    return gains


def metrics_args(binary: str) -> list[str]:
    """The Python server serves Prometheus metrics; the C++ one logs what the benchmark reads."""
    return [] if binary else ["--metrics-port", "0"]


def log_events(log) -> list[dict]:
    """The JSON lines of a server's log file (an open file it has written)."""
    log.seek(0)
    return [json.loads(line) for line in log if line.startswith("{")]


def metric_totals(metrics_port: int, metric: str, labels: str = "") -> tuple[float, float]:
    """(count, sum) of a histogram in the server's Prometheus metrics, over the label sets
    that contain ``labels``."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()

    def total(part: str) -> float:
        return sum(float(v) for lab, v in re.findall(rf"^{metric}_{part}\{{(.*)\}} (\S+)$", text, re.M) if labels in lab)

    return total("count"), total("sum")


def engine_batches(metrics_port: int) -> tuple[float, float]:
    """(batches, sentences) the server's engine has run."""
    return metric_totals(metrics_port, "seq2seq_batch_sentences")


def several_rounds(rows: list[dict]) -> bool:
    return max(r.get("round", 1) for r in rows) > 1


def markdown(rows: list[dict]) -> str:
    rounds = several_rounds(rows)
    lines = [("| round " if rounds else "") + "| max batch | clients | requests | requests/s | p50 ms | p90 ms | p99 ms | "
             "errors | mean batch | server MiB: start, peak, end |",
             ("|---:" if rounds else "") + "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        lines.append((f"| {r['round']} " if rounds else "") + f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} | "
                     f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {errors} | {r['mean_batch']:.1f} | "
                     f"{r['server_mib_start']:.0f}, {r['server_mib_peak']:.0f}, {r['server_mib_end']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_memory(rows: list[dict], path: str) -> str:
    """The server's resident memory through each case, one line per case."""
    from seq2seq.plots import plot_lines

    rounds = several_rounds(rows)
    series = {f"{'round %d, ' % r['round'] if rounds else ''}max batch {r['max_batch']}, {r['clients']} clients": ([t for t, _ in r["server_mib"]],
                                                                      [m for _, m in r["server_mib"]]) for r in rows}
    return str(plot_lines(series, "seconds into the case", "server resident memory, MiB", path,
                          "seq2seq serve under load"))
