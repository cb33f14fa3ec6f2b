"""Figures: attention heatmaps, line plots for the studies, and the bench's bars (matplotlib, PNG)."""

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


def plot_accuracy_by_length(by_length: list[dict], path: str | Path, title: str = "") -> Path:
    """Transliteration: word accuracy (bars) and CER (line, right axis) per source-length bucket,
    as in transliteration_scores()["by_length"]."""
    if not by_length:
        raise ValueError("by_length is empty: there are no length buckets to plot")
    names = [b["bucket"] for b in by_length]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(names, [b["word_accuracy"] for b in by_length], color="tab:blue", alpha=0.7, label="word accuracy")
    for x, b in enumerate(by_length):
        ax.annotate(f"{b['names']}", (x, b["word_accuracy"]), ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.25)  # headroom for the legend
    ax.set_xlabel("source characters (bar labels: names)")
    ax.set_ylabel("word accuracy")
    ax.grid(alpha=0.3, axis="y")
    cer_ax = ax.twinx()  # CER can exceed 1, so it gets its own scale
    cer_ax.plot(names, [b["cer"] for b in by_length], color="tab:red", marker="o", label="CER")
    cer_ax.set_ylim(0, 1.25 * max(1.0, *(b["cer"] for b in by_length)))
    cer_ax.set_ylabel("character error rate")
    handles = ax.get_legend_handles_labels()[0] + cer_ax.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper center", ncol=2)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_rouge_by_length(by_length: list[dict], path: str | Path, title: str = "") -> Path:
    """Summarization: ROUGE-L F1 of the model beside the lead baseline per source-length bucket,
    as in summarization_scores()["by_length"]."""
    if not by_length:
        raise ValueError("by_length is empty: there are no length buckets to plot")
    xs = range(len(by_length))
    width = 0.4
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar([x - width / 2 for x in xs], [b["rougeL"] for b in by_length], width, label="model")
    ax.bar([x + width / 2 for x in xs], [b["lead_rougeL"] for b in by_length], width, label="lead baseline")
    ax.set_xticks(list(xs), [f"{b['bucket']}\n({b['texts']})" for b in by_length])
    ax.set_xlabel("source words (texts)")
    ax.set_ylabel("ROUGE-L F1")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_bench(results: dict, path: str | Path, title: str = "") -> Path:
    """One panel per bench case: each backend's sentences/s (its median round), and the
    spread of its rounds as a line across the bar."""
    cases = list(results)
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 0.42 * max(len(r) for r in results.values()) + 1.6),
                             squeeze=False)
    for ax, case in zip(axes[0], cases):
        row = results[case]
        names = list(row)[::-1]  # the first backend on top
        speeds = [row[n]["sentences_per_s"] for n in names]
        rounds = [row[n].get("rounds") or [row[n]["sentences_per_s"]] for n in names]
        colors = ["tab:blue" if n.startswith("cpp") else "tab:orange" if n.startswith("ct2") else "tab:gray"
                  for n in names]
        ax.barh(names, speeds, color=colors)
        ax.errorbar(speeds, names, xerr=[[max(0.0, s - min(r)) for s, r in zip(speeds, rounds)],
                                         [max(0.0, max(r) - s) for s, r in zip(speeds, rounds)]],
                    fmt="none", ecolor="black", capsize=3)
        ax.set_title(case)
        ax.set_xlabel("sentences/s")
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
