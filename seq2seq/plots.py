"""Figures: attention heatmaps, and line plots for the studies (matplotlib, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _heatmap(ax, weights, src_pieces, out_pieces, title):
    ax.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=70, fontsize=8)
    ax.set_yticks(range(len(out_pieces)), out_pieces, fontsize=8)
    ax.set_xlabel("source")
    ax.set_title(title, fontsize=9)


def plot_attention(attention: torch.Tensor, src_pieces: list[str], out_pieces: list[str], path: str | Path,
                   title: str = "") -> Path:
    """attention: (output steps, source tokens) for RNN attention, or (output steps, heads,
    source tokens) for a Transformer's cross-attention: one panel per head and their mean."""
    attention = attention.float()
    if attention.dim() == 2:
        panels = [(attention, "attention")]
    else:
        heads = attention.size(1)
        panels = [(attention[:, h], f"head {h + 1}") for h in range(heads)] + [(attention.mean(1), "mean of heads")]
    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    width = max(4.0, 0.35 * len(src_pieces) + 2)
    height = max(3.0, 0.3 * len(out_pieces) + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax, (weights, name) in zip(axes.flat, panels):
        _heatmap(ax, weights.numpy(), src_pieces, out_pieces, name)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes[0][0].set_ylabel("output")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_lines(series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, path: str | Path,
               title: str = "") -> Path:
    """One line per named series of (x values, y values)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)
