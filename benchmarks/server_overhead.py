"""What a Translate call costs on top of a direct engine call, with server and client in
one process (no second process competing for the cores).

    python benchmarks/server_overhead.py runs/multi30k_de_en_attention/export --compute-type int8

Medians over the first N sentences of the export's test split, one sentence per call,
beam 5, in this order: direct engine calls, the same through gRPC, direct again (the
engine once the server's worker threads have run it).
"""

from __future__ import annotations

import argparse
import statistics
import time

from seq2seq.config import DecodingOptions
from seq2seq.data import load_dataset
from seq2seq.server.app import Server, ServerConfig
from seq2seq.server.client import Client


def median_ms(fn, sentences) -> float:
    fn(sentences[0])
    times = []
    for s in sentences:
        t = time.perf_counter()
        fn(s)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export")
    parser.add_argument("--compute-type", default="float32")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--split", default="test_2016_flickr")
    args = parser.parse_args()
    server = Server(ServerConfig(models={"m": args.export}, port=0, compute_type=args.compute_type,
                                 threads=args.threads))
    client = Client(f"127.0.0.1:{server.port}")
    engine = server.models["m"].translator
    sentences = [s for s, _ in load_dataset(engine.data_cfg, [args.split]).splits[args.split][: args.sentences]]
    opts = DecodingOptions(beam_size=5)
    direct = lambda s: engine.translate([s], opts)  # noqa: E731
    rows = [("direct engine call", median_ms(direct, sentences)),
            ("Translate through gRPC", median_ms(lambda s: client.translate([s], beam_size=5), sentences)),
            ("direct engine call, after the server's calls", median_ms(direct, sentences))]
    client.close()
    server.stop(grace=1)
    print(f"| {len(sentences)} sentences, {args.compute_type}, beam 5 | p50 ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
