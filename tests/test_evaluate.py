import json
import math
import subprocess
import sys

import pytest
import torch

from seq2seq.cli import main
from seq2seq.config import DecodingOptions
from seq2seq.data import load_dataset
from seq2seq.evaluate import bucket_name, score
from seq2seq.train import load_recipe, train
from seq2seq.translate import Translator

TINY = ["--corpus=reverse", "--tokenizer=word", "--min_freq=1", "--synthetic_train_size=3000",
        "--synthetic_eval_size=40", "--max_tokens=800", "--emb_dim=32", "--hidden=64", "--layers=1",
        "--dropout=0", "--samples=0", "--epochs=5", "--lr=5e-3", "--val_bleu=false", "--tensorboard=false"]


def trained(folder, *extra):
    data_cfg, model_cfg, train_cfg = load_recipe(None, TINY + [f"--out_dir={folder}", *extra])
    train(data_cfg, model_cfg, train_cfg, log=lambda *_: None, progress=False)
    return folder / "best.pt"


@pytest.fixture(scope="module")
def attention_ckpt(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("attn"), "--family=attention", "--attention=bahdanau")


@pytest.fixture(scope="module")
def transformer_ckpt(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("tf"), "--family=transformer", "--d_model=32", "--heads=2",
                   "--ff_dim=64", "--enc_layers=1", "--dec_layers=1")


def test_bleu_and_accuracy_by_hand():
    hyps, refs = ["a b c d e f", "x y z w"], ["a b c d e g", "x y z w"]
    srcs = ["one two three", " ".join(["w"] * 15)]
    report = score(hyps, refs, srcs)
    # Matched / total n-grams over the corpus: 9/10, 7/8, 5/6, 3/4; equal lengths, so no brevity penalty.
    assert report["bleu"] == pytest.approx(100 * (9 / 10 * 7 / 8 * 5 / 6 * 3 / 4) ** 0.25, abs=1e-9)
    assert report["sequence_accuracy"] == 0.5
    assert report["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert [b["bucket"] for b in report["bleu_by_source_length"]] == ["1-10", "11-20"]
    assert report["bleu_by_source_length"][1]["bleu"] == pytest.approx(100.0)
    assert [bucket_name(n) for n in (1, 10, 11, 50, 51)] == ["1-10", "1-10", "11-20", "41-50", "51+"]
    with pytest.raises(ValueError, match="exactly one hypothesis and one reference"):
        score(hyps, refs[:1], srcs)


def test_evaluate_matches_sacrebleu_command_line(attention_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(attention_ckpt), "--split", "test", "--beam-size", "3",
                 "--out", str(out), "--quiet"]) == 0
    assert "BLEU signature: `nrefs:1|case:mixed" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    translator = Translator(attention_ckpt)
    pairs = load_dataset(translator.data_cfg, ["test"]).splits["test"]
    (tmp_path / "ref.txt").write_text("".join(t + "\n" for _, t in pairs))
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(out / "hypotheses.txt"),
                          "-b", "-w", "6"], capture_output=True, text=True, check=True)
    assert report["bleu"] == pytest.approx(float(cli.stdout), abs=1e-6)
    assert report["sentences"] == len(pairs) == len((out / "hypotheses.txt").read_text().splitlines())
    assert report["decoding"]["beam_size"] == 3 and report["split"] == "test"
    assert report["bleu"] > 50 and math.isfinite(report["perplexity"])  # the reversal is learnt
    assert "| source words | sentences | BLEU |" in (out / "report.md").read_text()


def test_translate_command(attention_ckpt, tmp_path, capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("1 2 3 4\n\n5 6 7\n"))
    assert main(["translate", "--model", str(attention_ckpt), "--beam-size", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[1] == ""
    (tmp_path / "in.txt").write_text("1 2 3 4\n5 6 7\n")
    assert main(["translate", "--model", str(attention_ckpt), "--input", str(tmp_path / "in.txt"),
                 "--beam-size", "3", "--n-best", "3", "--quiet"]) == 0
    nbest = capsys.readouterr().out.splitlines()
    assert len(nbest) == 6 and [line.split(" ||| ")[0] for line in nbest] == ["0"] * 3 + ["1"] * 3
    scores = [float(line.split(" ||| ")[2]) for line in nbest[:3]]
    assert scores == sorted(scores, reverse=True)


def test_translator_agrees_with_the_decoder_alone(attention_ckpt):
    translator = Translator(attention_ckpt)
    sentences = ["1 2 3", "4 5 6 7 8 9 10", "11", "3 2 1 0 12 13"]
    opts = DecodingOptions(beam_size=4)
    together = translator.translate(sentences, opts, max_tokens=10_000)
    alone = [translator.translate([s], opts)[0] for s in sentences]
    assert [r[0].text for r in together] == [r[0].text for r in alone]


@pytest.mark.parametrize("args, message", [
    (["--model", "nowhere.pt"], "no such checkpoint"),
    (["--model", "{junk}"], "not a readable checkpoint"),
    (["--model", "{ckpt}", "--beam-size", "0"], "beam_size must be >= 1"),
    (["--model", "{ckpt}", "--input", "{missing}"], "cannot read it"),
])
def test_translate_errors_are_named(args, message, attention_ckpt, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(attention_ckpt.read_bytes()[:1000])  # a truncated download
    args = [a.format(junk=junk, ckpt=attention_ckpt, missing=tmp_path / "missing.txt") for a in args]
    assert main(["translate", *args]) == 2
    assert message in capsys.readouterr().err


def test_plot_attention_rnn_and_transformer_heads(attention_ckpt, transformer_ckpt, tmp_path, capsys):
    assert main(["plot-attention", "--model", str(attention_ckpt), "1 2 3 4 5", "6 7", "--out", str(tmp_path / "a")]) == 0
    assert main(["plot-attention", "--model", str(transformer_ckpt), "1 2 3 4 5", "--out", str(tmp_path / "t")]) == 0
    for png in [tmp_path / "a" / "attention_1.png", tmp_path / "a" / "attention_2.png", tmp_path / "t" / "attention_1.png"]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = Translator(transformer_ckpt).translate(["1 2 3 4 5"], DecodingOptions(return_attention=True))[0][0]
    assert t.attention.shape == (len(t.tokens) + 1, 2, 6)  # steps x heads x (5 tokens + </s>)
    torch.testing.assert_close(t.attention.sum(-1), torch.ones(len(t.tokens) + 1, 2))
    capsys.readouterr()
    assert main(["plot-attention", "--model", str(attention_ckpt), "--out", str(tmp_path)]) == 2
    assert "give sentences" in capsys.readouterr().err


def test_beam_study_rows_and_plot(attention_ckpt, tmp_path):
    from seq2seq.study import beam_study, markdown_beams

    rows = beam_study(attention_ckpt, "test", tmp_path, beams=(1, 3), log=lambda *_: None)
    assert [r["beam"] for r in rows] == [1, 3] and all(r["bleu"] > 50 for r in rows)
    assert (tmp_path / "beams_bleu.png").read_bytes()[:4] == b"\x89PNG"
    assert markdown_beams(rows).count("\n") == 4


def test_synthetic_study_small(tmp_path):
    from seq2seq.study import markdown_synthetic, synthetic_study

    rows = synthetic_study(tmp_path, tasks=("reverse",), max_len=5, train_size=300, epochs=1, log=lambda *_: None)
    assert {r["model"] for r in rows} == {"vanilla LSTM", "attention LSTM (Bahdanau)"}
    assert {r["length"] for r in rows} == {2, 3, 4, 5}
    assert all(0 <= r["sequence_accuracy"] <= 1 for r in rows)
    assert sum(r["sentences"] for r in rows) == 2 * 1000
    assert (tmp_path / "synthetic_reverse.png").exists() and "| reverse | vanilla LSTM |" in markdown_synthetic(rows)


def test_families_study_small(tmp_path):
    from seq2seq.study import markdown_families, families_study

    small = ["--tokenizer=word", "--min_freq=1", "--synthetic_max_len=6", "--synthetic_train_size=200",
             "--synthetic_eval_size=60", "--emb_dim=16", "--hidden=32", "--d_model=32", "--ff_dim=64",
             "--enc_layers=1", "--dec_layers=1", "--max_tokens=400", "--max_steps=3"]
    models = ["vanilla GRU", "Bahdanau (bi-GRU)", "Transformer (3+3 layers)"]
    rows = families_study(tmp_path, corpus="reverse", src="", tgt="", split="test", epochs=1, beam=2,
                          models=models, overrides=small, log=lambda *_: None)
    assert [r["model"] for r in rows] == models
    assert all(sum(b["sentences"] for b in r["bleu_by_source_length"]) == 60 for r in rows)
    assert all(r["perplexity"] > 1 and r["parameters"] > 0 for r in rows)
    assert len({r["parameters"] for r in rows}) == 3  # three different architectures were built
    assert (tmp_path / "families_bleu_by_length.png").read_bytes()[:4] == b"\x89PNG"
    table = markdown_families(rows)
    assert table.count("| vanilla GRU |") == 1 and "BLEU 1-8" in table

    # rerunning one model replaces its row and keeps the others
    again = families_study(tmp_path, corpus="reverse", src="", tgt="", split="test", epochs=1, beam=2,
                           models=["vanilla GRU"], overrides=[*small, "--hidden=48"], log=lambda *_: None)
    assert [r["model"] for r in again] == models
    assert again[0]["parameters"] != rows[0]["parameters"] and again[1:] == rows[1:]


def test_evaluate_both_backends_reports_parity(attention_ckpt, tmp_path, capsys):
    pytest.importorskip("seq2seq._C", reason="the C++ engine is not built")
    out = tmp_path / "both"
    assert main(["evaluate", "--model", str(attention_ckpt), "--split", "test", "--beam-size", "3",
                 "--backend", "both", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "parity: 40 of 40 translations identical" in printed and "| cpp |" in printed
    cpp, python = (json.loads((out / b / "report.json").read_text()) for b in ("cpp", "python"))
    assert cpp["bleu"] == python["bleu"] > 50 and cpp["backend"] == "cpp"
    assert (out / "cpp" / "hypotheses.txt").read_text() == (out / "python" / "hypotheses.txt").read_text()
    assert json.loads((out / "parity.json").read_text())["first_difference"] is None
