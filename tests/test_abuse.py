"""The service under abuse, against both servers (`seq2seq serve` and seq2seq-serve, one
parametrized suite): a request that could cost too much is refused before it is queued, the
sentences of a caller that has gone leave the engine's running search, and requests that
cannot be decoded are refused without costing the server memory. Each case was reproduced
against the servers before it was fixed (docs/server.md, "Limits")."""

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.exports import random_export, sentencepiece_tokenizer
from tests.servers import SERVERS, servers_for_one_test

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")

from seq2seq.config import DecodingOptions  # noqa: E402
from seq2seq.server.client import pb  # noqa: E402
from seq2seq.server.service import load_model, request_cost  # noqa: E402

WORDS = ("ein Mann fährt mit dem Fahrrad eine Frau liest ein Buch zwei Hunde spielen im Schnee "
         "Kinder lachen auf der Straße ein Junge springt ins Wasser die Sonne scheint hell").split()
LONG = " ".join(WORDS[:11] * 5)  # about 200 tokens
# The reported abuse: 8 long sentences at beam 32 held an engine worker for 25 s.
ABUSIVE = pb.TranslateRequest(sentences=[LONG] * 8, options=pb.DecodingOptions(beam_size=32, max_length=512))
# Seconds of decoding on two cores (over the default cost limit: the servers here allow it).
SLOW = pb.TranslateRequest(sentences=[LONG] * 64, options=pb.DecodingOptions(beam_size=8, max_length=512))
RE = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tok = sentencepiece_tokenizer([" ".join(WORDS[i:i + 3 + i % 5]) for i in range(len(WORDS) - 3)] * 4,
                                  vocab_size=300)
    return random_export(tmp_path_factory.mktemp("abuse"), "luong-general", tokenizer=tok)


@pytest.fixture
def start(export, tmp_path):
    yield from servers_for_one_test(export, tmp_path)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.parametrize("server", SERVERS)
def test_a_request_that_could_cost_too_much_is_refused_before_it_is_queued(start, export, server):
    srv = start(server, cost=None)  # the default limit, 65536
    n = len(load_model("m", str(export)).translator.encode(LONG))
    longest = min(512, 2 * n + 10)  # max_length against the default 2 x source + 10
    cost = 8 * 32 * longest
    assert cost == request_cost([[5] * n] * 8, DecodingOptions(beam_size=32, max_length=512)) > 65536
    with pytest.raises(grpc.RpcError) as e:
        srv.stub.Translate(ABUSIVE, timeout=60)
    assert e.value.code() == RE
    assert e.value.details() == (
        f"the request could cost {cost} decoding steps (8 sentences x beam 32 x up to 512 output tokens each, fewer "
        "for short sources), over the server's limit of 65536 (--max-request-cost); send fewer or shorter sentences, "
        "or a smaller beam_size or max_length")
    srv.assert_logged(RE)
    # One sentence of it at beam 4 is within the limit, and the server answers it.
    small = pb.TranslateRequest(sentences=[LONG], options=pb.DecodingOptions(beam_size=4, max_length=40))
    assert len(srv.stub.Translate(small, timeout=300).translations) == 1
    # A stream's request is refused alike, and ends the stream with that status.
    with pytest.raises(grpc.RpcError) as e:
        list(srv.stub.TranslateStream(iter([ABUSIVE]), timeout=60))
    assert e.value.code() == RE and "--max-request-cost" in e.value.details()


@pytest.mark.parametrize("server", SERVERS)
def test_sentences_whose_caller_has_gone_leave_the_running_search(start, server):
    srv = start(server, "--workers", "1")
    with pytest.raises(grpc.RpcError) as e:
        srv.stub.Translate(SLOW, timeout=1.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    cancelled = srv.stub.Translate.future(SLOW, timeout=300)
    srv.logged("Translate")  # the first call has ended; the second is queued or running
    cancelled.cancel()
    lines = srv.stop()
    # The stop's log line counts the sentences the engine's search let go of: SLOW's 64
    # sentences take seconds, and neither call's could have ended within it.
    stopped = next(e for e in lines if e.get("event") == "stopped")
    batches = stopped["engine_batches"]["m"]
    assert batches["abandoned"] > 0, stopped


@pytest.mark.parametrize("server", SERVERS)
def test_undecodable_requests_are_refused_and_cost_no_memory(start, server):
    srv = start(server)
    call = srv.channel.unary_unary("/seq2seq.v1.TranslationService/Translate")

    def garbage(n: int) -> grpc.RpcError:
        for _ in range(n):
            with pytest.raises(grpc.RpcError) as e:
                call(b"\xff\xff\xff\xff", timeout=30)
        return e.value

    garbage(300)  # the server's own first allocations
    before = rss_mb(srv.proc.pid)
    error = garbage(3000)
    grown = rss_mb(srv.proc.pid) - before
    # grpcio's deserializer error path kept about 19 KB a request (57 MB here).
    assert grown < 10, f"{server}: {grown:.1f} MB more after 3000 undecodable requests"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{server}: {error.code()} {error.details()}"
    assert "could not be decoded as a TranslateRequest" in error.details()
    for method, message in [("ListModels", "ListModelsRequest"), ("GetModel", "GetModelRequest")]:
        with pytest.raises(grpc.RpcError) as e:
            srv.channel.unary_unary(f"/seq2seq.v1.TranslationService/{method}")(b"\xff\xff\xff\xff", timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{server} {method}: {e.value.details()}"
        assert f"could not be decoded as a {message}" in e.value.details()
    events = srv.channel.unary_stream("/seq2seq.v1.TranslationService/Evaluate")(b"\xff\xff\xff\xff", timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        list(events)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{server} Evaluate: {e.value.details()}"
    assert "could not be decoded as an EvaluateRequest" in e.value.details()
    # The server still answers.
    assert srv.stub.Translate(pb.TranslateRequest(sentences=[" ".join(WORDS[:4])]), timeout=60).translations


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads"))


def held_open(release: threading.Event):
    """A stream's requests that never come: the iterator waits until released."""
    release.wait(300)
    return
    yield


@pytest.mark.parametrize("server", SERVERS)
def test_idle_streams_are_ended_and_never_take_health_away(start, server):
    srv = start(server, "--rpc-threads", "4", "--stream-idle-s", "3")
    release = threading.Event()
    streams = [srv.stub.TranslateStream(held_open(release), timeout=300) for _ in range(6)]
    try:
        # More idle streams than --rpc-threads: health still answers.
        health = health_pb2_grpc.HealthStub(srv.channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
        codes = []
        for stream in streams:
            with pytest.raises(grpc.RpcError) as e:
                next(stream)
            codes.append(e.value.code())
    finally:
        release.set()
    # Each was either refused for capacity at once or ended by the server once idle.
    assert set(codes) <= {grpc.StatusCode.CANCELLED, RE} and grpc.StatusCode.CANCELLED in codes, codes
    lines = [e for e in srv.lines() if e.get("method") == "TranslateStream"]
    assert any(e["status"] == "CANCELLED" for e in lines), lines
    # The server answers again.
    assert srv.stub.Translate(pb.TranslateRequest(sentences=[" ".join(WORDS[:4])]), timeout=60).translations


@pytest.mark.parametrize("server", SERVERS)
def test_a_long_stream_holds_a_bounded_number_of_requests_in_flight(start, server):
    srv = start(server, "--max-stream-pending", "2")
    base = threads(srv.proc.pid)
    requests = [pb.TranslateRequest(request_id=str(i), sentences=[" ".join(WORDS[i % 20:i % 20 + 4])],
                                    options=pb.DecodingOptions(beam_size=1, max_length=8)) for i in range(300)]
    seen, most = [], base
    for response in srv.stub.TranslateStream(iter(requests), timeout=600):
        seen.append(response.request_id)
        most = max(most, threads(srv.proc.pid))
    assert sorted(seen, key=int) == [str(i) for i in range(300)]  # every one answered
    # A thread per request in flight at most: without the bound the Python server had grown
    # to one per request (2,049 threads for a stream of 5,000).
    assert most <= base + 8, (base, most)


@pytest.mark.parametrize("server", SERVERS)
def test_one_client_holds_at_most_its_share_of_the_queue(start, server):
    srv = start(server, "--workers", "1", "--max-queue", "64", "--max-queue-per-client", "16")
    busy = pb.TranslateRequest(sentences=[LONG] * 16, options=pb.DecodingOptions(beam_size=8, max_length=512))
    running = srv.other_client().Translate.future(busy, timeout=300)  # the only worker decodes it for seconds
    threading.Event().wait(0.5)  # it reaches the worker before the client below sends anything
    greedy, short = pb.DecodingOptions(beam_size=1), " ".join(WORDS[:4])
    ten = pb.TranslateRequest(sentences=[short] * 10, options=greedy)
    a, b = srv.other_client(), srv.other_client()
    # Two requests of 10 from one client, at once: whichever comes second passes its share.
    calls = [a.Translate.future(ten, timeout=300) for _ in range(2)]
    refused = [c.exception() for c in calls if c.exception() is not None]
    assert len(refused) == 1, [c.exception() for c in calls]
    assert refused[0].code() == RE
    assert refused[0].details() == ("this client has 10 sentences queued; 10 more would pass the 16 one client "
                                    "may hold of the queue's 64")
    # Another client finds room in the same queue.
    assert len(b.Translate(pb.TranslateRequest(sentences=[short] * 16, options=greedy), timeout=300).translations) == 16
    assert len(running.result().translations) == 16


@pytest.mark.parametrize("server", SERVERS)
def test_costly_requests_leave_a_worker_to_cheap_ones(start, server):
    srv = start(server, "--workers", "2", "--background-cost", "4096")
    costly = [srv.other_client().Translate.future(SLOW, timeout=300) for _ in range(2)]
    threading.Event().wait(0.5)  # the costly requests reach the workers
    cheap = pb.TranslateRequest(sentences=[" ".join(WORDS[:4])], options=pb.DecodingOptions(beam_size=2))
    for _ in range(3):
        assert len(srv.stub.Translate(cheap, timeout=60).translations) == 1
    # Both costly requests (seconds each) could have held both workers, and the cheap ones
    # waited for one of them to end; one worker stayed free of them.
    assert not any(f.done() for f in costly), "a costly request ended before the cheap ones"
    assert all(len(f.result().translations) == 64 for f in costly)
