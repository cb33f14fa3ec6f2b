"""Checkpoint averaging: the mean of the weights of a run's last epochs.

Averaging the parameters of the last few checkpoints of one run (Vaswani et al., 2017;
fairseq's and Marian's averaging) smooths the noise of the final updates and usually scores
higher than any one of them. Training keeps the last ``keep_epochs`` epochs as
``epoch{N}.pt`` for this; ``seq2seq average`` writes their mean as a checkpoint that
``seq2seq export`` and every decoder take like any other.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from seq2seq.translate import CheckpointError, read_checkpoint

EPOCH_FILE = re.compile(r"epoch(\d+)\.pt$")


def epoch_checkpoints(folder: Path) -> list[Path]:
    """A run folder's epoch{N}.pt files, oldest epoch first."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EPOCH_FILE.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def pick_checkpoints(paths: list[str | Path], last: int = 0) -> list[Path]:
    """The files to average: checkpoint files as given, a folder standing for its epoch{N}.pt
    files; ``last`` keeps only the last N of them (0: all)."""
    picked: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            found = epoch_checkpoints(given)
            if not found:
                raise CheckpointError(f"{given}: no epoch{{N}}.pt checkpoints in this folder; train with "
                                      "--keep_epochs=N to keep the last N epochs, or pass checkpoint files")
            picked += found
        elif given.is_file():
            picked.append(given)
        else:
            raise CheckpointError(f"{given}: no such checkpoint file or folder")
    if last < 0:
        raise ValueError(f"--last must be >= 0, got {last}")
    picked = picked[-last:] if last else picked
    if len(picked) < 2:
        raise CheckpointError(f"averaging needs at least two checkpoints, got {len(picked)}: "
                              + (", ".join(map(str, picked)) or "none"))
    if len(set(p.resolve() for p in picked)) != len(picked):
        raise CheckpointError("the same checkpoint is given twice: " + ", ".join(map(str, picked)))
    return picked


def average_checkpoints(paths: list[Path], out: str | Path) -> Path:
    """Write the mean of the checkpoints' weights to ``out``: one model's checkpoints (the
    same model and data settings and the same vocabulary), summed in float64. The result
    has no optimizer state: it is for export and decoding, not for --resume."""
    first = ckpt = read_checkpoint(paths[0])
    total = {k: v.double() if v.is_floating_point() else v for k, v in first["model_state"].items()}
    for path in paths[1:]:
        ckpt = read_checkpoint(path)
        for part in ("model", "data", "tokenizer"):
            if ckpt[part] != first[part]:
                differ = [k for k in first[part] if first[part].get(k) != ckpt[part].get(k)] if part != "tokenizer" \
                    else ["vocabulary"]
                raise CheckpointError(f"{path} and {paths[0]} are not checkpoints of one model: their {part} "
                                      f"settings differ ({', '.join(differ)}); average epochs of one run")
        for name, value in ckpt["model_state"].items():
            if value.is_floating_point():
                total[name] += value.double()
            elif not torch.equal(value, total[name]):
                raise CheckpointError(f"{path}: integer tensor {name} differs from {paths[0]}'s; it cannot be averaged")
    state = {k: (v / len(paths)).to(first["model_state"][k].dtype) if v.is_floating_point() else v
             for k, v in total.items()}
    averaged = {key: first[key] for key in ("format", "data", "model", "train", "tokenizer") if key in first}
    averaged.update(model_state=state, averaged_from=[str(p) for p in paths], progress=ckpt.get("progress"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(averaged, out.with_name(out.name + ".tmp"))
    out.with_name(out.name + ".tmp").replace(out)
    return out
