"""The least a Translate call can cost over gRPC in Python: a server (its own process, like
`seq2seq serve`) whose handler answers at once, no validation, batching, engine or metrics,
called by one client back to back, and after the client has computed for a while between
calls, as in bench-server's one-client overhead, where a direct engine call sits between
two served ones. Idle threads must wake up for each call, which costs more than a busy
loop of calls.

    python benchmarks/grpc_floor.py --calls 500 --gaps 0,10,40

Prints the median round trip for each gap (milliseconds of client computation between calls).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from seq2seq.server.protos import load

pb, pb_grpc = load()


class Echo(pb_grpc.TranslationServiceServicer):
    def Translate(self, request, context):
        return pb.TranslateResponse(request_id=request.request_id, translations=[
            pb.Translation(hypotheses=[pb.Hypothesis(text=s)]) for s in request.sentences])


def serve(port) -> None:
    server = grpc.server(ThreadPoolExecutor(16))
    pb_grpc.add_TranslationServiceServicer_to_server(Echo(), server)
    port.value = server.add_insecure_port("127.0.0.1:0")
    server.start()
    server.wait_for_termination()


def compute(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--gaps", default="0,10,40", help="comma-separated milliseconds")
    args = parser.parse_args()
    port = mp.Value("i", 0)
    proc = mp.Process(target=serve, args=(port,), daemon=True)
    proc.start()
    while not port.value:
        time.sleep(0.05)
    channel = grpc.insecure_channel(f"127.0.0.1:{port.value}")
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = pb_grpc.TranslationServiceStub(channel)
    request = pb.TranslateRequest(request_id="r", sentences=["ein mann fährt fahrrad ."])
    print("| client computation between calls, ms | calls | median round trip, ms |\n|---:|---:|---:|")
    for gap in [float(g) / 1000 for g in args.gaps.split(",")]:
        for _ in range(50):  # warm-up
            stub.Translate(request, timeout=30)
        times = []
        for _ in range(args.calls):
            compute(gap)
            t = time.perf_counter()
            stub.Translate(request, timeout=30)
            times.append(time.perf_counter() - t)
        print(f"| {1000 * gap:g} | {args.calls} | {1000 * statistics.median(times):.2f} |", flush=True)
    channel.close()
    proc.terminate()
    proc.join()


if __name__ == "__main__":
    main()
