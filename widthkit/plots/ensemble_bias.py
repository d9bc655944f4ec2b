"""Plots of an :class:`~widthkit.analysis.ensemble_bias.EnsembleBiasResult` (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, loglog_fit_line, save, width_colors


def plot_loss_vs_width(res, path) -> Path:
    """Single-model loss (mean +- std over seeds), the all-member ensemble and L_inf vs width."""
    fig, axes = figure(1, 1, size=(5.0, 3.6))
    ax = axes[0][0]
    W = np.array(res.widths, float)
    single = np.array([p.single_loss for p in res.per_width])
    sstd = np.array([p.single_loss_std for p in res.per_width])
    ens = np.array([p.ensemble.curve.loss[-1] for p in res.per_width])
    linf = np.array([p.ensemble.l_inf for p in res.per_width])
    lerr = np.array([p.ensemble.l_inf_err for p in res.per_width])
    E = [len(p.seeds) for p in res.per_width]
    ax.errorbar(W, single, sstd, marker="o", capsize=3, label="single model (mean, std over seeds)")
    ax.plot(W, ens, "s-", label=f"ensemble of all members (E={min(E)}..{max(E)})")
    ax.errorbar(W, linf, lerr, marker="^", capsize=3, label="infinite ensemble L_inf (fit in 1/K)")
    ax.axhline(res.wide_single_loss, color="gray", ls=":", label=f"single width-{res.widths[-1]}")
    bf = res.bias_fit
    if bf is not None:
        x = np.geomspace(W.min(), W.max(), 100)
        ax.plot(x, bf.l_wide + bf.b * x ** -bf.alpha, "k--", lw=1,
                label=f"L_inf = {bf.l_wide:.3g} + b N^-{bf.alpha:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width N")
    ax.set_ylabel(f"test loss ({res.loss})")
    ax.set_title(f"step {res.step}")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_loss_vs_k(res, path) -> Path:
    """L(K) against 1/K per width with the fitted line and its intercept L_inf."""
    fig, axes = figure(1, 1, size=(5.0, 3.6))
    ax = axes[0][0]
    colors = width_colors(res.widths)
    for p in res.per_width:
        c = colors[p.width]
        inv = 1.0 / np.array(p.ensemble.curve.ks, float)
        ax.errorbar(inv, p.ensemble.curve.loss, p.ensemble.curve.loss_std, marker="o", ls="none",
                    color=c, capsize=2, ms=3, label=f"N={p.width}")
        x = np.linspace(0, 1, 20)
        ax.plot(x, p.ensemble.l_inf + p.ensemble.c * x, "-", color=c, lw=1)
    ax.set_xlabel("1 / K (ensemble size)")
    ax.set_ylabel(f"ensemble test loss ({res.loss})")
    ax.set_xlim(left=0)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("L(K) = L_inf + c/K")
    return save(fig, path)


def plot_variance(res, path) -> Path:
    """Output variance over seeds against width, log-log, with the fitted power law."""
    fig, axes = figure(1, 1, size=(4.6, 3.6))
    ax = axes[0][0]
    W = np.array(res.widths, float)
    V = np.array([p.variance for p in res.per_width])
    Ve = np.array([p.variance_err for p in res.per_width])
    ax.errorbar(W, V, np.nan_to_num(Ve), marker="o", ls="none", capsize=3, label="variance over seeds")
    vf = res.variance_fit
    if np.isfinite(vf["exponent"]):
        loglog_fit_line(ax, W, vf["exponent"], vf["log_prefactor"],
                        label=f"slope {vf['exponent']:.2f} +- {vf['exponent_err']:.2f}")
        loglog_fit_line(ax, W, -1.0, float(np.log(V[-1] * W[-1])), color="gray", lw=0.8, label="slope -1")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width N")
    ax.set_ylabel("output variance")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_agreement(res, path) -> Path:
    """Agreement with the widest width against width, one line per evaluation step."""
    ag = res.agreement
    has_top1 = bool(np.isfinite(np.array(ag.single_top1, float)).any())
    fig, axes = figure(2, 2 if has_top1 else 1, size=(4.2, 3.2))
    W = np.array(ag.widths, float)
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("plasma")
    S = len(ag.steps)
    panels = [(axes[0][0], ag.single_msd, "single: mean sq. distance", True),
              (axes[0][1], ag.ensemble_msd, "ensemble (half seeds): mean sq. distance", True)]
    if has_top1:  # regression outputs have no top-1
        panels += [(axes[1][0], ag.single_top1, "single: top-1 agreement", False),
                   (axes[1][1], ag.ensemble_top1, "ensemble: top-1 agreement", False)]
    for ax, vals, title, logy in panels:
        arr = np.array(vals, float)  # [width, step]
        for j, s in enumerate(ag.steps):
            col = cmap(0.9 * j / max(S - 1, 1))
            ax.plot(W, arr[:, j], "o-", ms=3, color=col, label=f"step {s}" if S <= 8 or j in (0, S - 1) else None)
        ax.set_xscale("log", base=2)
        if logy and np.nanmin(arr) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("width N")
        ax.set_title(f"{title} vs N={ag.reference_width}", fontsize=8)
    axes[0][0].legend(fontsize=6)
    return save(fig, path)


def plot_all(res, out_dir) -> list[Path]:
    """All ensemble-bias plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    paths = [plot_loss_vs_width(res, out / "ensemble_loss_vs_width.png"),
             plot_loss_vs_k(res, out / "ensemble_loss_vs_k.png"),
             plot_variance(res, out / "ensemble_variance.png")]
    if res.agreement is not None:
        paths.append(plot_agreement(res, out / "ensemble_agreement.png"))
    return paths
