"""Pictures: attention heatmaps like the figures of the attention paper (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

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
    axes.imshow(weights.float().numpy(), cmap="Greys_r", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(source_pieces)), labels=list(source_pieces), rotation=90, fontsize=8)
    axes.set_yticks(range(len(target_pieces)), labels=list(target_pieces), fontsize=8)
    axes.set_xlabel("source")
    axes.set_ylabel("translation")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
