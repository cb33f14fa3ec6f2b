"""Server memory under undecodable requests: sends bytes that are not a TranslateRequest to
Translate, as fast as one client can, and prints the server's resident memory as it goes.
Starts the server itself (`seq2seq serve`, or the C++ binary with --binary) on 127.0.0.1.

    python benchmarks/undecodable_rss.py EXPORT --seconds 60
    python benchmarks/undecodable_rss.py EXPORT --seconds 60 --binary build/cmake/seq2seq-serve
"""

import argparse
import time

import grpc

from seq2seq.server.loadtest import start_server


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("--binary", default="", help="seq2seq-serve; default: the Python server")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=1_000_000)
    args = ap.parse_args()
    proc, port, _ = start_server(args.export, binary=args.binary)
    try:
        call = grpc.insecure_channel(f"127.0.0.1:{port}").unary_unary("/seq2seq.v1.TranslationService/Translate")
        codes: dict[str, int] = {}
        start = time.monotonic()
        print(f"{'seconds':>8} {'requests':>9} {'RSS MB':>8}")
        print(f"{0:8.1f} {0:9d} {rss_mb(proc.pid):8.1f}")
        sent, next_report = 0, 5.0
        while sent < args.max_requests and time.monotonic() - start < args.seconds:
            try:
                call(b"\xff\xff\xff\xff", timeout=30)
            except grpc.RpcError as e:
                codes[e.code().name] = codes.get(e.code().name, 0) + 1
            sent += 1
            if time.monotonic() - start >= next_report:
                print(f"{time.monotonic() - start:8.1f} {sent:9d} {rss_mb(proc.pid):8.1f}", flush=True)
                next_report += 5.0
        print(f"{time.monotonic() - start:8.1f} {sent:9d} {rss_mb(proc.pid):8.1f}")
        print("statuses:", codes)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
