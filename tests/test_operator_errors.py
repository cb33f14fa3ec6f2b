"""What an operator sees when something is wrong: one line naming the file, flag or field and
how to fix it, never a traceback; and the two servers (`seq2seq serve`, seq2seq-serve) alike
on the bearer token. Every server listens on 127.0.0.1, on an ephemeral port; the C++ one's
cases skip when build/cmake/seq2seq-serve is not built (make cpp)."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from unittest import mock

import grpc
import pytest

from seq2seq.export import ExportError, load_export
from tests.exports import random_export, sentencepiece_tokenizer
from tests.grpc_checks import self_signed_certificate
from tests.servers import BINARY, SERVERS
SENTENCES = ["ein Mann fährt mit dem Fahrrad", "eine Frau liest ein Buch", "zwei Hunde spielen im Schnee"] * 8
TOKEN = "s3cret"
UNAUTHENTICATED = "a valid 'authorization: Bearer TOKEN' is required"
TWO_AUTHORIZATIONS = "the call carries 2 'authorization' entries; send one: 'authorization: Bearer TOKEN'"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tok = sentencepiece_tokenizer(SENTENCES, vocab_size=300)
    return random_export(tmp_path_factory.mktemp("operator"), "luong-general", tokenizer=tok)


def command(server: str) -> list[str]:
    return [str(BINARY)] if server == "cpp" else [sys.executable, "-m", "seq2seq", "serve"]


def fails_to_start(server: str, *args: str, env: dict | None = None) -> list[str]:
    """The lines a server that refuses to start writes on stderr (it must exit, not serve)."""
    done = subprocess.run([*command(server), "--port", "0", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode != 0 and not done.stdout, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()


def edited(export: Path, folder: Path, edit) -> Path:
    """A copy of ``export`` whose config.json text is ``edit(config)``."""
    copy = Path(shutil.copytree(export, folder))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(edit(config))
    return copy


def with_field(section: str, name: str, value):
    def edit(config):
        config[section][name] = value
        return json.dumps(config)
    return edit


# -- config.json: wrongly typed fields ---------------------------------------------------------
WRONG_TYPES = [("model", "hidden", "256", "an integer"), ("model", "hidden", True, "an integer"),
               ("model", "hidden", 256.5, "an integer"), ("model", "dropout", "0.1", "a number"),
               ("model", "bidirectional", 1, "true or false"), ("model", "family", 3, "a string"),
               ("data", "files", "a.tsv", "a list of strings"), ("data", "lowercase", "no", "true or false")]


@pytest.mark.parametrize("section,name,value,kind", WRONG_TYPES)
def test_a_wrongly_typed_config_field_is_named_with_its_type(export, tmp_path, section, name, value, kind):
    from seq2seq.translate import Translator

    bad = edited(export, tmp_path / "bad", with_field(section, name, value))
    want = f'{bad / "config.json"}: "{section}.{name}" must be {kind}, not {json.dumps(value)}; correct it'
    for load in (load_export, Translator):
        with pytest.raises(ExportError) as e:
            load(bad)
        assert str(e.value).startswith(want), str(e.value)


def test_a_whole_number_is_a_number_and_a_list_a_tuple(export, tmp_path):
    fine = edited(export, tmp_path / "fine", lambda c: json.dumps({**c, "model": {**c["model"], "dropout": 0},
                                                                   "data": {**c["data"], "files": ["a.tsv"]}}))
    exp = load_export(fine)
    assert exp.model_cfg.dropout == 0 and exp.data_cfg.files == ("a.tsv",)


def test_evaluate_names_the_wrongly_typed_field(export, tmp_path, capsys):
    from seq2seq.cli import main

    bad = edited(export, tmp_path / "bad", with_field("model", "hidden", "256"))
    assert main(["evaluate", "--model", str(bad), "--backend", "python"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'error: {bad / "config.json"}: "model.hidden" must be an integer, not "256"; correct it, ' \
                  "or export the checkpoint again with `seq2seq export`"


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("section,name,value,kind", [("model", "hidden", "256", "an integer"),
                                                     ("data", "lowercase", "no", "true or false")])
def test_servers_name_the_wrongly_typed_field(export, tmp_path, server, section, name, value, kind):
    bad = edited(export, tmp_path / "bad", with_field(section, name, value))
    lines = fails_to_start(server, "--model", f"m={bad}")
    assert f'{bad / "config.json"}: "{section}.{name}" must be {kind}, not {json.dumps(value)}; correct it' \
        in lines[-1], lines


# -- config.json: nested too deeply ------------------------------------------------------------
def nested_model_field(config):
    config["model"]["hidden"] = "X"
    return json.dumps(config).replace('"X"', "[" * 100000 + "]" * 100000)


NESTED = {"the whole file": lambda config: "[" * 100000, "a model field": nested_model_field}


@pytest.mark.parametrize("where", NESTED)
def test_a_deeply_nested_config_is_refused_in_python(export, tmp_path, where):
    bad = edited(export, tmp_path / "bad", NESTED[where])
    with pytest.raises(ExportError, match=r"config\.json: nested too deeply; "):
        load_export(bad)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("where", NESTED)
def test_a_deeply_nested_config_is_refused_by_the_servers(export, tmp_path, server, where):
    bad = edited(export, tmp_path / "bad", NESTED[where])  # the C++ server crashed on "a model field"
    lines = fails_to_start(server, "--model", f"m={bad}")
    assert f"{bad / 'config.json'}: nested too deeply; " in lines[-1], lines


# -- TLS files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    key, cert = self_signed_certificate(folder)
    other = folder / "other"
    other.mkdir()
    other_key, _ = self_signed_certificate(other)
    encrypted = folder / "encrypted.pem"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
                   check=True, capture_output=True)
    junk = folder / "junk.pem"
    junk.write_text("not a PEM file\n")
    return {"key": key, "cert": cert, "other_key": other_key, "encrypted": encrypted, "junk": junk,
            "missing": folder / "missing.pem"}


TLS_CASES = {
    "missing key": ("cert", "missing", "--tls-key {missing}: cannot be read"),
    "missing certificate": ("missing", "key", "--tls-cert {missing}: cannot be read"),
    "certificate not PEM": ("junk", "key", "--tls-cert {junk}: not a PEM certificate"),
    "key not PEM": ("cert", "junk", "--tls-key {junk}: not a PEM private key"),
    "a key that is a certificate": ("cert", "cert", "--tls-key {cert}: not a PEM private key"),
    "another certificate's key": ("cert", "other_key",
                                  "--tls-key {other_key} is not the key of the certificate in --tls-cert {cert}"),
    "encrypted key": ("cert", "encrypted", "--tls-key {encrypted}: the key is encrypted"),
}


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("case", TLS_CASES)
def test_bad_tls_files_are_named_before_the_server_starts(export, tls, server, case):
    cert, key, words = TLS_CASES[case]
    lines = fails_to_start(server, "--model", f"m={export}", "--tls-cert", str(tls[cert]), "--tls-key", str(tls[key]))
    assert len(lines) == 1 and words.format(**tls) in lines[0], lines


# -- the bearer token: from a file or the environment ------------------------------------------
def start(server: str, export: Path, *args: str, env: dict | None = None):
    """(process, port, metrics port or None) of a server on ``export``, with ``env`` added to its environment."""
    from seq2seq.server.loadtest import start_server

    with mock.patch.dict(os.environ, env or {}):
        return start_server(str(export), *args, binary=str(BINARY) if server == "cpp" else "")


def stop(proc):
    proc.terminate()
    assert proc.wait(60) == 0


def call(port: int, method: str = "/seq2seq.v1.TranslationService/ListModels", metadata=(), stream=False):
    """The status code and details of one call with ``metadata``, made with raw bytes."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            if stream:
                list(channel.stream_stream(method)(iter([b"", b""]), metadata=metadata, timeout=30))
            else:
                channel.unary_unary(method)(b"", metadata=metadata, timeout=30)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()


@pytest.fixture(scope="module", params=SERVERS)
def guarded(request, export, tmp_path_factory):
    """(server, port, metrics port or None): a server whose token comes from --token-file."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")  # the newline an editor or `echo` leaves is not part of the token
    metrics = ("--metrics-port", "0") if request.param == "python" else ()
    proc, port, metrics_port = start(request.param, export, "--token-file", str(token_file), *metrics,
                                     env={"SEQ2SEQ_TOKEN": "not-this-one"})
    yield request.param, port, metrics_port
    stop(proc)


def test_the_token_comes_from_the_token_file(guarded):
    _, port, _ = guarded
    assert call(port, metadata=[("authorization", f"Bearer {TOKEN}")])[0] == grpc.StatusCode.OK
    for given in ([], [("authorization", "Bearer not-this-one")], [("authorization", TOKEN)]):
        assert call(port, metadata=given) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)


@pytest.mark.parametrize("server", SERVERS)
def test_the_token_comes_from_the_environment(export, server):
    proc, port, _ = start(server, export, env={"SEQ2SEQ_TOKEN": TOKEN})
    try:
        assert call(port)[0] == grpc.StatusCode.UNAUTHENTICATED
        assert call(port, metadata=[("authorization", f"Bearer {TOKEN}")])[0] == grpc.StatusCode.OK
    finally:
        stop(proc)


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("content,words", [
    (None, "cannot be read"), ("", "the file is empty"), ("\n", "the file is empty"),
    ("one\ntwo\n", "holds more than one line"), ("both", "give --token or --token-file, not both")])
def test_a_bad_token_file_is_a_clear_error(export, tmp_path, server, content, words):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    both = ("--token", TOKEN) if content == "both" else ()
    lines = fails_to_start(server, "--model", f"m={export}", "--token-file", str(path), *both)
    assert len(lines) == 1 and words in lines[0] and (content == "both" or f"--token-file {path}: " in lines[0]), lines


@pytest.mark.parametrize("server", SERVERS)
def test_help_tells_where_the_token_can_come_from(server):
    done = subprocess.run([*command(server), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--token-file" in done.stdout and "SEQ2SEQ_TOKEN" in done.stdout


# -- the bearer token: several authorization entries, unknown methods --------------------------
@pytest.mark.parametrize("entries", [(TOKEN, "wrong"), ("wrong", TOKEN), (TOKEN, TOKEN)])
def test_two_authorization_entries_are_refused_alike(guarded, entries):
    _, port, _ = guarded
    metadata = [("authorization", f"Bearer {t}") for t in entries]
    assert call(port, metadata=metadata) == (grpc.StatusCode.UNAUTHENTICATED, TWO_AUTHORIZATIONS)


def test_health_and_reflection_need_no_token(guarded):
    """Both servers alike: a load balancer's health check carries no token."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, port, _ = guarded
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        asked = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([asked]), timeout=30)
        assert "seq2seq.v1.TranslationService" in [s.name for s in answer.list_services_response.service]
    assert call(port) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)  # the service itself needs it


@pytest.mark.parametrize("stream", [False, True])
def test_an_unknown_method_needs_the_token_first(guarded, stream):
    _, port, _ = guarded
    assert call(port, "/seq2seq.v1.Nope/Method", stream=stream) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
    assert call(port, "/seq2seq.v1.TranslationService/Nope", metadata=[("authorization", "Bearer x")],
                stream=stream) == (grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
    assert call(port, "/seq2seq.v1.Nope/Method", metadata=[("authorization", f"Bearer {TOKEN}")], stream=stream) == \
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!")


# -- /metrics: open, by decision (server/app.py says why), and holding no request text ---------
def test_metrics_are_open_and_hold_no_request_text(guarded):
    from seq2seq.server.client import Client, pb

    server, port, metrics_port = guarded
    if server != "python":
        pytest.skip("only the Python server serves metrics")
    client = Client(f"127.0.0.1:{port}", token=TOKEN)
    client.translate(["Geheimnis Zebra Xylophon"], request_id="request-id-7f3a")
    with pytest.raises(grpc.RpcError):
        client.translate(["Geheimnis Zebra"], model="model-name-9c1e")
    client.close()
    guess = Client(f"127.0.0.1:{port}", token="token-guess-5d2b")
    with pytest.raises(grpc.RpcError):
        guess.translate(["Geheimnis"])
    guess.close()
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).read().decode()
    assert 'seq2seq_requests_total{method="Translate",status="OK"}' in text
    for secret in ("Geheimnis", "Zebra", "request-id-7f3a", "model-name-9c1e", "token-guess-5d2b", TOKEN):
        assert secret not in text
