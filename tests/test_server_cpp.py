"""seq2seq-serve, the C++ front end (built by `make cpp`), against the Python server on the
same exports: the same answers, statuses and messages, byte for byte; then what a server
must do on its own (batching, health, reflection, deadlines, cancellation, limits, token,
TLS, SIGTERM). Every server listens on 127.0.0.1, on an ephemeral port."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from seq2seq.config import DecodingOptions
from tests.grpc_checks import assert_serving_and_reflected, self_signed_certificate
from tests.exports import random_export, sentencepiece_tokenizer

BINARY = Path(__file__).resolve().parents[1] / "build" / "cmake" / "seq2seq-serve"
pytestmark = pytest.mark.skipif(not BINARY.exists(), reason="seq2seq-serve is not built (make cpp)")
pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")

from seq2seq.server.app import Server, ServerConfig  # noqa: E402
from seq2seq.server.client import Client, pb, pb_grpc  # noqa: E402
from seq2seq.server.loadtest import start_server  # noqa: E402

WORDS = ("ein Mann fährt mit dem Fahrrad eine Frau liest ein Buch zwei Hunde spielen im Schnee "
         "Kinder lachen auf der Straße ein Junge springt ins Wasser die Sonne scheint hell").split()
SENTENCES = [" ".join(WORDS[i:i + 3 + i % 5]) for i in range(len(WORDS) - 3)]
# Text the servers must normalize alike before tokenizing: NFD accents, tabs, no-break and
# ideographic spaces, a control character, spaces at either end.
ODD = ["  ein\tMann fa\u0308hrt ", "Zu\u0308rich\u00a0im\u3000Schnee", "die\x07Sonne\u2028scheint", "Stra\u00dfe!?"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("served_cpp")
    tok = sentencepiece_tokenizer(SENTENCES * 4, vocab_size=400)
    exports = {"bahdanau": random_export(root / "a", "bahdanau-gru-bi", tokenizer=tok),
               "luong": random_export(root / "b", "luong-general", tokenizer=tok),
               "transformer": random_export(root / "c", "transformer-pre", tokenizer=tok)}
    config = json.loads((exports["luong"] / "config.json").read_text())
    config["decoding"] = LUONG_DEFAULTS  # as `seq2seq export --beam-size 3 --length-penalty none` writes them
    (exports["luong"] / "config.json").write_text(json.dumps(config))
    config = json.loads((exports["transformer"] / "config.json").read_text())
    config["decoding"] = TRANSFORMER_DEFAULTS  # as `seq2seq export --no-repeat-ngram-size 2` writes them
    (exports["transformer"] / "config.json").write_text(json.dumps(config))
    return exports


LUONG_DEFAULTS = {"beam_size": 3, "length_penalty": "none"}
TRANSFORMER_DEFAULTS = {"no_repeat_ngram_size": 2}


def start_cpp(exports: dict, *extra, stderr=subprocess.DEVNULL):
    models = [a for name, path in exports.items() for a in ("--model", f"{name}={path}")]
    proc, port, _ = start_server("", *extra, binary=str(BINARY), models=models, stderr=stderr)
    return proc, port


def stop(proc, timeout=60):
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


@pytest.fixture(scope="module")
def channels(exports):
    """{"cpp": channel, "python": channel} to the two servers on the same exports, and the C++ one's port."""
    proc, port = start_cpp(exports, "--max-delay-ms", "5")
    py = Server(ServerConfig(models={k: str(v) for k, v in exports.items()}, port=0, max_delay_ms=5))
    opened = {name: grpc.insecure_channel(f"127.0.0.1:{p}") for name, p in (("cpp", port), ("python", py.port))}
    yield opened, port
    for c in opened.values():
        c.close()
    py.stop(grace=1)
    assert stop(proc) == 0


@pytest.fixture(scope="module")
def servers(channels):
    """(C++ stub, Python stub, the C++ server's port) on the same exports."""
    opened, port = channels
    return pb_grpc.TranslationServiceStub(opened["cpp"]), pb_grpc.TranslationServiceStub(opened["python"]), port


REQUESTS = [
    dict(sentences=SENTENCES[:5]),
    dict(sentences=SENTENCES[5:9], options=pb.DecodingOptions(beam_size=1, return_scores=True)),
    dict(sentences=SENTENCES[:3], options=pb.DecodingOptions(beam_size=4, n_best=3, return_scores=True)),
    dict(sentences=SENTENCES[9:11], options=pb.DecodingOptions(beam_size=2, return_attention=True)),
    dict(sentences=SENTENCES[:4], options=pb.DecodingOptions(max_length=3, length_penalty="average")),
    dict(sentences=SENTENCES[:4], options=pb.DecodingOptions(length_penalty="none", return_scores=True)),
    dict(sentences=SENTENCES[:4], options=pb.DecodingOptions(alpha=1.5, return_scores=True)),
    dict(sentences=ODD, options=pb.DecodingOptions(beam_size=3)),
]


@pytest.mark.parametrize("model", ["bahdanau", "luong", "transformer"])
@pytest.mark.parametrize("i", range(len(REQUESTS)))
def test_translations_equal_the_python_servers(servers, model, i):
    cpp, py, _ = servers
    request = pb.TranslateRequest(request_id=f"r{i}", model=model, **REQUESTS[i])
    got, want = cpp.Translate(request, timeout=60), py.Translate(request, timeout=60)
    assert len(want.translations) == len(request.sentences)
    assert got == want  # texts, scores, attention weights: every field


BAD = [
    dict(sentences=[]), dict(sentences=["ein Mann", ""]), dict(sentences=["ein Mann", " \t\u3000"]),
    dict(sentences=["Mann " * 20000]), dict(sentences=["ein"] * 10000), dict(sentences=["Mann " * 300]),
    dict(sentences=["ein"], model="nope"), dict(sentences=["ein"], model=""),
    dict(sentences=["ein"], options=pb.DecodingOptions(beam_size=0)),
    dict(sentences=["ein"], options=pb.DecodingOptions(beam_size=10000)),
    dict(sentences=["ein"], options=pb.DecodingOptions(max_length=-3)),
    dict(sentences=["ein"], options=pb.DecodingOptions(length_penalty="wu")),
    dict(sentences=["ein"], options=pb.DecodingOptions(beam_size=2, n_best=3)),
    dict(sentences=["ein"], options=pb.DecodingOptions(alpha=-0.3)),
    dict(sentences=["ein"], options=pb.DecodingOptions(alpha=-2)),
    dict(sentences=["ein"], options=pb.DecodingOptions(length_penalty="it's")),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_bad_requests_get_the_python_servers_status_and_message(servers, i):
    cpp, py, _ = servers
    request = pb.TranslateRequest(**{"model": "bahdanau", **BAD[i]})
    errors = []
    for stub in (cpp, py):
        with pytest.raises(grpc.RpcError) as e:
            stub.Translate(request, timeout=60)
        errors.append((e.value.code(), e.value.details()))
    assert errors[0] == errors[1]
    assert cpp.Translate(pb.TranslateRequest(model="bahdanau", sentences=["ein Mann"]), timeout=60).translations


def test_alpha_that_is_not_a_number_is_refused(servers):
    cpp, _, _ = servers
    with pytest.raises(grpc.RpcError) as e:
        cpp.Translate(pb.TranslateRequest(model="luong", sentences=["ein"], options=pb.DecodingOptions(alpha=float("nan"))))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "alpha" in e.value.details()


def test_models_are_described_as_the_python_server_does(servers):
    cpp, py, _ = servers
    assert cpp.ListModels(pb.ListModelsRequest()) == py.ListModels(pb.ListModelsRequest())
    assert cpp.GetModel(pb.GetModelRequest(name="luong")) == py.GetModel(pb.GetModelRequest(name="luong"))
    for name, code in (("", grpc.StatusCode.INVALID_ARGUMENT), ("nope", grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as e:
            cpp.GetModel(pb.GetModelRequest(name=name))
        assert e.value.code() == code


def test_the_exports_decoding_defaults_fill_the_options_a_request_leaves_out(servers):
    cpp, py, _ = servers
    answers = []
    for stub in (cpp, py):
        defaults = stub.GetModel(pb.GetModelRequest(name="luong")).defaults
        assert (defaults.beam_size, defaults.length_penalty, defaults.n_best) == (3, "none", 1)
        assert stub.GetModel(pb.GetModelRequest(name="bahdanau")).defaults.length_penalty == "gnmt"  # the server's
        request = lambda **given: pb.TranslateRequest(model="luong", sentences=SENTENCES[:4],
                                                      options=pb.DecodingOptions(return_scores=True, **given))
        plain = stub.Translate(request(), timeout=60)
        assert plain.translations == stub.Translate(request(**LUONG_DEFAULTS), timeout=60).translations
        assert all(t.hypotheses[0].score == t.hypotheses[0].log_prob for t in plain.translations)  # penalty none
        gnmt = stub.Translate(request(length_penalty="gnmt", alpha=2.0), timeout=60)  # a request's option wins
        assert any(t.hypotheses[0].score != t.hypotheses[0].log_prob for t in gnmt.translations)
        answers.append(plain)
    assert answers[0] == answers[1]


def test_an_exports_no_repeat_ngram_default_is_served(servers, exports):
    from seq2seq.engine import Engine

    engine = Engine(exports["transformer"])
    blocked = [t[0].text for t in engine.translate(SENTENCES, DecodingOptions(**TRANSFORMER_DEFAULTS))]
    assert blocked != [t[0].text for t in engine.translate(SENTENCES, DecodingOptions())]
    for stub in servers[:2]:
        got = stub.Translate(pb.TranslateRequest(model="transformer", sentences=SENTENCES), timeout=60)
        assert [t.hypotheses[0].text for t in got.translations] == blocked


def test_defaults_over_the_servers_limits_stop_it_before_it_serves(exports, tmp_path):
    only = {"luong": exports["luong"]}
    with pytest.raises(RuntimeError, match="did not start"):
        start_cpp(only, "--max-beam", "2")
    from seq2seq.server.service import Limits
    with pytest.raises(ValueError, match=r"decoding defaults \(beam_size 3, max_length 256\) exceed this server's "
                                         r"limits \(--max-beam 2"):
        Server(ServerConfig(models={k: str(v) for k, v in only.items()}, port=0, limits=Limits(max_beam=2)))


def test_stream_answers_every_request_as_the_unary_call_does(servers):
    cpp, _, _ = servers
    requests = [pb.TranslateRequest(request_id=str(i), model="bahdanau", sentences=SENTENCES[i:i + 1 + i % 3],
                                    options=pb.DecodingOptions(beam_size=1 + i % 3)) for i in range(12)]
    got = {r.request_id: r for r in cpp.TranslateStream(iter(requests), timeout=60)}
    assert got == {r.request_id: cpp.Translate(r, timeout=60) for r in requests}


def test_an_invalid_request_ends_the_stream_with_its_status(servers):
    cpp, _, _ = servers
    requests = [pb.TranslateRequest(request_id="1", model="bahdanau", sentences=["ein Mann"]),
                pb.TranslateRequest(request_id="2", model="bahdanau", sentences=[""])]
    with pytest.raises(grpc.RpcError) as e:
        list(cpp.TranslateStream(iter(requests), timeout=60))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "sentences[0] is empty" in e.value.details()


@pytest.mark.parametrize("server", ["cpp", "python"])
def test_an_undecodable_stream_message_is_answered_after_the_ones_before_it(channels, servers, server):
    # Sent as raw bytes: the middle message is no TranslateRequest (a varint cut short).
    stream = channels[0][server].stream_stream("/seq2seq.v1.TranslationService/TranslateStream",
                                               request_serializer=lambda b: b,
                                               response_deserializer=pb.TranslateResponse.FromString)
    good = [pb.TranslateRequest(request_id=str(i), model="bahdanau", sentences=SENTENCES[i:i + 2]) for i in (1, 3)]
    responses = stream(iter([good[0].SerializeToString(), b"\xff\xff\xff", good[1].SerializeToString()]), timeout=60)
    assert next(responses) == servers[1].Translate(good[0], timeout=60)  # the Python server's answer, on both
    with pytest.raises(grpc.RpcError) as e:
        next(responses)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == ("message 2 of the stream could not be decoded as a TranslateRequest; send "
                                 "TranslateRequest messages of proto/seq2seq/v1/translation.proto")


def test_evaluate_is_left_to_the_python_server(servers):
    cpp, _, _ = servers
    with pytest.raises(grpc.RpcError) as e:
        list(cpp.Evaluate(pb.EvaluateRequest(model="bahdanau", sources=["ein"], references=["a"])))
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED and "seq2seq serve" in e.value.details()


def test_health_and_reflection(servers):
    _, _, port = servers
    assert_serving_and_reflected(port)


def test_expired_deadline_and_cancelled_stream(servers):
    cpp, _, _ = servers
    with pytest.raises(grpc.RpcError) as e:
        cpp.Translate(pb.TranslateRequest(model="bahdanau", sentences=SENTENCES), timeout=0.0005)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def endless():
        i = 0
        while True:
            i += 1
            yield pb.TranslateRequest(request_id=str(i), model="bahdanau", sentences=SENTENCES[:8])
            time.sleep(0.01)

    stream = cpp.TranslateStream(endless())
    next(stream)
    stream.cancel()
    with pytest.raises(grpc.RpcError) as e:
        list(stream)
    assert e.value.code() == grpc.StatusCode.CANCELLED
    assert cpp.Translate(pb.TranslateRequest(model="bahdanau", sentences=["ein Mann"]), timeout=60).translations


def logged(path):
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def test_concurrent_clients_get_what_each_would_get_alone_and_share_batches(exports, tmp_path):
    log = open(tmp_path / "server.log", "w")
    proc, port = start_cpp({"m": exports["bahdanau"]}, "--max-delay-ms", "20", stderr=log)
    try:
        c = Client(f"127.0.0.1:{port}", timeout=60)
        alone = [c.translate([s], beam_size=3).translations[0] for s in SENTENCES]
        got, errors = {}, []

        def call(i):
            try:
                got[i] = Client(f"127.0.0.1:{port}", timeout=60).translate([SENTENCES[i]], beam_size=3).translations[0]
            except grpc.RpcError as e:
                errors.append(e)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(SENTENCES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and [got[i] for i in range(len(SENTENCES))] == alone
    finally:
        assert stop(proc) == 0
        log.close()
    stopped = [e for e in logged(tmp_path / "server.log") if e.get("event") == "stopped"][0]
    batches = stopped["engine_batches"]["m"]
    assert batches["sentences"] == 2 * len(SENTENCES)
    assert batches["batches"] < 2 * len(SENTENCES)  # some concurrent requests shared a batch


def test_a_full_queue_is_resource_exhausted(exports):
    proc, port = start_cpp({"m": exports["luong"]}, "--max-queue", "3", "--max-queue-per-client", "3")
    try:
        c = Client(f"127.0.0.1:{port}")
        with pytest.raises(grpc.RpcError) as e:
            c.translate(SENTENCES[:4])
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 3" in e.value.details()
        assert c.translate(SENTENCES[:3]).translations
        c.close()
    finally:
        assert stop(proc) == 0


def test_bearer_token(exports):
    proc, port = start_cpp({"m": exports["luong"]}, "--token", "s3cret")
    try:
        for token in ("", "wrong", "s3cret2"):
            c = Client(f"127.0.0.1:{port}", token=token)
            with pytest.raises(grpc.RpcError) as e:
                c.translate(["ein"])
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            c.close()
        c = Client(f"127.0.0.1:{port}", token="s3cret")
        assert c.translate(["ein Mann"]).translations
        c.close()
    finally:
        assert stop(proc) == 0


def test_tls_with_a_certificate_made_here(exports, tmp_path):
    key, cert = self_signed_certificate(tmp_path)
    proc, port = start_cpp({"m": exports["luong"]}, "--tls-cert", cert, "--tls-key", key)
    try:
        c = Client(f"localhost:{port}", tls_ca=str(cert))
        assert c.translate(["ein Mann"]).translations
        c.close()
        plain = Client(f"127.0.0.1:{port}", timeout=5)
        with pytest.raises(grpc.RpcError):
            plain.translate(["ein"])
        plain.close()
    finally:
        assert stop(proc) == 0


def test_sigterm_during_load_loses_no_accepted_request(exports, tmp_path):
    log = open(tmp_path / "server.log", "w")
    proc, port = start_cpp({"m": exports["bahdanau"]}, "--grace", "20", stderr=log)
    want = Client(f"127.0.0.1:{port}").translate(SENTENCES[:16]).translations
    outcomes, done = [], threading.Event()

    def load():
        c = Client(f"127.0.0.1:{port}", timeout=30)
        while not done.is_set():
            try:
                outcomes.append(c.translate(SENTENCES[:16]).translations == want)
            except grpc.RpcError as e:
                outcomes.append(e.code())
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    break
        c.close()

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert stop(proc) == 0
    done.set()
    for t in threads:
        t.join()
    log.close()
    # Every call the server took up (one log line each) was answered, and correctly; calls it
    # never took up were refused: UNAVAILABLE, or CANCELLED for one that reached it as it stopped.
    taken = [e for e in logged(tmp_path / "server.log") if e.get("method") == "Translate"]
    answered = [o for o in outcomes if o is True]
    refused = [o for o in outcomes if o is not True]
    assert answered and all(t["status"] == "OK" for t in taken) and len(taken) == len(answered) + 1  # + want
    assert all(o in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for o in refused), refused


@pytest.mark.parametrize("args,words", [
    (["--model", "m=/nowhere", "--port", "0"], "config.json"), (["--frobnicate", "1"], "unknown option"),
    (["--port", "http"], "integer"), ([], "--model"), (["--model", "m=X", "--tls-cert", "c.pem"], "--tls-key")])
def test_bad_command_lines_are_clear_errors(args, words):
    done = subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and words in done.stderr, done.stderr


def test_an_export_it_cannot_tokenize_is_refused_at_start(tmp_path):
    words = random_export(tmp_path / "w", "luong-dot")  # a word vocabulary
    done = subprocess.run([str(BINARY), "--model", f"m={words}", "--port", "0"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "SentencePiece" in done.stderr and "word" in done.stderr, done.stderr


@pytest.mark.parametrize("server", ["python", "cpp"])
def test_a_device_it_cannot_use_is_refused_at_start(exports, server):
    command = [str(BINARY)] if server == "cpp" else [sys.executable, "-m", "seq2seq", "serve"]
    done = subprocess.run([*command, "--model", f"m={exports['luong']}", "--port", "0", "--device", "tpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "device must be cpu, cuda or cuda:N, not tpu" in done.stderr, done.stderr


def test_an_export_whose_weights_are_a_fifo_is_refused_at_start(exports, tmp_path):
    broken = Path(shutil.copytree(exports["luong"], tmp_path / "broken"))
    (broken / "model.safetensors").unlink()
    os.mkfifo(broken / "model.safetensors")  # opened, it would block the server's start forever
    done = subprocess.run([str(BINARY), "--model", f"m={broken}", "--port", "0"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "model.safetensors: is a FIFO, not a regular file" in done.stderr, done.stderr


def test_bench_server_runs_against_it(exports, tmp_path, capsys):
    from seq2seq.cli import main

    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "bench.json"
    assert main(["bench-server", "--server", "cpp", "--model", str(exports["bahdanau"]), "--input", str(source),
                 "--clients", "4", "--max-batch", "8,1", "--seconds", "2", "--max-requests", "40",
                 "--overhead-sentences", "10", "--beam-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "server: the C++ front end" in printed and "4 clients: max batch 8 gives" in printed
    result = json.loads(out.read_text())
    assert result["server"] == "cpp"
    for r in result["rows"]:
        assert r["errors"] == {} and 0 < r["requests"] <= 40 and 1 <= r["mean_batch"] <= r["max_batch"]
    # The handler time comes from the server's per-call log lines and lies inside the round trip.
    one = result["one_client"]
    assert 0 < one["handler_mean_ms"] < one["served_mean_ms"]


LOADGEN = BINARY.parent / "seq2seq-loadgen"


def test_bench_server_with_the_cpp_load_generator(exports, tmp_path, capsys):
    from seq2seq.cli import main

    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "bench.json"
    assert main(["bench-server", "--server", "cpp", "--load-generator", "cpp", "--model", str(exports["bahdanau"]),
                 "--input", str(source), "--clients", "4", "--max-batch", "8,1", "--seconds", "30",
                 "--max-requests", "40", "--overhead-sentences", "0", "--beam-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "clients: the C++ load generator" in printed and "4 clients: max batch 8 gives" in printed
    result = json.loads(out.read_text())
    assert result["load_generator"] == "cpp"
    for r in result["rows"]:  # the request bound ends each case, every call answered
        assert r["errors"] == {} and r["requests"] == 40 and 1 <= r["mean_batch"] <= r["max_batch"]
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]


def test_the_load_generator_counts_failed_calls_and_names_bad_options(tmp_path):
    source = tmp_path / "sentences.txt"
    source.write_text("Ein Hund.\n")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run([str(LOADGEN), "--target", f"127.0.0.1:{port}", "--sentences", str(source), "--clients", "2",
                           "--seconds", "20", "--max-requests", "3", "--timeout", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["requests"] == 0 and sum(result["errors"].values()) == 3, result
    for args, words in [([], "--target and --sentences are required"),
                        (["--target", "x:1", "--sentences", str(tmp_path / "none.txt")], "cannot read"),
                        (["--target", "x:1", "--sentences", str(source), "--clients", "0"], "--clients needs a positive"),
                        (["--target", "x:1", "--sentences", str(source), "--clients", "1.5"], "--clients needs a whole"),
                        (["--target", "x:1", "--sentences", str(source), "--bogus", "1"], "unknown option --bogus")]:
        done = subprocess.run([str(LOADGEN), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
