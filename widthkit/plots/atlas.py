"""Plots for activation atlases across widths: atlases side by side, neuron vs group probes."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg

from . import figure, save


def plot_atlas_width(res, path: str | Path) -> Path:
    """One atlas per width (left to right) and the neuron-vs-group probe accuracies per width."""
    n = len(res.widths)
    fig, axes = figure(ncols=n + 1, nrows=1, size=(3.2, 3.2))
    for ax, w, png in zip(axes[0], res.widths, res.atlas_png):
        ax.imshow(mpimg.imread(png))
        ax.set_title(f"width {w}")
        ax.axis("off")
    ax = axes[0][n]
    ax.plot(res.widths, res.best_neuron_acc, "o-", label="best single neuron")
    ax.plot(res.widths, res.group_acc, "s-", label=f"top-{res.k} PCA directions")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("linear-probe test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"neuron vs group: {res.layer}")
    return save(fig, path)
