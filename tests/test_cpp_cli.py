"""seq2seq-translate, the C++ command-line translator (built by `make cpp`), against the
Python Engine on the same export: raw text in, the same translations out."""

import json
import math
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from seq2seq.config import DecodingOptions
from seq2seq.export import ExportError, load_export
from tests.exports import random_export, sentencepiece_tokenizer

BINARY = Path(__file__).resolve().parents[1] / "build" / "cmake" / "seq2seq-translate"
pytestmark = pytest.mark.skipif(not BINARY.exists(), reason="seq2seq-translate is not built (make cpp)")
pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")
from seq2seq.engine import Engine  # noqa: E402

WORDS = ("ein Mann fährt mit dem Fahrrad eine Frau liest ein Buch zwei Hunde spielen im Schnee "
         "Kinder lachen auf der Straße ein Junge springt ins Wasser die Sonne scheint hell").split()
SENTENCES = [" ".join(WORDS[i:i + 3 + i % 5]) for i in range(len(WORDS) - 3)] * 4


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tok = sentencepiece_tokenizer(SENTENCES, vocab_size=400)  # 256 byte pieces among them
    return random_export(tmp_path_factory.mktemp("cli"), "bahdanau-gru-bi", tokenizer=tok)


@pytest.fixture(scope="module")
def transformer_export(tmp_path_factory):
    tok = sentencepiece_tokenizer(SENTENCES, vocab_size=400)
    return random_export(tmp_path_factory.mktemp("cli-transformer"), "transformer-post", tokenizer=tok)


def run(args, text="", timeout=300):
    return subprocess.run([str(BINARY), *map(str, args)], input=text, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("compute_type,batch", [("float32", 2), ("int8", 1)])
def test_translations_equal_the_python_engines(export, compute_type, batch):
    # int8 quantizes activations with one scale per engine call, so its outputs are compared
    # sentence by sentence; float32's do not depend on the company a sentence keeps.
    lines = ["ein Mann fährt", "", "  zwei   Hunde spielen im Schnee ", "Kinder lachen\tauf der Straße", "Zürich?"]
    done = run([export, "--beam-size", 4, "--batch", batch, "--compute-type", compute_type], "\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    engine, opts = Engine(export, compute_type=compute_type), DecodingOptions(beam_size=4)
    texts = [t[0].text for t in engine.translate(lines, opts)] if batch > 1 else \
        [engine.translate([line], opts)[0][0].text for line in lines]
    # A random model emits byte pieces, line breaks among them, which the line-per-line
    # output turns into spaces.
    assert done.stdout.split("\n")[:-1] == [t.replace("\n", " ").replace("\r", " ") for t in texts]


@pytest.mark.parametrize("compute_type", ["float32", "bfloat16"])
def test_a_transformer_translates_as_the_python_engine_does(transformer_export, compute_type):
    lines = ["ein Mann fährt", "zwei Hunde spielen im Schnee", "", "die Sonne scheint hell"]
    done = run([transformer_export, "--beam-size", 3, "--batch", 4, "--compute-type", compute_type],
               "\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    texts = [t[0].text for t in Engine(transformer_export, compute_type=compute_type).translate(
        lines, DecodingOptions(beam_size=3))]
    assert done.stdout.split("\n")[:-1] == [t.replace("\n", " ").replace("\r", " ") for t in texts]


def test_scores_are_printed_on_request(export):
    done = run([export, "--beam-size", 1, "--scores"], "ein Mann\n")
    score, _, _ = done.stdout.partition("\t")
    expected = Engine(export).translate(["ein Mann"], DecodingOptions(beam_size=1))[0][0].score
    assert float(score) == pytest.approx(expected, abs=1e-4)


def test_the_exports_decoding_defaults_apply_unless_a_flag_is_given(export, tmp_path):
    with_defaults = Path(shutil.copytree(export, tmp_path / "export"))
    config = json.loads((with_defaults / "config.json").read_text())
    config["decoding"] = {"beam_size": 2, "length_penalty": "none"}
    (with_defaults / "config.json").write_text(json.dumps(config))
    engine = Engine(export)
    for flags, opts in [([], DecodingOptions(beam_size=2, length_penalty="none")),
                        (["--length-penalty", "gnmt", "--alpha", "1.5"],
                         DecodingOptions(beam_size=2, length_penalty="gnmt", alpha=1.5)),
                        (["--no-repeat-ngram-size", "1", "--max-length", "60"],
                         DecodingOptions(beam_size=2, length_penalty="none", no_repeat_ngram_size=1, max_length=60))]:
        done = run([with_defaults, "--scores", *flags], "ein Mann\n")
        assert done.returncode == 0, done.stderr
        best = engine.translate(["ein Mann"], opts)[0][0]
        score, _, text = done.stdout.rstrip("\n").partition("\t")
        assert float(score) == pytest.approx(best.score, abs=1e-4) and text == best.text.replace("\n", " ")
    # The random model repeats tokens, so the rule has something to block:
    free = engine.translate(["ein Mann"], DecodingOptions(beam_size=2, length_penalty="none", max_length=60))[0][0]
    assert len(set(free.tokens)) < len(free.tokens) and best.tokens != free.tokens
    config["decoding"] = {"alpha": -1}
    (with_defaults / "config.json").write_text(json.dumps(config))
    done = run([with_defaults], "ein Mann\n")
    assert done.returncode == 1 and '"decoding": DecodingOptions.alpha must be >= 0' in done.stderr, done.stderr


def test_bad_use_is_a_clear_error(export, tmp_path):
    for args, words in [([tmp_path / "nowhere"], "config.json"), ([export, "--beam-size", 0], "beam_size"),
                        ([export, "--beam-size", "five"], "integer"), ([export, "--frobnicate", 1], "unknown option"),
                        ([export, "--compute-type", "float16"], "compute_type"), ([], "usage"),
                        ([export, "--device", "tpu"], "device must be cpu, cuda or cuda:N, not tpu")]:
        done = run(args, "ein Mann\n")
        assert done.returncode != 0 and words in done.stderr, (args, done.stderr)


def rewrite_first_tensor(path: Path, shape=None, value=None):
    """model.safetensors with its first tensor's header shape, or its first value, replaced."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header, data = json.loads(raw[8:8 + n]), bytearray(raw[8 + n:])
    name = sorted(k for k in header if k != "__metadata__")[0]
    if shape is not None:
        header[name]["shape"] = shape
    if value is not None:
        first = header[name]["data_offsets"][0]
        data[first:first + 4] = struct.pack("<f", value)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(data))


def fifo(path: Path):
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path):
    path.unlink()
    path.symlink_to("/dev/zero")


def sentencepiece_fifo(path: Path):
    fifo(path.parent / json.loads((path.parent / "tokenizer.json").read_text())["joint"]["model"])


@pytest.mark.parametrize("damage,words", [
    (fifo, "model.safetensors: is a FIFO, not a regular file"),
    (dev_zero, "model.safetensors: is a device, not a regular file"),
    (sentencepiece_fifo, "joint.model: is a FIFO, not a regular file"),
    (lambda p: rewrite_first_tensor(p, shape=[2**62, 4]), "is too large: its byte count overflows 64 bits"),
    (lambda p: rewrite_first_tensor(p, shape=[-2, 4]), "holds a negative dimension"),
    (lambda p: rewrite_first_tensor(p, value=math.nan), "holds NaN or infinite values"),
    (lambda p: rewrite_first_tensor(p, value=-math.inf), "holds NaN or infinite values"),
], ids=["fifo", "dev-zero", "sentencepiece-fifo", "shape-overflow", "negative-dim", "nan", "inf"])
def test_a_damaged_export_is_refused_with_one_line_naming_the_file(export, tmp_path, damage, words):
    broken = Path(shutil.copytree(export, tmp_path / "export"))
    damage(broken / "model.safetensors")
    done = run([broken], "ein Mann\n", timeout=60)  # a FIFO or /dev/zero must not hang it or fill memory
    assert done.returncode == 1 and words in done.stderr, done.stderr
    assert done.stderr.startswith(f"seq2seq-translate: error: {broken}/") and done.stderr.count("\n") == 1, done.stderr
    if damage not in (fifo, dev_zero, sentencepiece_fifo):  # Python's reader would block on those
        with pytest.raises(ExportError):  # what the C++ side refuses, the Python side refuses too
            load_export(broken)
