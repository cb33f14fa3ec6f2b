"""seq2seq-translate, the C++ command-line translator (built by `make cpp`), against the
Python Engine on the same export: raw text in, the same translations out."""

import subprocess
from pathlib import Path

import pytest

from seq2seq.config import DecodingOptions
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


def run(args, text=""):
    return subprocess.run([str(BINARY), *map(str, args)], input=text, capture_output=True, text=True, timeout=300)


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


def test_bad_use_is_a_clear_error(export, tmp_path):
    for args, words in [([tmp_path / "nowhere"], "config.json"), ([export, "--beam-size", 0], "beam_size"),
                        ([export, "--beam-size", "five"], "integer"), ([export, "--frobnicate", 1], "unknown option"),
                        ([export, "--compute-type", "float16"], "compute_type"), ([], "usage")]:
        done = run(args, "ein Mann\n")
        assert done.returncode != 0 and words in done.stderr, (args, done.stderr)
