"""Starting and stopping the server: models, batchers, health, reflection, TLS, a bearer
token, metrics, and a graceful SIGTERM.

The Prometheus metrics (--metrics-port) are not behind the bearer token, by decision: they
listen on 127.0.0.1 only, where a scraper on the host reads them without a token to carry,
and they hold counts and latencies labelled by method, status and loaded model name only,
never request text, request ids, sentences or peers (the per-call log lines on stderr hold
request ids and peers). tests/test_operator_errors.py checks that no request text shows there.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import signal
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from seq2seq.engine import extension, python_options
from seq2seq.export import decoding_defaults
from .metrics import Metrics
from .service import (SERVICE_NAME, Limits, TranslationService, UNDECODABLE, check_defaults_fit, load_model,
                      never_raising, pb_grpc)

log = logging.getLogger("seq2seq.server")

# How long a stop waits, after the grace period, for grpcio to end the calls it cancelled.
STOP_MARGIN_S = 5.0


@dataclass
class ServerConfig:
    models: dict[str, str]  # name -> export directory
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    # One engine thread per batch and one batch per core: measured on 2 cores, two engine
    # threads per batch made a lone caller's latency 9 ms worse (docs/bench.md#the-server).
    threads: int = 1  # the engine's intra-op threads per batch (0: torch's default, every core)
    compute_type: str = "float32"
    device: str = "cpu"  # where the engines run: cpu, cuda or cuda:N
    workers: int = 0  # engine batches run at once (0: cores // threads, at least 1)
    max_batch: int = 64  # sentences per engine batch
    max_batch_tokens: int = 16384  # source tokens x beam per engine batch
    max_delay_ms: float = 3.0  # how long the first request of a batch waits for company
    max_queue: int = 4096  # sentences waiting; beyond: RESOURCE_EXHAUSTED
    max_queue_per_client: int = 0  # sentences one connection may have waiting; 0: half of max_queue
    max_message_bytes: int = 4 * 2**20
    rpc_threads: int = 128  # translation calls handled at once (health and reflection are not counted)
    stream_idle_s: float = 60.0  # a TranslateStream idle this long, nothing in flight, is ended; 0: never
    max_stream_pending: int = 32  # requests of one TranslateStream in flight at once
    # Requests that could cost more decoding steps wait behind cheaper ones and run on at most
    # all workers but one, as Evaluate's sentences do: a costly request cannot hold every worker.
    background_cost: int = 4096
    limits: Limits = field(default_factory=Limits)
    token: str = ""  # a bearer token every call must carry; empty: none
    tls_cert: str = ""
    tls_key: str = ""
    metrics_port: int | None = None  # Prometheus on 127.0.0.1:PORT; None: off
    data_dir: str = ""  # where Evaluate reads corpora (default: as the models were trained)
    grace_s: float = 10.0  # SIGTERM: how long in-flight calls may finish


def client_share(cfg: ServerConfig) -> int:
    """The sentences one client (a connection) may have queued: as set, or half the queue,
    so that one client sending as fast as it can still leaves room for the others."""
    return cfg.max_queue_per_client or max(1, (cfg.max_queue + 1) // 2)


def engine_workers(cfg: ServerConfig) -> int:
    """How many batches run at once: as set, or as many as fit the cores with cfg.threads
    each. More would oversubscribe the cores, and OpenMP threads that wait for each other
    then wait much longer."""
    if cfg.workers:
        return cfg.workers
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // (cfg.threads or cores))


def bearer_token(token: str = "", token_file: str = "") -> str:
    """The token every call must carry: --token, else --token-file's one line (one trailing
    newline stripped), else $SEQ2SEQ_TOKEN; empty: none. seq2seq-serve reads them alike."""
    if token and token_file:
        raise ValueError("give --token or --token-file, not both")
    if not token_file:
        return token or os.environ.get("SEQ2SEQ_TOKEN", "")
    try:
        text = Path(token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--token-file {token_file}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"--token-file {token_file}: the file is empty; write the token in it")
    if "\n" in text or "\r" in text:
        raise ValueError(f"--token-file {token_file}: holds more than one line; write the token alone on one line")
    return text


def check_tls(cert: str, key: str) -> tuple[bytes, bytes]:
    """The PEM certificate chain and key, checked as a pair before anything starts: given
    files it cannot use, grpc says only "Failed to bind to address"."""
    if not (cert and key):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    pems = {}
    for flag, path, label in (("--tls-cert", cert, "CERTIFICATE"), ("--tls-key", key, "PRIVATE KEY")):
        try:
            pems[flag] = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"{flag} {path}: cannot be read ({e.strerror or e})") from None
        if not re.search(rb"-----BEGIN [A-Z ]*" + label.encode() + b"-----", pems[flag]):
            raise ValueError(f"{flag} {path}: not a PEM {label.lower()} (no '-----BEGIN ...{label}-----' line)")
    if b"ENCRYPTED" in pems["--tls-key"]:
        raise ValueError(f"--tls-key {key}: the key is encrypted, which grpc cannot use; write it unencrypted "
                         f"(openssl pkey -in {key} -out KEY.pem)")

    def no_passphrase():  # else OpenSSL asks for one on the terminal
        raise ValueError(f"--tls-key {key}: the key needs a passphrase, which grpc cannot use")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"--tls-key {key} is not the key of the certificate in --tls-cert {cert}; give the key "
                             "the certificate was made with") from None
        raise ValueError(f"--tls-cert {cert}, --tls-key {key}: not a usable certificate and key ({e})") from None
    return pems["--tls-cert"], pems["--tls-key"]


# seq2seq-serve answers in the same words.
UNAUTHENTICATED = "a valid 'authorization: Bearer TOKEN' is required"
SEVERAL_AUTHORIZATIONS = "the call carries {} 'authorization' entries; send one: 'authorization: Bearer TOKEN'"


class BearerToken(grpc.ServerInterceptor):
    """Calls without the token are refused, with one 'authorization' entry or with several
    (the valid one among them or not), and so are calls to methods the server does not
    have: without the token a caller learns nothing, as from seq2seq-serve."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    # Health checks come from load balancers and orchestrators, which carry no token, and
    # reflection tells only what the proto file says; seq2seq-serve leaves both open too.
    OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def intercept_service(self, continuation, details):
        if details.method.startswith(self.OPEN):
            return continuation(details)
        given = [value for key, value in details.invocation_metadata if key == "authorization"]
        if len(given) == 1 and hmac.compare_digest(given[0].encode(), self.expected):
            return continuation(details)
        message = UNAUTHENTICATED if len(given) < 2 else SEVERAL_AUTHORIZATIONS.format(len(given))

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        handler = continuation(details)
        if handler is None or (handler.request_streaming and handler.response_streaming):
            return grpc.stream_stream_rpc_method_handler(lambda it, ctx: deny(None, ctx))
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(lambda it, ctx: deny(None, ctx))
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def with_behavior(handler, wrap):
    """The handler with its behaviour (whichever of the four kinds it has) replaced by wrap(behaviour)."""
    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    return handler._replace(**{kind: wrap(getattr(handler, kind))})


class CallsInFlight(grpc.ServerInterceptor):
    """Counts the calls whose handler has started and that grpcio has not ended (it runs a
    call's context callbacks when it ends it), for the stop's log line."""

    def __init__(self):
        self.count, self._lock = 0, threading.Lock()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        return None if handler is None else with_behavior(handler, self._counted)

    def _counted(self, behavior):
        def run(request, context):
            with self._lock:
                self.count += 1
            if not context.add_callback(self._ended):  # False: the call has ended already
                self._ended()
            return behavior(request, context)
        return run

    def _ended(self):
        with self._lock:
            self.count -= 1


# Threads beyond --rpc-threads for the calls that are never refused for capacity: health,
# reflection, and the refusals themselves.
RESERVED_THREADS = 8


class TranslationCallsAdmitted(grpc.ServerInterceptor):
    """At most ``limit`` TranslationService calls at once; beyond, RESOURCE_EXHAUSTED. grpcio's
    own bound (maximum_concurrent_rpcs) counts every call, so (as reported) 130 idle streams made it refuse
    health checks too; this one counts the service's calls only."""

    prefix = f"/{SERVICE_NAME}/"

    def __init__(self, limit: int):
        self.limit, self.count, self._lock = limit, 0, threading.Lock()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        return with_behavior(handler, self._admitted)

    def _admitted(self, behavior):
        def admitted(request, context):
            with self._lock:
                full = self.count >= self.limit
                if not full:
                    self.count += 1
            if full:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"the server is handling {self.limit} calls, its limit (--rpc-threads); retry shortly")
            if not context.add_callback(self._ended):  # False: the call has ended already
                self._ended()
            return behavior(request, context)
        return admitted

    def _ended(self):
        with self._lock:
            self.count -= 1


class RequestsDecodedByTheHandler(grpc.ServerInterceptor):
    """Every TranslationService message through a deserializer that never raises
    (service.never_raising). When grpcio's own deserializer raises, it answers INTERNAL, and
    its error path keeps memory: 10,000 undecodable requests took this server from 324 to 512 MB
    (benchmarks/undecodable_rss.py, before this interceptor). A unary request that cannot be decoded is answered INVALID_ARGUMENT
    here; TranslateStream answers its messages one by one (TranslationService.TranslateStream)."""

    prefix = f"/{SERVICE_NAME}/"

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        decode = never_raising(handler.request_deserializer)
        if handler.request_streaming:
            return handler._replace(request_deserializer=decode)
        message = decode.message_name

        def checked(behavior):
            def run(request, context):
                if request is UNDECODABLE:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request could not be decoded as "
                                  f"{article(message)}; send the message proto/seq2seq/v1/translation.proto defines for this "
                                  "method")
                return behavior(request, context)
            return run
        return with_behavior(handler._replace(request_deserializer=decode), checked)


def article(word: str) -> str:
    return f"{'an' if word[0] in 'AEIOU' else 'a'} {word}"


class Server:
    """A running server: ``port`` is the bound port; ``stop()`` shuts it down gracefully."""

    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        tls = check_tls(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert or cfg.tls_key else None
        self.metrics = Metrics(cfg.metrics_port)
        self.health = health.HealthServicer()
        self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        options = [("grpc.max_receive_message_length", cfg.max_message_bytes),
                   ("grpc.max_send_message_length", cfg.max_message_bytes), ("grpc.so_reuseport", 0)]
        self.calls = CallsInFlight()  # first: it counts the calls the token refuses too
        interceptors = [self.calls] + ([BearerToken(cfg.token)] if cfg.token else []) + \
            [TranslationCallsAdmitted(cfg.rpc_threads), RequestsDecodedByTheHandler()]
        for name, path in cfg.models.items():  # before anything listens
            check_defaults_fit(name, decoding_defaults(path), cfg.limits)
        self.grpc = grpc.server(ThreadPoolExecutor(cfg.rpc_threads + RESERVED_THREADS, thread_name_prefix="rpc"),
                                options=options, interceptors=interceptors)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        address = f"{cfg.host}:{cfg.port}"
        if tls:
            cert_pem, key_pem = tls
            self.port = self.grpc.add_secure_port(address, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (in use?)")
        self.models = {}
        self.service = TranslationService(self.models, cfg.limits, self.metrics, cfg.data_dir,
                                          cfg.max_message_bytes, cfg.stream_idle_s, cfg.max_stream_pending,
                                          cfg.background_cost)
        pb_grpc.add_TranslationServiceServicer_to_server(self.service, self.grpc)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        # Health answers NOT_SERVING while the models load.
        self.grpc.start()
        log.info(json.dumps({"event": "listening", "address": f"{cfg.host}:{self.port}",
                             "tls": bool(cfg.tls_cert), "token": bool(cfg.token)}))
        for name, path in cfg.models.items():
            model = load_model(name, path, cfg.threads, cfg.compute_type, cfg.device)
            # The engine lets go of abandoned sentences mid-search; the Python reference cannot.
            run = model.translator.native if model.backend == "cpp" else \
                (lambda ids, opts, abandoned, t=model.translator: t.decode_ids(ids, python_options(opts)))
            model.batcher = extension().Batcher(run, cfg.max_batch, cfg.max_batch_tokens, cfg.max_delay_ms / 1000,
                                                cfg.max_queue, engine_workers(cfg), self.metrics.on_batch(name),
                                                client_share(cfg))
            self.models[name] = model
            log.info(json.dumps({"event": "model_loaded", "model": name, "path": path, "backend": model.backend,
                                 "workers": engine_workers(cfg), "threads": cfg.threads}))
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._stopped = threading.Event()

    def stop(self, grace: float | None = None) -> bool:
        """NOT_SERVING, no new calls, in-flight calls finish within the grace period, then the
        rest are cancelled. Returns within grace + STOP_MARGIN_S whatever grpcio does: False
        when grpcio had not ended every call by then (the log line counts those abandoned)."""
        if self._stopped.is_set():
            return True
        self._stopped.set()
        grace = self.cfg.grace_s if grace is None else grace
        self.metrics.grace_ends = time.monotonic() + grace
        self.health.enter_graceful_shutdown()
        # grpcio cancels the calls left when its grace ends; given a longer one, the cancel at
        # the end of ours comes after the count of those calls, not racing it.
        ended = self.grpc.stop(grace + STOP_MARGIN_S)
        cancelled = abandoned = 0
        if not ended.wait(grace):
            cancelled = self.calls.count
            self.grpc.stop(0)  # a shorter grace cancels the calls left now
            # grpcio can leave its event unset for ever (1.85 does for a stream whose first
            # message its deserializer failed on while the caller holds the stream open), so
            # the stop has a deadline of its own.
            if not ended.wait(STOP_MARGIN_S):
                abandoned = self.calls.count
        # Abandoned calls' cancel callbacks never ran, so their sentences may still be queued,
        # and draining the queue would outlast the deadline.
        if ended.is_set():
            for model in self.models.values():
                model.batcher.close()
        self.metrics.close()
        log.log(logging.INFO if ended.is_set() else logging.WARNING,
                json.dumps({"event": "stopped", "grace_s": grace, "calls_cancelled": cancelled,
                            "calls_abandoned": abandoned, "every_call_ended": ended.is_set(),
                            "engine_batches": {name: m.batcher.stats for name, m in self.models.items()}}))
        return ended.is_set()

    def wait(self) -> None:
        self.grpc.wait_for_termination()


def serve(cfg: ServerConfig, ready=print) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully; returns the exit status."""
    # The handlers do nothing; the interpreter writes each signal's number to the wakeup
    # socket, which the main thread waits on. A handler that set an Event could run again,
    # on a second signal, inside the Event's own lock and hang the stop; further signals
    # during the stop only write another byte.
    wake, woken = socket.socketpair()
    woken.setblocking(False)
    signal.set_wakeup_fd(woken.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = Server(cfg)
    ready(f"serving {', '.join(server.models)} on {cfg.host}:{server.port}"
          + (f", metrics on 127.0.0.1:{server.metrics.port}" if cfg.metrics_port is not None else ""))
    wake.recv(1)
    if not server.stop():
        # Threads grpcio never let go of may hold handlers, and the interpreter's exit would
        # wait for its thread pool's threads: exit now, the log line written.
        logging.shutdown()
        os._exit(0)
    return 0
