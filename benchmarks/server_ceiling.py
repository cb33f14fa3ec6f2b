"""How many Translate calls per second the server itself can answer: the export's engine is
replaced by one that answers instantly (each source comes back as its translation), so
what is left is gRPC, validation, tokenization, batching, metrics and the access log.

    python benchmarks/server_ceiling.py runs/demo/export --clients 64 --seconds 10

The server runs in this process, the clients (threads, as in `seq2seq bench-server`) in a
child process. Prints requests/s and the server's CPU seconds per request, for each
--max-batch given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys

from seq2seq.decoding import Hypothesis
from seq2seq.server.app import Server, ServerConfig

LOAD = """
import json, sys
from seq2seq.server import loadtest
sentences = [l.strip() for l in open(sys.argv[1]) if l.strip()]
print(json.dumps(loadtest.run_load(sys.argv[2], sentences, int(sys.argv[3]), float(sys.argv[4]), 10**6, 1)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-batch", default="64,1", help="comma-separated")
    parser.add_argument("--sentences", default="", help="a file of sentences (default: made-up ones)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, filename=os.devnull)  # the access log is formatted, as when served
    source = args.sentences
    if not source:
        source = f"/tmp/server_ceiling_{os.getpid()}.txt"
        with open(source, "w") as f:
            f.write("\n".join(f"une phrase de test numéro {i} ." for i in range(100)) + "\n")
    print("| max batch | clients | requests/s | server CPU ms per request |\n|---:|---:|---:|---:|")
    for batch in [int(b) for b in args.max_batch.split(",")]:
        server = Server(ServerConfig(models={"m": args.export}, port=0, max_batch=batch, max_queue=10**6))
        server.models["m"].batcher.translate_ids = lambda ids, opts, abandoned=None: [[Hypothesis(list(s), 0.0, 0.0, None)]
                                                                      for s in ids]
        cpu = sum(os.times()[:2])
        out = subprocess.run([sys.executable, "-c", LOAD, source, f"127.0.0.1:{server.port}", str(args.clients),
                              str(args.seconds)], capture_output=True, text=True, check=True)
        cpu = sum(os.times()[:2]) - cpu
        server.stop(grace=1)
        r = json.loads(out.stdout)
        print(f"| {batch} | {args.clients} | {r['requests_per_s']:.0f} | {1000 * cpu / max(r['requests'], 1):.2f} |")
    if not args.sentences:
        os.remove(source)


if __name__ == "__main__":
    main()
