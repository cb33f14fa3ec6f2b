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
import os
import time
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import sacrebleu
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seq2seq.data.corpora import corpus_task
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


def token_nll(log_probs, gold, label_smoothing: float = 0.0):
    """Summed cross-entropy over non-padding target tokens (with optional label smoothing),
    and the number of those tokens; the caller divides, so that data-parallel processes can
    divide by the global count."""
    mask = gold != PAD
    nll = -log_probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
    return nll[mask].sum(), int(mask.sum())


@dataclass
class Workers:
    """This process's place among data-parallel training processes (torchrun sets RANK
    and WORLD_SIZE; pick_device reads LOCAL_RANK). Every process builds the same global
    batches from the same seed and computes on its own slice of each: sentences rank,
    rank + world, ..."""
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> list[int]:
        return list(range(self.rank, n, self.world))

    def parts(self, batches):
        """This process's slice of each batch, skipping batches it has no sentence of."""
        for batch in batches:
            rows = self.rows(len(batch))
            if rows:
                yield batch.select(rows) if self.world > 1 else batch

    def sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def start_workers(device: torch.device) -> tuple[Workers, bool]:
    """Join the process group torchrun describes; returns (workers, whether we started it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Workers(), False
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Workers(dist.get_rank(), dist.get_world_size()), started


def make_optimizer(params, cfg: TrainConfig):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
def evaluate_loss(model, batches, device, workers: Workers = Workers()) -> dict[str, float]:
    """Teacher-forced validation loss, perplexity and token accuracy (each process
    scores its slice of every batch; the sums are combined)."""
    model.eval()
    total, tokens, correct = 0.0, 0, 0
    for batch in workers.parts(batches):
        batch = batch.to(device)
        log_probs = model(batch.src, batch.src_lengths, batch.tgt[:, :-1]).float()
        gold = batch.tgt[:, 1:]
        mask = gold != PAD
        total += -log_probs.gather(-1, gold.unsqueeze(-1)).squeeze(-1)[mask].sum().item()
        correct += (log_probs.argmax(-1) == gold)[mask].sum().item()
        tokens += mask.sum().item()
    total, tokens, correct = workers.sum([total, tokens, correct], device)
    loss = total / max(tokens, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_token_acc": correct / max(tokens, 1)}


@torch.no_grad()
def validation_bleu(model, batches, tokenizer, pairs, device, workers: Workers = Workers(),
                    tokenize: str = "13a") -> float:
    """sacreBLEU corpus BLEU of greedy translations against the detokenized references
    (``tokenize="char"`` for names, where word 4-grams rarely exist)."""
    model.eval()
    hyps: dict[int, str] = {}
    for batch in workers.parts(batches):
        batch = batch.to(device)
        for i, nbest in zip(batch.indices.tolist(), greedy_search(model, batch.src, batch.src_lengths)):
            hyps[i] = tokenizer.tgt.decode(nbest[0].tokens)
    for part in workers.gather(hyps):
        hyps.update(part)
    order = sorted(hyps)
    return sacrebleu.corpus_bleu([hyps[i] for i in order], [[pairs[i][1] for i in order]], tokenize=tokenize).score


def tensorboard_writer(cfg: TrainConfig, out: Path, log):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("note: TensorBoard logs skipped (pip install tensorboard to get them)")
        return None
    return SummaryWriter(str(out / "tensorboard"))


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
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def save_checkpoint(ckpt: dict, out: Path, best: bool, keep_epochs: int = 0) -> None:
    # Written beside and renamed: a process killed while writing leaves the previous file intact.
    epoch = ckpt["progress"]["epoch"]
    names = ["last.pt"] + (["best.pt"] if best else []) + ([f"epoch{epoch}.pt"] if keep_epochs else [])
    for name in names:
        torch.save(ckpt, out / f"{name}.tmp")
        (out / f"{name}.tmp").replace(out / name)
    if keep_epochs:
        from seq2seq.average import epoch_checkpoints

        for old in epoch_checkpoints(out)[:-keep_epochs]:
            old.unlink()


def train(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool = False,
          log=print, progress: bool = True) -> dict:
    """Train and return the last epoch's metrics; checkpoints go to out_dir/{last,best}.pt.

    Under torchrun every process runs this function; process 0 alone logs and writes."""
    validate_train_config(train_cfg)
    device = pick_device(train_cfg)
    workers, started_group = start_workers(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not workers.main:
        log, progress = (lambda *_: None), False
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

    if model_cfg.copy and not data_cfg.joint_vocab:
        raise ValueError("model.copy copies source tokens into the output: it needs one vocabulary for both sides; "
                         "set data.joint_vocab = true")
    data = load_dataset(data_cfg, ["train", "val"])
    for line in data.log:
        log(line)
    if checkpoint:
        tokenizer = PairTokenizer.from_state(checkpoint["tokenizer"])
    elif workers.world == 1:
        tokenizer = PairTokenizer.train(data.splits["train"], data_cfg)
    else:  # one process trains it, so that every process surely has the same vocabulary
        state = PairTokenizer.train(data.splits["train"], data_cfg).state() if workers.main else None
        tokenizer = PairTokenizer.from_state(workers.broadcast(state))
    if not checkpoint:
        model_cfg.src_vocab, model_cfg.tgt_vocab = tokenizer.src.vocab_size, tokenizer.tgt.vocab_size
    train_batches = BatchIterator(encode_pairs(tokenizer, data.splits["train"]), data_cfg)
    val_batches = BatchIterator(encode_pairs(tokenizer, data.splits["val"]), data_cfg, shuffle=False)
    by_character = corpus_task(data_cfg) == "transliteration"

    core = build_model(model_cfg).to(device)
    optimizer = make_optimizer(core.parameters(), train_cfg)
    scheduler = make_scheduler(optimizer, train_cfg)
    progress_state = {"epoch": 0, "step": 0, "best": None, "bad_epochs": 0}
    if checkpoint:
        core.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        progress_state = checkpoint["progress"]
        set_rng_states(checkpoint["rng"])
        log(f"resumed from {out / 'last.pt'} after epoch {progress_state['epoch']}, step {progress_state['step']}")
    model = core
    if workers.world > 1:
        model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
        # Dropout and sampled teacher forcing differ between processes; the weights do not.
        torch.manual_seed(train_cfg.seed + 7919 * workers.rank + progress_state["step"])
    n_params = sum(p.numel() for p in core.parameters())
    log(f"{model_cfg.family} model, {n_params:,} parameters, on {device}"
        f"{f' x {workers.world} processes' if workers.world > 1 else ''}; "
        f"{len(data.splits['train']):,} training pairs, vocab {model_cfg.src_vocab:,}/{model_cfg.tgt_vocab:,}")

    if train_cfg.bf16 and device.type != "cuda":
        # CPU autocast is not offered: oneDNN has no bfloat16 LSTM/GRU on AVX2-only CPUs.
        log(f"note: --bf16 autocasts on CUDA only; on {device} training runs in float32")
    metrics_log = open(out / "metrics.jsonl", "a") if workers.main else None
    board = tensorboard_writer(train_cfg, out, log) if workers.main else None
    higher_is_better = train_cfg.early_stop_metric in ("val_token_acc", "val_bleu")
    metrics: dict = {}
    step = progress_state["step"]
    for epoch in range(progress_state["epoch"] + 1, train_cfg.epochs + 1):
        model.train()
        train_batches.set_epoch(epoch)
        bar = tqdm(train_batches, desc=f"epoch {epoch}", unit="batch", disable=not progress, leave=False)
        started, tokens, epoch_loss, epoch_tokens = time.perf_counter(), 0, 0.0, 0
        for batch in bar:
            rows = workers.rows(len(batch))
            # A process left without sentences still joins the gradient exchange, with weight 0.
            weight = 1.0 if rows else 0.0
            part = (batch.select(rows or [0]) if workers.world > 1 else batch).to(device)
            tf = teacher_forcing_ratio(train_cfg, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_cfg.bf16 and device.type == "cuda"):
                log_probs = model(part.src, part.src_lengths, part.tgt[:, :-1], teacher_forcing=tf)
            nll, n = token_nll(log_probs.float(), part.tgt[:, 1:], train_cfg.label_smoothing)
            total_nll, total_n = workers.sum([nll.item() * weight, n * weight], device)
            loss_value = total_nll / max(total_n, 1)
            if not math.isfinite(loss_value):
                last = out / "last.pt"
                raise TrainingError(f"loss is {loss_value} at step {step + 1} (epoch {epoch}); last good checkpoint: "
                                    f"{last if last.exists() else 'none yet'}. Lower --lr or set --clip-norm")
            optimizer.zero_grad(set_to_none=True)
            # DistributedDataParallel averages gradients over processes; scaling by world / total_n
            # makes the result the gradient of the global batch's mean loss.
            (nll * (weight * workers.world / total_n)).backward()
            step += 1
            record = {"step": step, "epoch": epoch, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"], "tf": tf}
            if train_cfg.log_every and step % train_cfg.log_every == 0 and workers.main:
                record["grad_norms"] = layer_grad_norms(core)
                metrics_log.write(json.dumps(record) + "\n")
                for layer, norm in record["grad_norms"].items() if board else ():
                    board.add_scalar(f"grad_norm/{layer}", norm, step)
            if train_cfg.clip_norm:
                torch.nn.utils.clip_grad_norm_(core.parameters(), train_cfg.clip_norm)
            optimizer.step()
            if train_cfg.schedule != "plateau":
                scheduler.step()
            tokens += total_n + int(batch.src_lengths.sum())
            epoch_loss += total_nll
            epoch_tokens += total_n
            tok_s = tokens / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:.0f}", lr=f"{record['lr']:.2e}")
            if board:
                for key in ("loss", "lr", "tf"):
                    board.add_scalar(f"train/{key}", record[key], step)
            if train_cfg.max_steps and step >= train_cfg.max_steps:
                break
        metrics = {"epoch": epoch, "step": step, "train_loss": epoch_loss / max(epoch_tokens, 1),
                   "tokens_per_s": tokens / (time.perf_counter() - started)}
        metrics.update(evaluate_loss(core, val_batches, device, workers))
        if train_cfg.val_bleu:
            metrics["val_bleu"] = validation_bleu(core, val_batches, tokenizer, data.splits["val"], device, workers,
                                                  "char" if by_character else "13a")
        if train_cfg.schedule == "plateau":
            scheduler.step(metrics["val_loss"])
        log(f"epoch {epoch}: train loss {metrics['train_loss']:.3f}, val loss {metrics['val_loss']:.3f}, "
            f"ppl {metrics['val_ppl']:.2f}, token acc {metrics['val_token_acc']:.3f}"
            + (f", {'character ' if by_character else ''}BLEU {metrics['val_bleu']:.2f}" if "val_bleu" in metrics else "")
            + f", {metrics['tokens_per_s']:.0f} tok/s")

        value = metrics[train_cfg.early_stop_metric]
        best = progress_state["best"]
        improved = best is None or (value > best if higher_is_better else value < best)
        progress_state.update(epoch=epoch, step=step, best=value if improved else best,
                              bad_epochs=0 if improved else progress_state["bad_epochs"] + 1)
        if workers.main:
            metrics_log.write(json.dumps(metrics) + "\n")
            metrics_log.flush()
            for key, v in metrics.items() if board else ():
                board.add_scalar(f"epoch/{key}", v, step)
            show_samples(core, tokenizer, data.splits["val"][: train_cfg.samples], device, log)
            save_checkpoint({
                "format": CHECKPOINT_FORMAT, "data": asdict(data_cfg), "model": asdict(model_cfg),
                "train": asdict(train_cfg), "tokenizer": tokenizer.state(), "model_state": core.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states(),
                "progress": dict(progress_state), "metrics": metrics,
            }, out, improved, train_cfg.keep_epochs)
        workers.barrier()
        if train_cfg.patience and progress_state["bad_epochs"] >= train_cfg.patience:
            log(f"early stop: {train_cfg.early_stop_metric} has not improved for {train_cfg.patience} epochs")
            break
        if train_cfg.max_steps and step >= train_cfg.max_steps:
            break
    if metrics_log:
        metrics_log.close()
    if board:
        board.close()
    if started_group:
        dist.destroy_process_group()
    return metrics


def show_samples(model, tokenizer, pairs, device, log) -> None:
    if not pairs:
        return
    from seq2seq.data import collate, make_example

    model.eval()
    batch = collate([make_example(tokenizer.src.encode(s), []) for s, _ in pairs], list(range(len(pairs)))).to(device)
    for (src, ref), nbest in zip(pairs, greedy_search(model, batch.src, batch.src_lengths)):
        log(f"  src: {src}\n  ref: {ref}\n  out: {tokenizer.tgt.decode(nbest[0].tokens)}")
