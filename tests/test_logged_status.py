"""What the logs and metrics say is what the client got: each call's status in the server's
JSON log line on stderr (and, on the Python server, in its Prometheus metrics' status label)
is the status code the client observes, whether the server answered, refused a response too
large to send, was stopped by SIGTERM, or the client cancelled or ran out of time first. Both
servers (`seq2seq serve`, seq2seq-serve) listen on 127.0.0.1, on an ephemeral port; the C++
cases skip when build/cmake/seq2seq-serve is not built (make cpp)."""

import re
import threading
import time
from unittest import mock

import grpc
import pytest

from tests.exports import random_export, sentencepiece_tokenizer
from tests.servers import SERVERS, Running, servers_for_one_test

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")

from seq2seq.config import DecodingOptions  # noqa: E402
from seq2seq.server.app import Server, ServerConfig  # noqa: E402
from seq2seq.server.client import pb, pb_grpc  # noqa: E402
from seq2seq.server.service import load_model, response_bound  # noqa: E402

WORDS = ("ein Mann fährt mit dem Fahrrad eine Frau liest ein Buch zwei Hunde spielen im Schnee "
         "Kinder lachen auf der Straße ein Junge springt ins Wasser die Sonne scheint hell").split()
SENTENCES = [" ".join(WORDS[i:i + 3 + i % 5]) for i in range(len(WORDS) - 3)]
LONG = " ".join(WORDS[:11] * 5)  # about 200 tokens
# Seconds of decoding on two cores: long enough to be in flight when the client or a stop cuts it.
SLOW = pb.TranslateRequest(sentences=[LONG] * 64, options=pb.DecodingOptions(beam_size=8, max_length=512))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tok = sentencepiece_tokenizer(SENTENCES * 4, vocab_size=300)
    return random_export(tmp_path_factory.mktemp("logged"), "luong-general", tokenizer=tok)


@pytest.fixture(scope="module", params=SERVERS)
def running(request, export, tmp_path_factory):
    srv = Running(request.param, export, tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture
def start(export, tmp_path):
    yield from servers_for_one_test(export, tmp_path)


@pytest.fixture(scope="module")
def model(export):
    """The export as the Python server loads it, for the bound it computes."""
    return load_model("m", str(export))


# -- a response too large to send ----------------------------------------------------------------
@pytest.mark.parametrize("server", SERVERS)
def test_an_oversize_response_is_refused_before_decoding(start, model, server):
    srv = start(server, limit=100000)
    small = pb.TranslateRequest(request_id="small", sentences=SENTENCES[:1])
    assert srv.stub.Translate(small, timeout=120).translations  # the limit leaves room for ordinary calls
    srv.assert_logged(grpc.StatusCode.OK, request_id="small")
    # Megabytes of attention weights, were it decoded.
    big = pb.TranslateRequest(request_id="big", sentences=[LONG] * 16,
                              options=pb.DecodingOptions(beam_size=4, n_best=4, return_attention=True))
    with pytest.raises(grpc.RpcError) as e:
        srv.stub.Translate(big, timeout=120)
    bound = response_bound(model, "big", [model.translator.encode(s) for s in big.sentences],
                           DecodingOptions(beam_size=4, n_best=4, return_attention=True))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and bound > 10_000_000
    assert e.value.details() == (f"the response could reach {bound} bytes, over the server's limit of 100000 "
                                 "(--max-message-bytes); ask for fewer sentences, a smaller n_best or max_length, "
                                 "or no attention")
    srv.assert_logged(grpc.StatusCode.RESOURCE_EXHAUSTED, request_id="big")
    # The engine decoded the small call's sentence only.
    if server == "python":
        assert srv.metric('seq2seq_batch_sentences_sum{model="m"}') == 1
    stopped = [e for e in srv.stop() if e.get("event") == "stopped"]
    if server == "cpp":
        assert stopped[0]["engine_batches"]["m"]["sentences"] == 1


def test_a_response_found_too_large_after_decoding_is_logged_as_refused(export):
    # The bound makes this impossible; without it, the served size is checked before sending.
    srv = Server(ServerConfig(models={"m": str(export)}, port=0, max_message_bytes=1000))
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        stub = pb_grpc.TranslationServiceStub(channel)
        request = pb.TranslateRequest(sentences=SENTENCES[:4], options=pb.DecodingOptions(return_attention=True))
        with mock.patch("seq2seq.server.service.response_bound", return_value=0), pytest.raises(grpc.RpcError) as e:
            stub.Translate(request, timeout=120)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.fullmatch(r"the response is \d+ bytes, over the server's limit of 1000 \(--max-message-bytes\); .*",
                            e.value.details())
        assert srv.metrics.requests.labels("Translate", "RESOURCE_EXHAUSTED")._value.get() == 1
        assert srv.metrics.requests.labels("Translate", "OK")._value.get() == 0
    finally:
        channel.close()
        srv.stop(grace=1)


def test_an_evaluate_result_too_large_to_send_is_refused(export):
    srv = Server(ServerConfig(models={"m": str(export)}, port=0, max_message_bytes=2000))
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    try:
        stub = pb_grpc.TranslationServiceStub(channel)
        request = pb.EvaluateRequest(sources=SENTENCES[:20], references=SENTENCES[1:21], return_texts=True)
        assert request.ByteSize() < 2000  # the request fits; the result with its texts does not
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Evaluate(request, timeout=120))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert re.fullmatch(r"the result is \d+ bytes, over the server's limit of 2000 \(--max-message-bytes\); .*",
                            e.value.details())
        assert srv.metrics.requests.labels("Evaluate", "RESOURCE_EXHAUSTED")._value.get() == 1
    finally:
        channel.close()
        srv.stop(grace=1)


def test_the_bound_holds_the_responses(running, model):
    for i, (n_best, attention) in enumerate([(1, False), (3, False), (1, True), (4, True)]):
        opts = DecodingOptions(beam_size=4, n_best=n_best, return_attention=attention)
        request = pb.TranslateRequest(request_id=f"bound{i}", sentences=SENTENCES[i:i + 8], options=pb.DecodingOptions(
            beam_size=4, n_best=n_best, return_scores=True, return_attention=attention))
        reply = running.stub.Translate(request, timeout=120)
        ids = [model.translator.encode(s) for s in request.sentences]
        assert 0 < reply.ByteSize() <= response_bound(model, request.request_id, ids, opts)
        running.assert_logged(grpc.StatusCode.OK, request_id=request.request_id)


# -- calls the client or a stop cut short --------------------------------------------------------
def test_a_call_the_client_cancels(running):
    call = running.stub.Translate.future(pb.TranslateRequest(request_id="cancelled", sentences=SLOW.sentences,
                                                             options=SLOW.options), timeout=120)
    time.sleep(0.3)  # decoding by now
    call.cancel()
    assert call.code() == grpc.StatusCode.CANCELLED
    running.assert_logged(grpc.StatusCode.CANCELLED, request_id="cancelled")


def test_a_stream_the_client_cancels(running):
    release = threading.Event()

    def requests():
        yield pb.TranslateRequest(sentences=SLOW.sentences, options=SLOW.options)
        release.wait(120)

    stream = running.stub.TranslateStream(requests(), timeout=120)
    time.sleep(0.3)
    stream.cancel()
    release.set()
    assert stream.code() == grpc.StatusCode.CANCELLED
    running.assert_logged(grpc.StatusCode.CANCELLED, method="TranslateStream")


def test_a_deadline_that_passes_while_decoding(running):
    call = running.stub.Translate.future(pb.TranslateRequest(request_id="late", sentences=SLOW.sentences,
                                                             options=SLOW.options), timeout=1.0)
    assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    running.assert_logged(grpc.StatusCode.DEADLINE_EXCEEDED, request_id="late")


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("grace,code", [("60", grpc.StatusCode.OK), ("0.2", grpc.StatusCode.UNAVAILABLE)],
                         ids=["within-grace", "after-grace"])
def test_a_call_in_flight_at_sigterm(start, server, grace, code):
    # Within the grace period the call is answered; after it gRPC cancels the call, and the
    # client gets UNAVAILABLE ("Cancelling all calls") from both servers.
    srv = start(server, "--grace", grace)
    call = srv.stub.Translate.future(pb.TranslateRequest(request_id="cut", sentences=SLOW.sentences,
                                                         options=SLOW.options), timeout=120)
    time.sleep(0.3)  # decoding by now
    srv.terminate()
    assert call.code() == code
    lines = srv.stop()
    assert [e["status"] for e in lines if e.get("request_id") == "cut"] == [code.name]
