import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from seq2seq.cli import main
from seq2seq.config import DecodingOptions
from seq2seq.export import ExportError, FORMAT_VERSION, load_export
from seq2seq.translate import Translator
from tests.exports import random_export


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return random_export(tmp_path_factory.mktemp("export"), "bahdanau-gru-bi")


@pytest.fixture
def copy(good, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(good, out)
    return out


def test_export_round_trip(good):
    exp = load_export(good)
    ckpt = torch.load(good.parent / "model.pt", weights_only=False)
    assert exp.config["format_version"] == FORMAT_VERSION and exp.config["family"] == "attention"
    assert exp.config["model"] == ckpt["model"]  # every hyperparameter, from the checkpoint
    assert exp.config["special_ids"] == {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    assert set(exp.tensors) == set(ckpt["model_state"])
    for name, t in ckpt["model_state"].items():
        assert torch.equal(exp.tensors[name], t), name
    # The export translates exactly as the checkpoint it came from.
    sentences = ["w1 w2 w3", "w7 w7 w9 w10 w11", ""]
    opts = DecodingOptions(beam_size=3)
    a = Translator(good).translate(sentences, opts)
    b = Translator(good.parent / "model.pt").translate(sentences, opts)
    assert [[h.tokens for h in n] for n in a] == [[h.tokens for h in n] for n in b]


def test_export_command(good, tmp_path, capsys):
    assert main(["export", str(good.parent / "model.pt"), str(tmp_path / "cli")]) == 0
    assert "attention model" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "none.pt"), str(tmp_path / "x")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_tied_weights_export(tmp_path):
    exp = load_export(random_export(tmp_path, "transformer-post"))  # tied embeddings share storage
    assert torch.equal(exp.tensors["out.weight"], exp.tensors["tgt_embed.weight"])


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def edit_tensors(folder, change):
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


BROKEN = {
    "missing config": (lambda d: (d / "config.json").unlink(), "config.json: not found"),
    "malformed JSON": (lambda d: (d / "config.json").write_text('{"format_version": 1,'), "malformed JSON"),
    "not an object": (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a JSON object"),
    "newer version": (lambda d: edit_config(d, lambda c: c.update(format_version=FORMAT_VERSION + 1)),
                      "newer than this seq2seq reads"),
    "bad version": (lambda d: edit_config(d, lambda c: c.update(format_version="1")), "positive integer"),
    "missing key": (lambda d: edit_config(d, lambda c: c.pop("model")), r"missing key\(s\) \['model'\]"),
    "unknown field": (lambda d: edit_config(d, lambda c: c["model"].update(rotary=True)), "unknown field.*rotary"),
    "bad value": (lambda d: edit_config(d, lambda c: c["model"].update(cell="rnn")), "cell"),
    "family mismatch": (lambda d: edit_config(d, lambda c: c.update(family="rnn")), "family"),
    "special ids": (lambda d: edit_config(d, lambda c: c["special_ids"].update({"<eos>": 1})), "special_ids"),
    "missing weights": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors: not found"),
    "truncated weights": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
                          "not a readable safetensors file"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "not a readable safetensors"),
    "missing tensor": (lambda d: edit_tensors(d, lambda t: t.pop("out.bias")), r"missing tensors \['out.bias'\]"),
    "unexpected tensor": (lambda d: edit_tensors(d, lambda t: t.update(extra=torch.zeros(2))),
                          r"unexpected tensors \['extra'\]"),
    "wrong shape": (lambda d: edit_tensors(d, lambda t: t.update({"out.bias": torch.zeros(7)})),
                    r"out.bias has shape \(7,\)"),
    "wrong dtype": (lambda d: edit_tensors(d, lambda t: t.update({"out.bias": t["out.bias"].double()})),
                    "out.bias is torch.float64"),
    "NaN weights": (lambda d: edit_tensors(d, lambda t: t["out.bias"].__setitem__(0, float("nan"))), "NaN"),
    "missing tokenizer": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json: not found"),
    "decoding not an object": (lambda d: edit_config(d, lambda c: c.update(decoding=[1])),
                               '"decoding" must be an object of DecodingOptions fields'),
    "decoding unknown field": (lambda d: edit_config(d, lambda c: c.update(decoding={"return_attention": True})),
                               r"unknown field\(s\) \['return_attention'\]"),
    "decoding wrong type": (lambda d: edit_config(d, lambda c: c.update(decoding={"beam_size": 2.5})),
                            "beam_size must be an integer, not 2.5"),
    "decoding invalid": (lambda d: edit_config(d, lambda c: c.update(decoding={"alpha": -1})),
                         "DecodingOptions.alpha must be >= 0, got -1"),
    "config and weights disagree": (lambda d: edit_config(d, lambda c: c["model"].update(src_vocab=40)),
                                    r"encoder.embed.weight has shape \(23, 32\), the model needs \(40, 32\)"),
}


def test_decoding_defaults_are_kept_and_used(good, tmp_path, capsys):
    out = tmp_path / "defaults"
    assert main(["export", str(good.parent / "model.pt"), str(out), "--beam-size", "3", "--alpha", "1.5",
                 "--length-penalty", "average"]) == 0
    assert "decoding defaults: beam_size=3, length_penalty=average, alpha=1.5" in capsys.readouterr().out
    defaults = {"beam_size": 3, "length_penalty": "average", "alpha": 1.5}
    assert load_export(out).decoding == defaults and "decoding" not in load_export(good).config
    # seq2seq translate uses them where no flag is given, and a flag wins over them.
    (tmp_path / "in.txt").write_text("w1 w2 w3\n")
    def translate(*flags):
        assert main(["translate", "--model", str(out), "--scores", "--quiet", "--input", str(tmp_path / "in.txt"),
                     *flags]) == 0
        captured = capsys.readouterr()
        return captured.out, captured.err
    text, err = translate()
    assert "the model's decoding defaults: beam_size=3, length_penalty=average, alpha=1.5" in err
    expected = Translator(good).translate(["w1 w2 w3"], DecodingOptions(**defaults))[0][0]
    assert text == f"{expected.score:.6f}\t{expected.text}\n"
    # "average" divides by the length: a score a "none" penalty would not give
    assert expected.score == pytest.approx(expected.log_prob / (len(expected.tokens) + 1))
    text, err = translate("--length-penalty", "none")
    assert "length_penalty" not in err.partition("defaults:")[2]
    expected = Translator(good).translate(["w1 w2 w3"], DecodingOptions(beam_size=3, length_penalty="none"))[0][0]
    assert text == f"{expected.score:.6f}\t{expected.text}\n"


def test_bad_decoding_defaults_are_refused_before_writing(good, tmp_path, capsys):
    assert main(["export", str(good.parent / "model.pt"), str(tmp_path / "x"), "--n-best", "6"]) == 2
    assert "n_best=6 must be between 1 and beam_size=5" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_exports_are_named(copy, case):
    breaks, message = BROKEN[case]
    breaks(copy)
    with pytest.raises(ExportError, match=message):
        load_export(copy)


def test_not_a_directory(tmp_path, capsys):
    with pytest.raises(ExportError, match="not a directory"):
        load_export(tmp_path / "nothing")
    assert main(["translate", "--model", str(tmp_path), "--quiet"]) == 2  # no best.pt, no config.json
