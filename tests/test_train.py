import json
import os
import math
from pathlib import Path

import pytest
import torch

from seq2seq import train as train_mod
from seq2seq.cli import main
from seq2seq.config import TrainConfig
from seq2seq.train import TrainingError, load_recipe, teacher_forcing_ratio, train

TINY = ["--corpus=reverse", "--tokenizer=word", "--min_freq=1", "--synthetic_train_size=300",
        "--synthetic_eval_size=40", "--max_tokens=400", "--family=attention", "--attention=general",
        "--emb_dim=16", "--hidden=32", "--layers=1", "--dropout=0.1", "--samples=1", "--log_every=1"]


def run(tmp, *extra, resume=False):
    data_cfg, model_cfg, train_cfg = load_recipe(None, TINY + [f"--out_dir={tmp}", *extra])
    return train(data_cfg, model_cfg, train_cfg, resume=resume, log=lambda *_: None, progress=False)


def steps(path):
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def test_resume_continues_exactly(tmp_path):
    straight = run(tmp_path / "a", "--epochs=2")
    run(tmp_path / "b", "--epochs=1")
    resumed = run(tmp_path / "b", "--epochs=2", resume=True)
    a, b = steps(tmp_path / "a" / "metrics.jsonl"), steps(tmp_path / "b" / "metrics.jsonl")
    first_of_epoch_2 = next(i for i, r in enumerate(a) if r["epoch"] == 2)
    assert b[first_of_epoch_2]["epoch"] == 2
    assert b[first_of_epoch_2]["loss"] == a[first_of_epoch_2]["loss"]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert resumed["val_loss"] == straight["val_loss"]
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert ckpt["progress"]["epoch"] == 2 and set(ckpt) >= {"tokenizer", "optimizer", "scheduler", "rng", "model"}


def test_training_lowers_validation_loss(tmp_path):
    first = run(tmp_path, "--epochs=1", "--lr=3e-3")
    later = run(tmp_path, "--epochs=4", "--lr=3e-3", resume=True)
    assert later["val_loss"] < first["val_loss"] and math.isfinite(later["val_ppl"])
    assert (tmp_path / "best.pt").exists()
    records = steps(tmp_path / "metrics.jsonl")
    assert "grad_norms" in records[0] and any(k.startswith("encoder") for k in records[0]["grad_norms"])


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, "--epochs=1")
    real = train_mod.token_nll
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        nll, n = real(*args, **kwargs)
        return (nll * float("nan") if calls["n"] == 3 else nll), n
    monkeypatch.setattr(train_mod, "token_nll", poisoned)
    with pytest.raises(TrainingError, match=r"loss is nan at step \d+ .*last good checkpoint: .*last\.pt"):
        run(tmp_path, "--epochs=2", resume=True)


def test_teacher_forcing_schedules():
    cfg = TrainConfig(teacher_forcing=1.0, tf_min=0.2, tf_schedule="linear", tf_decay_steps=100)
    assert [teacher_forcing_ratio(cfg, s) for s in (0, 50, 100, 500)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    cfg = TrainConfig(tf_schedule="inverse_sigmoid", tf_decay_steps=10)
    assert teacher_forcing_ratio(cfg, 0) == pytest.approx(10 / 11)
    assert teacher_forcing_ratio(cfg, 100) == pytest.approx(10 / (10 + math.exp(10)))
    assert teacher_forcing_ratio(TrainConfig(teacher_forcing=0.5), 10 ** 6) == 0.5


def test_recipe_errors_name_the_key(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[model]\nfamily = 'attention'\nhiden = 3\n")
    with pytest.raises(ValueError, match=r"r\.toml: unknown key 'hiden' in \[model\]"):
        load_recipe(str(recipe))
    with pytest.raises(ValueError, match=r"unknown override '--lr-max=3'"):
        load_recipe(None, ["--lr-max=3"])
    with pytest.raises(ValueError, match=r"override '--bidirectional=maybe': expected true or false"):
        load_recipe(None, ["--bidirectional=maybe"])
    assert main(["train", str(recipe)]) == 2
    assert "unknown key 'hiden'" in capsys.readouterr().err
    data, model, tr = load_recipe(None, ["--bidirectional=true", "--lr=5e-4", "--max-len=20"])
    assert model.bidirectional is True and tr.lr == 5e-4 and data.max_len == 20


def test_resume_warns_about_ignored_model_settings(tmp_path):
    run(tmp_path, "--epochs=1")
    data_cfg, model_cfg, train_cfg = load_recipe(None, TINY + [f"--out_dir={tmp_path}", "--epochs=1", "--hidden=48"])
    lines = []
    train(data_cfg, model_cfg, train_cfg, resume=True, log=lines.append, progress=False)
    assert any("ignored: hidden=48 (checkpoint: 32)" in line for line in lines)


def test_bf16_on_the_cpu_says_it_trains_in_float32(tmp_path):
    data_cfg, model_cfg, train_cfg = load_recipe(None, TINY + [f"--out_dir={tmp_path}", "--epochs=1", "--bf16=true",
                                                               "--device=cpu"])
    lines = []
    train(data_cfg, model_cfg, train_cfg, log=lines.append, progress=False)
    assert any("--bf16 autocasts on CUDA only; on cpu training runs in float32" in line for line in lines)


def test_two_process_torchrun_matches_one_process(tmp_path):
    """Data-parallel training on CPU (gloo): the same global batches give the same losses."""
    import subprocess
    import sys

    # Plain SGD: unlike Adam, its updates change with any mistake in the gradient's scale.
    args = TINY + ["--dropout=0", "--epochs=2", "--optimizer=sgd", "--lr=1.0", "--clip_norm=0",
                   "--val_bleu=false", "--tensorboard=false", "--device=cpu"]
    run(tmp_path / "one", *args[len(TINY):])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "seq2seq", "train", "--quiet", *args, f"--out_dir={tmp_path / 'two'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = steps(tmp_path / "one" / "metrics.jsonl"), steps(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) > 10 and one[-1]["loss"] < one[0]["loss"] - 0.05
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5), (a["step"], a["loss"], b["loss"])
    assert done.stdout.count("epoch 2: train loss") == 1  # one process logs
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    one_ckpt = torch.load(tmp_path / "one" / "last.pt", weights_only=False)["model_state"]
    two_ckpt = torch.load(tmp_path / "two" / "last.pt", weights_only=False)["model_state"]
    for name, tensor in one_ckpt.items():
        torch.testing.assert_close(two_ckpt[name], tensor, rtol=1e-3, atol=1e-4)


def test_tensorboard_logs_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path, "--epochs=1")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/val_loss", "epoch/val_bleu"} <= set(tags)
    assert any(t.startswith("grad_norm/encoder") for t in tags)
    losses = [e.value for e in events.Scalars("train/loss")]
    records = steps(tmp_path / "metrics.jsonl")
    assert losses == pytest.approx([r["loss"] for r in records], rel=1e-6)


@pytest.mark.parametrize("recipe", sorted(p.name for p in (Path(__file__).parent.parent / "recipes").glob("*.toml")))
def test_every_shipped_recipe_loads_and_builds_its_model(recipe):
    """A typo in a shipped recipe would otherwise surface only when someone trains with it."""
    from dataclasses import replace

    from seq2seq.config import validate_data_config, validate_train_config
    from seq2seq.models import build_model

    data_cfg, model_cfg, train_cfg = load_recipe(str(Path(__file__).parent.parent / "recipes" / recipe))
    validate_data_config(data_cfg)
    validate_train_config(train_cfg)
    # The vocabulary sizes come from the tokenizer at training time; small ones build quickly.
    src_vocab, tgt_vocab = (64, 64) if model_cfg.copy else (64, 72)
    model = build_model(replace(model_cfg, src_vocab=src_vocab, tgt_vocab=tgt_vocab))
    assert sum(p.numel() for p in model.parameters()) > 0
