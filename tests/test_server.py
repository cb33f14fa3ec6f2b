"""The gRPC service against a real server on 127.0.0.1 (an ephemeral port): every RPC,
answers equal to direct engine calls, batching, health, reflection, limits, deadlines,
cancellation, the bearer token, TLS, SIGTERM and round robin over two processes."""

import json
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import sacrebleu

from seq2seq.config import DecodingOptions
from tests.grpc_checks import assert_serving_and_reflected, self_signed_certificate
from tests.exports import random_export, sentencepiece_tokenizer

pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")

from seq2seq.engine import Engine  # noqa: E402
from seq2seq.server.app import Server, ServerConfig  # noqa: E402
from seq2seq.server.client import Client, pb  # noqa: E402
from seq2seq.server.loadtest import start_server  # noqa: E402
from seq2seq.server.service import Limits  # noqa: E402

SENTENCES = [" ".join(f"w{4 + (i * 7 + j * 3) % 40}" for j in range(1 + i % 9)) for i in range(64)]
CPP_SERVER = Path(__file__).resolve().parents[1] / "build" / "cmake" / "seq2seq-serve"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return {"bahdanau": random_export(root / "a", "bahdanau-gru-bi"), "luong": random_export(root / "b", "luong-general")}


@pytest.fixture(scope="module")
def server(exports):
    srv = Server(ServerConfig(models={k: str(v) for k, v in exports.items()}, port=0, metrics_port=0,
                              max_delay_ms=5, limits=Limits(max_sentences=256, max_chars=2000)))
    yield srv
    srv.stop(grace=1)


@pytest.fixture
def client(server):
    c = Client(f"127.0.0.1:{server.port}")
    yield c
    c.close()


def expected(export, sentences, **opts):
    return [t for t in Engine(export).translate(sentences, DecodingOptions(**opts))]


def texts(reply):
    return [t.hypotheses[0].text for t in reply.translations]


def test_translate_equals_the_engine(server, client, exports):
    reply = client.translate(SENTENCES[:7], model="bahdanau", request_id="r-1", beam_size=3, n_best=2,
                             return_scores=True)
    assert reply.request_id == "r-1" and reply.model == "bahdanau"
    want = expected(exports["bahdanau"], SENTENCES[:7], beam_size=3, n_best=2)
    for got, ref in zip(reply.translations, want):
        assert [h.text for h in got.hypotheses] == [h.text for h in ref]
        assert [h.score for h in got.hypotheses] == pytest.approx([h.score for h in ref], abs=1e-5)


def test_attention_comes_back_on_request(client, exports):
    reply = client.translate(["w5 w6 w7"], model="luong", beam_size=1, return_attention=True)
    att = reply.translations[0].hypotheses[0].attention
    ref = expected(exports["luong"], ["w5 w6 w7"], beam_size=1, return_attention=True)[0][0].attention
    assert (att.rows, att.columns) == tuple(ref.shape)
    assert list(att.weights) == pytest.approx(ref.flatten().tolist(), abs=1e-6)


def test_models_are_listed_and_described(client):
    names = sorted(m.name for m in client.models())
    assert names == ["bahdanau", "luong"]
    info = client.stub.GetModel(pb.GetModelRequest(name="luong"))
    assert info.family == "attention" and info.backend == "cpp" and info.compute_type == "float32"
    with pytest.raises(grpc.RpcError) as e:
        client.stub.GetModel(pb.GetModelRequest(name="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_answers_every_request(client, exports):
    requests = [pb.TranslateRequest(request_id=str(i), model="bahdanau", sentences=SENTENCES[i:i + 3])
                for i in range(0, 30, 3)]
    replies = {r.request_id: texts(r) for r in client.stub.TranslateStream(iter(requests))}
    assert set(replies) == {r.request_id for r in requests}
    for r in requests:
        assert replies[r.request_id] == [t[0].text for t in expected(exports["bahdanau"], list(r.sentences))]


def test_evaluate_streams_progress_then_sacrebleu_scores(client, exports):
    refs = ["w5 w6 w7"] * 70 + ["w9 w10"] * 30
    events = list(client.evaluate(model="bahdanau", backend="both", sources=SENTENCES + SENTENCES[:36],
                                  references=refs))
    progress = [e.progress for e in events if e.HasField("progress")]
    assert progress[-1].done == progress[-1].total == 100 and {p.backend for p in progress} == {"cpp", "python"}
    result = events[-1].result
    hyps = [t[0].text for t in expected(exports["bahdanau"], SENTENCES + SENTENCES[:36])]
    assert result.sentences == 100 and result.identical == 100 and result.first_difference == -1
    for b in result.results:
        assert b.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
        assert b.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)


def test_concurrent_clients_get_what_each_would_get_alone(server, client, exports):
    want = [t[0].text for t in expected(exports["bahdanau"], SENTENCES)]
    before = server.metrics.batch_sentences.labels("bahdanau")._sum.get()
    batches_before = sum(b.get() for b in server.metrics.batch_sentences.labels("bahdanau")._buckets)
    got, errors = {}, []
    together = threading.Barrier(64)  # all calls at once: a lone caller is dispatched without waiting

    def call(i):
        together.wait()
        try:
            got[i] = texts(client.translate([SENTENCES[i]], model="bahdanau"))[0]
        except grpc.RpcError as e:
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and [got[i] for i in range(64)] == want
    sentences = server.metrics.batch_sentences.labels("bahdanau")._sum.get() - before
    batches = sum(b.get() for b in server.metrics.batch_sentences.labels("bahdanau")._buckets) - batches_before
    assert sentences == 64 and batches < 64  # some requests shared a batch


@pytest.mark.parametrize("request_kw,code,words", [
    (dict(sentences=[]), "INVALID_ARGUMENT", "no sentences"),
    (dict(sentences=["w5", ""]), "INVALID_ARGUMENT", "sentences[1] is empty"),
    (dict(sentences=["w5 " * 33334]), "INVALID_ARGUMENT", "characters"),
    (dict(sentences=["w5"] * 10000), "INVALID_ARGUMENT", "10000 sentences"),
    (dict(sentences=["w5"], model="nope"), "NOT_FOUND", "nope"),
    (dict(sentences=["w5"], options=pb.DecodingOptions(beam_size=0)), "INVALID_ARGUMENT", "beam_size"),
    (dict(sentences=["w5"], options=pb.DecodingOptions(beam_size=10000)), "INVALID_ARGUMENT", "beam_size"),
    (dict(sentences=["w5"], options=pb.DecodingOptions(max_length=-3)), "INVALID_ARGUMENT", "max_length"),
    (dict(sentences=["w5"], options=pb.DecodingOptions(length_penalty="wu")), "INVALID_ARGUMENT", "length_penalty"),
    (dict(sentences=["w5"], options=pb.DecodingOptions(beam_size=2, n_best=3)), "INVALID_ARGUMENT", "n_best"),
], ids=["empty", "empty-sentence", "100k-chars", "10k-sentences", "unknown-model", "beam-0", "beam-10000",
        "negative-max-length", "bad-penalty", "n-best-over-beam"])
def test_bad_requests_get_their_status_and_the_server_goes_on(client, request_kw, code, words):
    request_kw.setdefault("model", "bahdanau")
    with pytest.raises(grpc.RpcError) as e:
        client.stub.Translate(pb.TranslateRequest(**request_kw))
    assert e.value.code().name == code and words in e.value.details()
    assert texts(client.translate(["w5 w6"], model="bahdanau"))  # still serving


def evaluate_error(client, **job) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        list(client.evaluate(model="bahdanau", **job))
    assert texts(client.translate(["w5 w6"], model="bahdanau"))  # still serving
    return e.value


def test_evaluate_limits_its_sources_as_translate_limits_sentences(client):
    sources = ["w5 w6", "w5 " * 300]  # 300 tokens: over the 256 a sentence may have
    with pytest.raises(grpc.RpcError) as translated:
        client.stub.Translate(pb.TranslateRequest(model="bahdanau", sentences=sources))
    e = evaluate_error(client, sources=sources, references=["a", "b"])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details() == "sources[1] has 300 tokens; the limit is 256"
    assert translated.value.details() == e.details().replace("sources", "sentences")


def test_evaluate_refuses_an_empty_source(client):
    e = evaluate_error(client, sources=["w5 w6", "w7", " "], references=["a", "b", "c"])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and e.details() == "sources[2] is empty"


@pytest.mark.parametrize("shard,shards,words", [(7, 1, "shard 7 with shards 1: shard must be within 0..0"),
                                                (3, 3, "shard 3 with shards 3: shard must be within 0..2"),
                                                (2, 0, "shard 2 given without shards (0)")],
                         ids=["7-of-1", "3-of-3", "2-without-shards"])
def test_evaluate_refuses_a_shard_beyond_the_shards(client, shard, shards, words):
    e = evaluate_error(client, sources=SENTENCES[:4], references=["a"] * 4, shard=shard, shards=shards)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.details()


def test_a_model_name_is_needed_when_there_are_several(client):
    with pytest.raises(grpc.RpcError) as e:
        client.translate(["w5"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "bahdanau" in e.value.details()


def test_health_and_reflection(server):
    assert_serving_and_reflected(server.port)


def test_expired_deadline_and_cancelled_stream(server, client):
    with pytest.raises(grpc.RpcError) as e:
        client.stub.Translate(pb.TranslateRequest(model="bahdanau", sentences=SENTENCES), timeout=0.0005)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def endless():
        i = 0
        while True:
            i += 1
            yield pb.TranslateRequest(request_id=str(i), model="bahdanau", sentences=SENTENCES[:8])
            time.sleep(0.01)

    stream = client.stub.TranslateStream(endless())
    next(stream)
    stream.cancel()
    with pytest.raises(grpc.RpcError) as e:
        list(stream)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    deadline = time.time() + 10
    while server.models["bahdanau"].batcher.queued and time.time() < deadline:
        time.sleep(0.01)
    assert server.models["bahdanau"].batcher.queued == 0
    assert texts(client.translate(["w5 w6"], model="bahdanau"))


def test_a_full_queue_is_resource_exhausted(exports):
    srv = Server(ServerConfig(models={"m": str(exports["bahdanau"])}, port=0, max_queue=3, max_queue_per_client=3))
    try:
        c = Client(f"127.0.0.1:{srv.port}")
        with pytest.raises(grpc.RpcError) as e:
            c.translate(SENTENCES[:4])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 3" in e.value.details()
        assert texts(c.translate(SENTENCES[:3]))
        c.close()
    finally:
        srv.stop(grace=1)


def test_bearer_token(exports):
    srv = Server(ServerConfig(models={"m": str(exports["luong"])}, port=0, token="s3cret"))
    try:
        for token in ("", "wrong"):
            c = Client(f"127.0.0.1:{srv.port}", token=token)
            with pytest.raises(grpc.RpcError) as e:
                c.translate(["w5"])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            c.close()
        c = Client(f"127.0.0.1:{srv.port}", token="s3cret")
        assert texts(c.translate(["w5"]))
        c.close()
    finally:
        srv.stop(grace=1)


def test_tls_with_a_certificate_made_here(exports, tmp_path):
    key, cert = self_signed_certificate(tmp_path)
    srv = Server(ServerConfig(models={"m": str(exports["luong"])}, port=0, tls_cert=str(cert), tls_key=str(key)))
    try:
        c = Client(f"localhost:{srv.port}", tls_ca=str(cert))
        assert texts(c.translate(["w5 w6"])) == [t[0].text for t in expected(exports["luong"], ["w5 w6"])]
        c.close()
        plain = Client(f"127.0.0.1:{srv.port}", timeout=5)
        with pytest.raises(grpc.RpcError):
            plain.translate(["w5"])
        plain.close()
    finally:
        srv.stop(grace=1)


def test_metrics_are_served(server, client):
    client.translate(["w5"], model="luong")
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics.port}/metrics", timeout=5).read().decode()
    assert re.search(r'seq2seq_requests_total\{method="Translate",status="OK"\} [1-9]', text)
    assert "seq2seq_batch_sentences_bucket" in text and "seq2seq_request_seconds_bucket" in text


def start_process(export, *extra, **kw):
    return start_server(str(export), "--metrics-port", "0", *extra, **kw)


def test_sigterm_during_load_loses_no_accepted_request(exports, tmp_path):
    log = open(tmp_path / "server.log", "w")
    proc, port, _ = start_process(exports["bahdanau"], "--grace", "20", stderr=log)
    want = [t[0].text for t in expected(exports["bahdanau"], SENTENCES[:16])]
    outcomes, stop = [], threading.Event()

    def load():
        c = Client(f"127.0.0.1:{port}", timeout=30)
        while not stop.is_set():
            try:
                outcomes.append(texts(c.translate(SENTENCES[:16])) == want)
            except grpc.RpcError as e:
                outcomes.append(e.code())
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    break
        c.close()

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    stop.set()
    for t in threads:
        t.join()
    log.close()
    # Every call the server took up (one JSON log line each) was answered, and correctly;
    # calls it never took up were refused: UNAVAILABLE, or CANCELLED for one that reached
    # the server as it stopped but before any handler had it.
    taken = [json.loads(line) for line in open(tmp_path / "server.log") if '"method": "Translate"' in line]
    answered = [o for o in outcomes if o is True]
    refused = [o for o in outcomes if o is not True]
    assert answered and all(t["status"] == "OK" for t in taken) and len(taken) == len(answered)
    assert all(o in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for o in refused), refused


@pytest.mark.parametrize("binary", [
    pytest.param("", id="python"),
    pytest.param(str(CPP_SERVER), id="cpp",
                 marks=pytest.mark.skipif(not CPP_SERVER.exists(), reason="seq2seq-serve is not built (make cpp)"))])
def test_a_stop_ends_within_the_grace_period_whatever_streams_stay_open(tmp_path, binary):
    # A SentencePiece export, which both servers serve.
    export = random_export(tmp_path / "sp", "luong-general", tokenizer=sentencepiece_tokenizer(SENTENCES, 300))
    log = open(tmp_path / "server.log", "w")
    proc, port, _ = start_server(str(export), "--grace", "2", stderr=log, binary=binary)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    released = threading.Event()
    try:
        stream = channel.stream_stream("/seq2seq.v1.TranslationService/TranslateStream",
                                       request_serializer=lambda b: b,
                                       response_deserializer=pb.TranslateResponse.FromString)

        def held_open(*first):  # these messages, then the request stream stays open until released
            yield from first
            released.wait(60)

        good = pb.TranslateRequest(model="m", sentences=[SENTENCES[3]]).SerializeToString()
        idle = [stream(held_open(), timeout=60) for _ in range(10)]  # they never send
        undecodable = [stream(held_open(b"\xff\xff\xff"), timeout=60) for _ in range(10)]
        answered = [stream(held_open(good), timeout=60) for _ in range(10)]  # then nothing more
        for call in undecodable:
            with pytest.raises(grpc.RpcError) as e:
                next(call)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for call in answered:
            assert next(call).translations
        assert not any(call.done() for call in idle + answered)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(2 + 15) == 0  # it ends at all: the grace, then a margin for abandoning calls
        assert time.monotonic() - started < 2 + 15
    finally:
        released.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        channel.close()
        log.close()
    # The last line says what the stop cut short (the C++ server's counts no cancelled calls).
    logged = [json.loads(line) for line in open(tmp_path / "server.log") if line.startswith("{")]
    stopped = [e for e in logged if e.get("event") == "stopped"]
    assert len(stopped) == 1 and isinstance(stopped[0]["calls_abandoned"], int)
    if not binary:  # the calls still open when the grace ended: at least the ten answered streams
        assert stopped[0]["calls_cancelled"] >= 10


@pytest.mark.parametrize("binary", [
    pytest.param("", id="python"),
    pytest.param(str(CPP_SERVER), id="cpp",
                 marks=pytest.mark.skipif(not CPP_SERVER.exists(), reason="seq2seq-serve is not built (make cpp)"))])
def test_signals_in_a_burst_stop_the_server_once(tmp_path, binary):
    # An operator's Ctrl-C then SIGTERM, or a supervisor repeating its signal, while the stop runs.
    export = random_export(tmp_path / "sp", "luong-general", tokenizer=sentencepiece_tokenizer(SENTENCES, 300))
    log = open(tmp_path / "server.log", "w")
    proc, port, _ = start_server(str(export), "--grace", "1", stderr=log, binary=binary)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            proc.send_signal(sig)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    logged = [json.loads(line) for line in open(tmp_path / "server.log") if line.startswith("{")]
    assert len([e for e in logged if e.get("event") == "stopped"]) == 1


def test_round_robin_over_two_processes(exports):
    procs = [start_process(exports["luong"]) for _ in range(2)]
    try:
        c = Client(",".join(f"127.0.0.1:{port}" for _, port, _ in procs))

        def served(metrics_port):
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            found = re.search(r'seq2seq_requests_total\{method="Translate",status="OK"\} (\S+)', text)
            return float(found.group(1)) if found else 0.0

        # Round robin uses the servers whose connections are up: rounds of 20 calls, at most 5.
        for _ in range(5):
            for _ in range(20):
                assert texts(c.translate(["w5 w6"]))
            if all(served(m) >= 5 for _, _, m in procs):
                break
        c.close()
        assert all(served(m) >= 5 for _, _, m in procs)  # both took a share
    finally:
        for proc, _, _ in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def test_client_command(server, exports, capsys):
    from seq2seq.cli import main

    target = f"127.0.0.1:{server.port}"
    assert main(["client", "translate", "--target", target, "--model", "bahdanau", "--beam-size", "3",
                 "w5 w6", "w7 w8 w9"]) == 0
    want = [t[0].text for t in expected(exports["bahdanau"], ["w5 w6", "w7 w8 w9"], beam_size=3)]
    assert capsys.readouterr().out.split("\n")[:2] == want
    assert main(["client", "models", "--target", target]) == 0
    assert "luong: attention" in capsys.readouterr().out
    assert main(["client", "translate", "--target", target, "--model", "nope", "w5"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_an_evaluate_job_spread_over_two_servers_scores_the_whole_corpus(server, exports):
    second = Server(ServerConfig(models={k: str(v) for k, v in exports.items()}, port=0))
    try:
        sources, refs = SENTENCES[:50], ["w5 w6 w7"] * 25 + ["w9 w10"] * 25
        spread = Client(f"127.0.0.1:{server.port},127.0.0.1:{second.port}")
        # Round robin uses the servers whose connections are up; cheap calls until both are.
        listed = lambda: [s.metrics.requests.labels("ListModels", "OK")._value.get() for s in (server, second)]
        start = listed()
        for _ in range(200):
            spread.models()
            if all(a > b for a, b in zip(listed(), start)):
                break
        before = [s.metrics.requests.labels("Evaluate", "OK")._value.get() for s in (server, second)]
        merged = spread.evaluate_spread(4, model="bahdanau", backend="both", sources=sources, references=refs)
        after = [s.metrics.requests.labels("Evaluate", "OK")._value.get() for s in (server, second)]
        assert all(a > b for a, b in zip(after, before))  # both servers took shards
        hyps = [t[0].text for t in expected(exports["bahdanau"], sources)]
        assert merged["sentences"] == 50 and merged["identical"] == 50
        for r in merged["results"]:
            assert r["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
        # More shards than sentences: the empty ones add nothing.
        few = spread.evaluate_spread(5, model="bahdanau", sources=sources[:3], references=refs[:3])
        assert few["sentences"] == 3
        spread.close()
    finally:
        second.stop(grace=1)


def bench_server(exports, tmp_path, sentences: int, *args: str) -> int:
    """`seq2seq bench-server` on the bahdanau export, the first ``sentences`` of SENTENCES as
    its input, its JSON written to tmp_path/bench.json."""
    from seq2seq.cli import main

    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES[:sentences]) + "\n")
    return main(["bench-server", "--model", str(exports["bahdanau"]), "--input", str(source), *args,
                 "--out", str(tmp_path / "bench.json")])


def test_bench_server_prints_its_table_and_the_one_client_overhead(exports, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_server(exports, tmp_path, 20, "--clients", "1,4", "--max-batch", "8,1", "--seconds", "2",
                        "--max-requests", "40", "--overhead-sentences", "10", "--beam-size", "2") == 0
    printed = capsys.readouterr().out
    assert printed.count("\n| 8 |") == 2 and printed.count("\n| 1 |") == 2
    assert "4 clients: max batch 8 gives" in printed and "one client, 10 sentences alternating" in printed
    result = json.loads(out.read_text())
    assert [(r["max_batch"], r["clients"]) for r in result["rows"]] == [(8, 1), (8, 4), (1, 1), (1, 4)]
    for r in result["rows"]:
        assert r["errors"] == {} and 0 < r["requests"] <= 40
        assert 1 <= r["mean_batch"] <= (r["max_batch"] if r["clients"] > 1 else 1)
        assert len(r["server_mib"]) >= 2 and r["server_mib_peak"] >= max(r["server_mib_start"], r["server_mib_end"]) > 0
    one = result["one_client"]
    assert one["sentences"] == 10 and one["served_p50_ms"] > 0 and one["direct_p50_ms"] > 0
    # The server's own handler time (from its metrics) lies inside the client's round trip.
    assert 0 < one["handler_mean_ms"] < one["served_mean_ms"] and "where it goes (means)" in printed
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_batching_gains_are_taken_within_each_round():
    from seq2seq.server.loadtest import batching_gains

    rows = [{"round": 1, "max_batch": 64, "clients": 64, "requests_per_s": 400.0},
            {"round": 1, "max_batch": 1, "clients": 64, "requests_per_s": 100.0},
            {"round": 2, "max_batch": 64, "clients": 64, "requests_per_s": 300.0},
            {"round": 2, "max_batch": 1, "clients": 64, "requests_per_s": 50.0},
            {"round": 1, "max_batch": 64, "clients": 1, "requests_per_s": 10.0}]  # no batch-1 pair: left out
    assert batching_gains(rows) == [(64, 64, [4.0, 6.0])]
    assert batching_gains([{"max_batch": 8, "clients": 4, "requests_per_s": 30.0},
                           {"max_batch": 1, "clients": 4, "requests_per_s": 20.0}]) == [(4, 8, [1.5])]


def test_bench_server_rounds_repeat_every_case(exports, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_server(exports, tmp_path, 10, "--clients", "3", "--max-batch", "4,1", "--seconds", "1",
                        "--max-requests", "15", "--overhead-sentences", "0", "--beam-size", "1", "--rounds", "2") == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["round"], r["max_batch"]) for r in rows] == [(1, 4), (1, 1), (2, 4), (2, 1)]
    assert "| round | max batch |" in printed and printed.count("\n| 2 | ") == 2
    gains = [r["requests_per_s"] for r in rows]
    expected = sorted([gains[0] / gains[1], gains[2] / gains[3]])
    assert f"3 clients: max batch 4 gives {sum(expected) / 2:.1f}x" in printed
    assert f"(rounds: {gains[0] / gains[1]:.1f}x, {gains[2] / gains[3]:.1f}x; the median)" in printed
    assert bench_server(exports, tmp_path, 10, "--rounds", "0") == 2
    assert "--rounds must be at least 1, not 0" in capsys.readouterr().err


def test_bench_server_measures_a_client_beside_abusive_ones(exports, tmp_path, capsys):
    from seq2seq.engine import Engine
    from seq2seq.server.service import request_cost

    out = tmp_path / "bench.json"
    assert bench_server(exports, tmp_path, 10, "--abusive", "2", "--seconds", "2", "--max-requests", "20",
                        "--beam-size", "1", "--max-request-cost", "4000") == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    a = r["abusive_request"]
    # The costliest request within the limit: one beam more would pass it.
    engine = Engine(exports["bahdanau"])
    ids = [engine.encode(max(SENTENCES[:10], key=lambda text: len(engine.encode(text))))] * 8
    assert a["cost"] == request_cost(ids, DecodingOptions(beam_size=a["beam_size"], max_length=512)) <= 4000
    assert request_cost(ids, DecodingOptions(beam_size=a["beam_size"] + 1, max_length=512)) > 4000
    assert r["abusive_outcomes"].get("OK", 0) >= 1 and set(r["abusive_outcomes"]) <= {"OK", "CANCELLED"}
    assert 0 < r["alone"]["requests"] <= 20 and 0 < r["loaded"]["requests"] <= 20
    assert r["p99_ratio"] == pytest.approx(r["loaded"]["p99_ms"] / r["alone"]["p99_ms"])
    assert "| beside 2 abusive clients |" in printed and "p99 beside them / alone" in printed


def test_bench_server_measures_a_client_beside_evaluate_jobs(exports, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_server(exports, tmp_path, 10, "--evaluate-jobs", "2", "--seconds", "2", "--max-requests", "20",
                        "--beam-size", "1") == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["evaluate_jobs"] == 2 and r["job_sentences"] == 10
    assert r["evaluate_outcomes"].get("OK", 0) >= 1 and set(r["evaluate_outcomes"]) <= {"OK", "CANCELLED"}
    assert 0 < r["alone"]["requests"] <= 20 and 0 < r["loaded"]["requests"] <= 20
    assert r["p99_ratio"] == pytest.approx(r["loaded"]["p99_ms"] / r["alone"]["p99_ms"])
    assert "| beside 2 Evaluate job(s) |" in printed and "p99 beside them / alone" in printed
    assert bench_server(exports, tmp_path, 10, "--evaluate-jobs", "1", "--server", "cpp") == 2
    assert "Evaluate runs on the Python server only" in capsys.readouterr().err
