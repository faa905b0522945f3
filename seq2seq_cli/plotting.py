"""Pictures: attention heatmaps like the figures of the attention paper (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from seq2seq_cli.files import atomic_write

DPI = 100


def attention_figure_size(source_length: int, target_length: int) -> tuple[int, int]:
    """Width and height in pixels: about 0.4 inch per token, never smaller than 4 inches."""
    width = max(4.0, 1.5 + 0.4 * source_length)
    height = max(4.0, 1.5 + 0.4 * target_length)
    return round(width * DPI), round(height * DPI)


def plot_attention(path: str | Path, source_pieces: Sequence[str], target_pieces: Sequence[str],
                   weights: torch.Tensor) -> None:
    """Save a heatmap of ``weights`` (target length, source length) as a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = attention_figure_size(len(source_pieces), len(target_pieces))
    figure, axes = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI)
    image = axes.imshow(weights.float().numpy(), cmap="Greys_r", vmin=0.0, vmax=1.0, aspect="auto")
    figure.colorbar(image, ax=axes, label="attention weight", fraction=0.05, pad=0.02)
    axes.set_title("attention (rows: translation, columns: source)", fontsize=8)
    axes.set_xticks(range(len(source_pieces)), labels=list(source_pieces), rotation=90, fontsize=8)
    axes.set_yticks(range(len(target_pieces)), labels=list(target_pieces), fontsize=8)
    axes.set_xlabel("source")
    axes.set_ylabel("translation")
    figure.tight_layout()
    atomic_write(path, lambda out: figure.savefig(out, dpi=DPI, format="png"))
    plt.close(figure)


CURVES_SIZE = (1200, 800)  # pixels


def plot_curves(records: Sequence[dict], path: str | Path) -> None:
    """Train loss, dev loss, dev perplexity and dev BLEU against step, as one PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train", "train_loss", "train loss (label-smoothed)"), ("valid", "dev_loss", "dev loss"),
              ("valid", "dev_ppl", "dev perplexity"), ("valid", "dev_bleu", "dev BLEU (greedy)")]
    width, height = CURVES_SIZE
    figure, axes = plt.subplots(2, 2, figsize=(width / DPI, height / DPI), dpi=DPI)
    for axis, (event, key, title) in zip(axes.flat, panels):
        points = [(r["step"], r[key]) for r in records if r.get("event") == event and key in r]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="o" if event == "valid" else None, markersize=3)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda out: figure.savefig(out, dpi=DPI, format="png"))
    plt.close(figure)
