"""Training: recipes, the loop, validation, checkpoints and exact resume.

    seq2seq train recipes/multi30k_de_en_attention.toml --lr=5e-4 --epochs=3

A recipe is a TOML file with [data], [model] and [train] tables whose keys are the fields
of DataConfig, ModelConfig and TrainConfig; ``--key=value`` overrides any of them by name
(names are unique across the three). Unknown tables or keys are errors.
"""

from __future__ import annotations

import json
import math
import random
import time
import tomllib
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from seq2seq.config import DataConfig, ModelConfig, TrainConfig, validate_train_config
from seq2seq.data import BatchIterator, PairTokenizer, encode_pairs, load_dataset
from seq2seq.data.tokenizers import PAD
from seq2seq.decoding import greedy_search
from seq2seq.models import build_model

SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
CHECKPOINT_FORMAT = 1


class TrainingError(Exception):
    pass


def parse_value(raw: str, default):
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if isinstance(default, tuple):
        return tuple(p for p in raw.split(",") if p)
    return type(default)(raw)


def load_recipe(path: str | None, overrides: list[str] = ()) -> tuple[DataConfig, ModelConfig, TrainConfig]:
    values: dict[str, dict] = {name: {} for name in SECTIONS}
    if path:
        try:
            recipe = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: recipe not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: malformed TOML ({e})") from None
        for section, table in recipe.items():
            if section not in SECTIONS:
                raise ValueError(f"{path}: unknown table [{section}]; use [data], [model] and [train]")
            known = {f.name for f in fields(SECTIONS[section])}
            for key, value in table.items():
                if key not in known:
                    raise ValueError(f"{path}: unknown key {key!r} in [{section}]; known keys: {', '.join(sorted(known))}")
                values[section][key] = tuple(value) if isinstance(value, list) else value
    owners = {f.name: (section, f.default) for section, cls in SECTIONS.items() for f in fields(cls)}
    for item in overrides:
        key, sep, raw = item.removeprefix("--").partition("=")
        key = key.replace("-", "_")
        if not sep or key not in owners:
            raise ValueError(f"unknown override {item!r}; write --key=value with a field of DataConfig, "
                             "ModelConfig or TrainConfig (seq2seq/config.py)")
        section, default = owners[key]
        try:
            values[section][key] = parse_value(raw, default)
        except ValueError as e:
            raise ValueError(f"override {item!r}: {e}") from None
    return DataConfig(**values["data"]), ModelConfig(**values["model"]), TrainConfig(**values["train"])


def teacher_forcing_ratio(cfg: TrainConfig, step: int) -> float:
    if cfg.tf_schedule == "linear":
        frac = min(step / max(cfg.tf_decay_steps, 1), 1.0)
        return cfg.teacher_forcing + (cfg.tf_min - cfg.teacher_forcing) * frac
    if cfg.tf_schedule == "inverse_sigmoid":  # Bengio et al. (2015): k / (k + exp(step / k))
        k = max(cfg.tf_decay_steps, 1)
        return max(cfg.tf_min, cfg.teacher_forcing * k / (k + math.exp(min(step / k, 700))))
    return cfg.teacher_forcing


def token_loss(log_probs, gold, label_smoothing: float = 0.0):
    """Mean cross-entropy over non-padding target tokens, with optional label smoothing."""
    mask = gold != PAD
    nll = -log_probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
    return nll[mask].sum() / mask.sum()


def make_scheduler(optimizer, cfg: TrainConfig):
    if cfg.schedule == "inverse_sqrt":
        warm = max(cfg.warmup_steps, 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warm, math.sqrt(warm / (s + 1))))
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def layer_grad_norms(model) -> dict[str, float]:
    """Gradient norm per top-level layer, to see gradients vanish through long sequences."""
    norms: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            layer = ".".join(name.split(".")[:2])
            norms[layer] = norms.get(layer, 0.0) + p.grad.detach().float().pow(2).sum().item()
    return {k: math.sqrt(v) for k, v in norms.items()}


@torch.no_grad()
def evaluate_loss(model, batches, device) -> dict[str, float]:
    model.eval()
    total, tokens, correct = 0.0, 0, 0
    for batch in batches:
        batch = batch.to(device)
        log_probs = model(batch.src, batch.src_lengths, batch.tgt[:, :-1]).float()
        gold = batch.tgt[:, 1:]
        mask = gold != PAD
        total += -log_probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1)[mask].sum().item()
        correct += (log_probs.argmax(-1) == gold)[mask].sum().item()
        tokens += mask.sum().item()
    loss = total / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_token_acc": correct / max(tokens, 1)}


def rng_states() -> dict:
    states = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("--device=cuda asked for, but torch sees no CUDA device; use --device=cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def train(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool = False,
          log=print, progress: bool = True) -> dict:
    """Train and return the last epoch's metrics; checkpoints go to out_dir/{last,best}.pt."""
    validate_train_config(train_cfg)
    out = Path(train_cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = None
    if resume:
        path = out / "last.pt"
        if not path.exists():
            raise TrainingError(f"--resume: no checkpoint at {path}; train without --resume first")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        saved = {"data": checkpoint["data"], "model": checkpoint["model"]}
        given = {"data": asdict(data_cfg), "model": asdict(model_cfg)}
        ignored = [f"{k}={given[t][k]!r} (checkpoint: {v!r})" for t in saved for k, v in saved[t].items()
                   if k not in ("src_vocab", "tgt_vocab") and given[t][k] != v]
        if ignored:
            log("warning: --resume keeps the checkpoint's data and model settings; ignored: " + ", ".join(ignored))
        data_cfg, model_cfg = DataConfig(**checkpoint["data"]), ModelConfig(**checkpoint["model"])
    random.seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed)
    device = pick_device(train_cfg)

    data = load_dataset(data_cfg, ["train", "val"])
    for line in data.log:
        log(line)
    if checkpoint:
        tokenizer = PairTokenizer.from_state(checkpoint["tokenizer"])
    else:
        tokenizer = PairTokenizer.train(data.splits["train"], data_cfg)
        model_cfg.src_vocab, model_cfg.tgt_vocab = tokenizer.src.vocab_size, tokenizer.tgt.vocab_size
    train_batches = BatchIterator(encode_pairs(tokenizer, data.splits["train"]), data_cfg)
    val_batches = BatchIterator(encode_pairs(tokenizer, data.splits["val"]), data_cfg, shuffle=False)

    model = build_model(model_cfg).to(device)
    opt_cls = torch.optim.AdamW if train_cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = make_scheduler(optimizer, train_cfg)
    progress_state = {"epoch": 0, "step": 0, "best": None, "bad_epochs": 0}
    if checkpoint:
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress_state = checkpoint["progress"]
        set_rng_states(checkpoint["rng"])
        log(f"resumed from {out / 'last.pt'} after epoch {progress_state['epoch']}, step {progress_state['step']}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{model_cfg.family} model, {n_params:,} parameters, on {device}; "
        f"{len(data.splits['train']):,} training pairs, vocab {model_cfg.src_vocab:,}/{model_cfg.tgt_vocab:,}")

    metrics_log = open(out / "metrics.jsonl", "a")
    higher_is_better = train_cfg.early_stop_metric == "val_token_acc"
    metrics: dict = {}
    step = progress_state["step"]
    for epoch in range(progress_state["epoch"] + 1, train_cfg.epochs + 1):
        model.train()
        train_batches.set_epoch(epoch)
        bar = tqdm(train_batches, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        started, tokens, epoch_loss, epoch_tokens = time.perf_counter(), 0, 0.0, 0
        for batch in bar:
            batch = batch.to(device)
            tf = teacher_forcing_ratio(train_cfg, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_cfg.bf16 and device.type == "cuda"):
                log_probs = model(batch.src, batch.src_lengths, batch.tgt[:, :-1], teacher_forcing=tf)
            loss = token_loss(log_probs.float(), batch.tgt[:, 1:], train_cfg.label_smoothing)
            if not torch.isfinite(loss):
                last = out / "last.pt"
                raise TrainingError(f"loss is {loss.item()} at step {step + 1} (epoch {epoch}); last good checkpoint: "
                                    f"{last if last.exists() else 'none yet'}. Lower --lr or set --clip-norm")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss.item(), "lr": optimizer.param_groups[0]["lr"], "tf": tf}
            if train_cfg.log_every and step % train_cfg.log_every == 0:
                record["grad_norms"] = layer_grad_norms(model)
                metrics_log.write(json.dumps(record) + "\n")
            if train_cfg.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_norm)
            optimizer.step()
            if train_cfg.schedule != "plateau":
                scheduler.step()
            n = int((batch.tgt[:, 1:] != PAD).sum())
            tokens += n + int(batch.src_lengths.sum())
            epoch_loss += loss.item() * n
            epoch_tokens += n
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}",
                            lr=f"{record['lr']:.2e}")
            if train_cfg.max_steps and step >= train_cfg.max_steps:
                break
        metrics = {"epoch": epoch, "step": step, "train_loss": epoch_loss / max(epoch_tokens, 1),
                   "tokens_per_s": tokens / (time.perf_counter() - started)}
        metrics.update(evaluate_loss(model, val_batches, device))
        if train_cfg.schedule == "plateau":
            scheduler.step(metrics["val_loss"])
        metrics_log.write(json.dumps(metrics) + "\n")
        metrics_log.flush()
        log(f"epoch {epoch}: train loss {metrics['train_loss']:.3f}, val loss {metrics['val_loss']:.3f}, "
            f"ppl {metrics['val_ppl']:.2f}, token acc {metrics['val_token_acc']:.3f}, "
            f"{metrics['tokens_per_s']:.0f} tok/s")
        show_samples(model, tokenizer, data.splits["val"][: train_cfg.samples], device, log)

        value = metrics[train_cfg.early_stop_metric]
        best = progress_state["best"]
        improved = best is None or (value > best if higher_is_better else value < best)
        progress_state.update(epoch=epoch, step=step, best=value if improved else best,
                              bad_epochs=0 if improved else progress_state["bad_epochs"] + 1)
        ckpt = {
            "format": CHECKPOINT_FORMAT, "data": asdict(data_cfg), "model": asdict(model_cfg),
            "train": asdict(train_cfg), "tokenizer": tokenizer.state(), "model_state": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states(),
            "progress": dict(progress_state), "metrics": metrics,
        }
        torch.save(ckpt, out / "last.pt.tmp")
        (out / "last.pt.tmp").replace(out / "last.pt")
        if improved:
            torch.save(ckpt, out / "best.pt")
        if train_cfg.patience and progress_state["bad_epochs"] >= train_cfg.patience:
            log(f"early stop: {train_cfg.early_stop_metric} has not improved for {train_cfg.patience} epochs")
            break
        if train_cfg.max_steps and step >= train_cfg.max_steps:
            break
    metrics_log.close()
    return metrics


def show_samples(model, tokenizer, pairs, device, log) -> None:
    if not pairs:
        return
    from seq2seq.data import collate, make_example

    model.eval()
    batch = collate([make_example(tokenizer.src.encode(s), []) for s, _ in pairs], list(range(len(pairs)))).to(device)
    max_len = int(batch.src_lengths.max()) * 2 + 10
    for (src, ref), ids in zip(pairs, greedy_search(model, batch.src, batch.src_lengths, max_len)):
        log(f"  src: {src}\n  ref: {ref}\n  out: {tokenizer.tgt.decode(ids)}")
