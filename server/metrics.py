"""Prometheus metrics (served on their own port) and one structured log line per call."""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("seq2seq.server")

# A caller whose deadline passes cancels the call; the cancel reaches the server about when the
# server's own copy of the deadline (the caller's, carried in the call) passes.
DEADLINE_SLACK_S = 0.1


class Metrics:
    def __init__(self, port: int | None, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        self.requests = Counter("seq2seq_requests", "calls by method and status", ["method", "status"],
                                registry=self.registry)
        self.latency = Histogram("seq2seq_request_seconds", "call latency", ["method"], registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
        self.batch_sentences = Histogram("seq2seq_batch_sentences", "sentences per engine batch", ["model"],
                                         registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.queue_depth = Gauge("seq2seq_queue_sentences", "sentences waiting for the engine", ["model"],
                                 registry=self.registry)
        self._children: dict = {}
        self.grace_ends = math.inf  # when a stop's grace period ends, gRPC cancels the calls left
        self.server = None
        if port is not None:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
            self.port = self.server.server_port

    def on_batch(self, model: str):
        sentences_child, depth = self.batch_sentences.labels(model), self.queue_depth.labels(model)

        def record(sentences: int, queued: int):
            sentences_child.observe(sentences)
            depth.set(queued)
        return record

    def set_queue_depth(self, model: str, queued: int) -> None:
        self._child(self.queue_depth, model).set(queued)

    @contextmanager
    def observe(self, method: str, context, request_id: str, sentences: int):
        """Counts the call under the status its caller gets, times it and logs it as one JSON line."""
        started = time.perf_counter()
        status = "OK"
        try:
            yield
        except Exception:
            code = context.code() if hasattr(context, "code") else None
            status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        finally:
            if not context.is_active():  # it ended before the handler answered: gRPC gave the caller a status
                status = self.ended(context)
            seconds = time.perf_counter() - started
            self._child(self.requests, method, status).inc()
            self._child(self.latency, method).observe(seconds)
            log.info(json.dumps({"method": method, "status": status, "ms": round(1000 * seconds, 2),
                                 "request_id": request_id, "sentences": sentences, "peer": context.peer()}))

    def ended(self, context) -> str:
        """The status a caller gets for a call that ended before its handler answered (the
        server's answer is never sent): its deadline passed, the stop cancelled it once the
        grace period was over (gRPC says UNAVAILABLE), or the caller cancelled it."""
        if context.time_remaining() < DEADLINE_SLACK_S:
            return "DEADLINE_EXCEEDED"
        if time.monotonic() >= self.grace_ends:
            return "UNAVAILABLE"
        return "CANCELLED"

    def _child(self, metric, *labels):
        # labels() takes a lock and validates on every call; the server asks for the same few.
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def close(self):
        if self.server is not None:
            self.server.shutdown()
