import json

import torch

from seq2seq.cli import main
from seq2seq.export import load_export
from seq2seq.train import load_recipe, train

TINY = ["--corpus=reverse", "--tokenizer=word", "--min_freq=1", "--synthetic_train_size=200",
        "--synthetic_eval_size=20", "--max_tokens=400", "--family=attention", "--attention=general",
        "--emb_dim=16", "--hidden=32", "--layers=1", "--samples=0", "--val_bleu=false", "--tensorboard=false"]


def run(out, *extra):
    data_cfg, model_cfg, train_cfg = load_recipe(None, TINY + [f"--out_dir={out}", *extra])
    train(data_cfg, model_cfg, train_cfg, log=lambda *_: None, progress=False)


def test_training_keeps_the_last_epochs_and_average_writes_their_mean(tmp_path, capsys):
    run(tmp_path, "--epochs=3", "--keep_epochs=2")
    assert sorted(p.name for p in tmp_path.glob("epoch*.pt")) == ["epoch2.pt", "epoch3.pt"]
    two, three = (torch.load(tmp_path / f"epoch{n}.pt", weights_only=False) for n in (2, 3))
    assert two["progress"]["epoch"] == 2 and three["progress"]["epoch"] == 3
    assert torch.equal(three["model_state"]["out.weight"],
                       torch.load(tmp_path / "last.pt", weights_only=False)["model_state"]["out.weight"])

    out = tmp_path / "avg.pt"
    assert main(["average", str(tmp_path), "--out", str(out)]) == 0
    assert "the mean of 2 checkpoints" in capsys.readouterr().out
    avg = torch.load(out, weights_only=False)
    assert set(avg["model_state"]) == set(three["model_state"])
    for name, value in avg["model_state"].items():
        expected = (two["model_state"][name].double() + three["model_state"][name].double()) / 2
        assert value.dtype == three["model_state"][name].dtype
        assert torch.equal(value, expected.to(value.dtype))  # the float64 mean, rounded once
    assert not torch.equal(avg["model_state"]["out.weight"], three["model_state"]["out.weight"])
    assert "optimizer" not in avg and avg["averaged_from"] == [str(tmp_path / "epoch2.pt"), str(tmp_path / "epoch3.pt")]

    assert main(["export", str(out), str(tmp_path / "export")]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["source"]["averaged_from"] == avg["averaged_from"] and config["source"]["epoch"] == 3
    exp = load_export(tmp_path / "export")
    torch.testing.assert_close(exp.tensors["out.weight"], avg["model_state"]["out.weight"])


def test_average_refuses_what_is_not_one_model(tmp_path, capsys):
    run(tmp_path / "a", "--epochs=2", "--keep_epochs=2")
    run(tmp_path / "b", "--epochs=1", "--hidden=24")
    out = str(tmp_path / "avg.pt")

    assert main(["average", str(tmp_path / "a" / "epoch2.pt"), str(tmp_path / "b" / "last.pt"), "--out", out]) == 2
    assert "not checkpoints of one model: their model settings differ (hidden)" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a"), "--last", "1", "--out", out]) == 2
    assert "at least two checkpoints, got 1" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "b"), "--out", out]) == 2
    assert "no epoch{N}.pt checkpoints in this folder; train with --keep_epochs=N" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "a" / "epoch2.pt"), str(tmp_path / "a" / "epoch2.pt"), "--out", out]) == 2
    assert "the same checkpoint is given twice" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["average", str(tmp_path / "junk.pt"), str(tmp_path / "a" / "epoch2.pt"), "--out", out]) == 2
    assert "junk.pt: not a readable checkpoint" in capsys.readouterr().err
    assert main(["average", str(tmp_path / "missing.pt"), str(tmp_path / "a"), "--out", out]) == 2
    assert "missing.pt: no such checkpoint file or folder" in capsys.readouterr().err
    assert not (tmp_path / "avg.pt").exists()
    assert main(["train", "--keep_epochs=-1", f"--out_dir={tmp_path / 'c'}"] + TINY) == 2
    assert "keep_epochs must be >= 0" in capsys.readouterr().err
