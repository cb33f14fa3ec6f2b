"""Both servers as processes for the tests that run against each: `seq2seq serve` and
seq2seq-serve (skipped when build/cmake/seq2seq-serve is not built: make cpp), on 127.0.0.1
and an ephemeral port, their JSON log lines (stderr) in a file."""

import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from seq2seq.server.client import pb_grpc
from seq2seq.server.loadtest import start_server

BINARY = Path(__file__).resolve().parents[1] / "build" / "cmake" / "seq2seq-serve"
SERVERS = ["python", pytest.param("cpp", marks=pytest.mark.skipif(not BINARY.exists(),
                                                                   reason="seq2seq-serve is not built (make cpp)"))]
LIMIT = 1_000_000  # --max-message-bytes: SLOW's answer fits
COST = 10**9  # --max-request-cost (None: the default): SLOW (64 sentences of 200 tokens, beam 8) passes the default


class Running:
    """A server process whose stderr (its JSON log lines) goes to ``log``."""

    def __init__(self, server: str, export: Path, log: Path, *args: str, limit: int = LIMIT, cost: int = COST):
        self.server, self.log, self.signalled = server, log, False
        metrics = ("--metrics-port", "0") if server == "python" else ()
        with open(log, "w") as err:
            self.proc, port, self.metrics_port = start_server(
                str(export), "--max-message-bytes", str(limit), *(("--max-request-cost", str(cost)) if cost else ()),
                *metrics, *args,
                stderr=err,
                binary=str(BINARY) if server == "cpp" else "")
        self.port = port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.TranslationServiceStub(self.channel)

    def other_client(self) -> pb_grpc.TranslationServiceStub:
        """A stub over a connection of its own (grpcio shares one between channels to the same
        address unless told otherwise), so the server sees another client."""
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        return pb_grpc.TranslationServiceStub(channel)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def logged(self, method: str, request_id: str = "") -> str:
        """The status of the call's log line, once written: a handler may go on after its caller
        has its status (a running engine batch is not interrupted)."""
        for _ in range(1200):
            found = [e["status"] for e in self.lines() if e.get("method") == method and e["request_id"] == request_id]
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no log line for {method} {request_id!r}: {self.lines()}")

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30).read().decode()
        found = re.search(re.escape(name) + r" (\S+)", text)
        return float(found.group(1)) if found else 0.0

    def assert_logged(self, code: grpc.StatusCode, method: str = "Translate", request_id: str = ""):
        """The call's log line says ``code``, the status its client got, and so do the metrics:
        they count as many calls under the method and status as the log has lines."""
        assert self.logged(method, request_id) == code.name
        if self.server == "python":
            lines = [e for e in self.lines() if e.get("method") == method and e["status"] == code.name]
            assert self.metric(f'seq2seq_requests_total{{method="{method}",status="{code.name}"}}') == len(lines)

    def terminate(self):
        self.signalled = True  # once: `seq2seq serve` can hang on a second SIGTERM (app.serve's handler)
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> list[dict]:
        """SIGTERM unless sent already; the log's lines once the process has ended."""
        self.channel.close()
        if not self.signalled:
            self.terminate()
        assert self.proc.wait(120) == 0
        return self.lines()


def servers_for_one_test(export: Path, tmp_path: Path):
    """A fixture's body: yields start(server, *args, limit=..., cost=...), which starts a server
    on ``export`` logging under ``tmp_path``; those still up when the test ends are killed."""
    started = []

    def run(server: str, *args: str, **kw) -> Running:
        started.append(Running(server, export, tmp_path / f"server{len(started)}.log", *args, **kw))
        return started[-1]
    yield run
    for srv in started:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
