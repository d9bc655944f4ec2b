"""Plots of last-layer transfer results (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, save


def _accuracy_panel(ax, res, color=None, label=None):
    W = np.array(res.widths, float)
    ta = [p.target_acc_mean for p in res.per_width]
    ts = [p.target_acc_std for p in res.per_width]
    sa = [p.source_acc_mean for p in res.per_width]
    line = ax.errorbar(W, ta, np.nan_to_num(ts), marker="o", capsize=3, color=color,
                       label=label or f"target {res.target}")
    c = line[0].get_color()
    ax.plot(W, sa, "--", marker=".", color=c, label=None if label else f"source {res.source_task}")
    return c


def plot_transfer(res, path) -> Path:
    """Target vs source accuracy against width, few-shot accuracy, and the information probes."""
    fig, axes = figure(3, 1, size=(4.2, 3.3))
    ax = axes[0][0]
    _accuracy_panel(ax, res)
    ax.set_title(f"new last layer ({res.probe}, {res.layer})", fontsize=9)
    ax.set_ylabel("test accuracy (dashed: source)")
    ax = axes[0][1]
    W = np.array(res.widths, float)
    for k in res.shots:
        m = [p.few_shot[k]["acc_mean"] for p in res.per_width]
        s = [p.few_shot[k]["acc_std"] for p in res.per_width]
        ax.errorbar(W, m, np.nan_to_num(s), marker="o", capsize=3, label=f"{k}-shot")
    ax.plot(W, [p.target_acc_mean for p in res.per_width], "k:", label="all target data")
    ax.set_title("few-shot target accuracy", fontsize=9)
    ax = axes[0][2]
    ax.errorbar(W, [p.recon_r2_mean for p in res.per_width], np.nan_to_num([p.recon_r2_std for p in res.per_width]),
                marker="o", capsize=3, label="input reconstruction R^2")
    ax.plot(W, [p.knn_acc_mean for p in res.per_width], "s-", label="10-NN source accuracy")
    ax.plot(W, [p.knn_acc_matched for p in res.per_width], "^--", label="10-NN at matched source acc.")
    ax.set_title("information in the hidden state", fontsize=9)
    for a in axes[0]:
        a.set_xscale("log", base=2)
        a.set_xlabel("width N")
        a.legend(fontsize=7)
    return save(fig, path)


def plot_bench(results: list, path) -> Path:
    """One line per task: target accuracy vs width (source dashed), and reconstruction R^2 vs width."""
    fig, axes = figure(2, 1, size=(5.0, 3.6))
    for name, res in results:
        c = _accuracy_panel(axes[0][0], res, label=name)
        W = np.array(res.widths, float)
        axes[0][1].plot(W, [p.recon_r2_mean for p in res.per_width], "o-", color=c, label=f"{name}: R^2")
        axes[0][1].plot(W, [p.knn_acc_matched for p in res.per_width], "^:", color=c, label=f"{name}: 10-NN matched")
    axes[0][0].set_ylabel("target test accuracy (dashed: source)")
    axes[0][0].set_title("last-layer transfer vs width", fontsize=9)
    axes[0][1].set_title("information: input R^2 (solid), k-NN at matched acc. (dotted)", fontsize=8)
    for a in axes[0]:
        a.set_xscale("log", base=2)
        a.set_xlabel("width N")
        a.legend(fontsize=6)
    return save(fig, path)
