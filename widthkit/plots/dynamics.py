"""Plots for widthkit.dynamics: lr phase diagram, catapult loss curves, sharpness, subspace overlap,
projected SGD and kernel scaling."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import figure, loglog_fit_line, save, width_colors

PHASE_COLORS = {"lazy": "tab:blue", "catapult": "tab:orange", "divergent": "tab:red"}


def plot_lr_phase(res, out) -> list[Path]:
    """Phase diagram, loss curves per phase, final sharpness vs lr, test accuracy vs lr."""
    out = Path(out)
    paths = []
    fig, ax = figure(1, 1, (5.0, 3.4))
    a = ax[0][0]
    for i, wp in enumerate(res.per_width):
        for r in wp.runs:
            a.scatter(r.lr_lambda, i, c=PHASE_COLORS[r.phase], s=60, marker="s")
    for ph, c in PHASE_COLORS.items():
        a.scatter([], [], c=c, marker="s", label=ph)
    for x, ls in ((2, "--"), (4, ":")):
        a.axvline(x, color="k", ls=ls, lw=0.8)
    a.set_yticks(range(len(res.per_width)), [str(w.width) for w in res.per_width])
    a.set_xscale("log")
    a.set_xlabel(r"learning rate $\times\ \lambda_0$")
    a.set_ylabel("width")
    a.set_title("GD phases (dashed: 2/$\\lambda_0$, dotted: 4/$\\lambda_0$)", fontsize=9)
    a.legend(fontsize=7, loc="upper left")
    paths.append(save(fig, out / "phase_diagram.png"))

    wp = res.per_width[-1]
    fig, ax = figure(3, 1, (3.6, 3.0))
    for j, ph in enumerate(("lazy", "catapult", "divergent")):
        a = ax[0][j]
        runs = [r for r in wp.runs if r.phase == ph]
        cmap = width_colors(range(max(len(runs), 1)))
        for i, r in enumerate(runs):
            L = np.asarray([v if v is not None else np.nan for v in r.loss], float)
            a.plot(L / L[0], color=cmap[i], label=f"{r.lr_lambda:.2g}/$\\lambda_0$")
        a.set_yscale("log")
        a.set_title(f"{ph} (width {wp.width})", fontsize=9)
        a.set_xlabel("step")
        a.set_ylabel("loss / initial loss")
        if runs:
            a.legend(fontsize=6)
    paths.append(save(fig, out / "loss_curves.png"))

    fig, ax = figure(2, 1, (4.2, 3.2))
    a = ax[0][0]
    colors = width_colors([w.width for w in res.per_width])
    for w in res.per_width:
        ok = [r for r in w.runs if r.final_lambda is not None]
        a.plot([r.lr_lambda for r in ok], [r.final_lambda / w.lambda0 for r in ok], "o-", color=colors[w.width],
               label=f"n={w.width}")
    grid = np.geomspace(min(res.lrs_units) * 2, max(res.lrs_units) * 2, 100)
    a.plot(grid, 2 / grid, "k--", lw=0.8, label=r"$2/\eta$")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel(r"$\eta\,\lambda_0$")
    a.set_ylabel(r"final $\lambda$ / $\lambda_0$")
    a.legend(fontsize=7)
    a = ax[0][1]
    for w in res.per_width:
        ok = [r for r in w.runs if r.test_acc is not None]
        if ok:
            a.plot([r.lr_lambda for r in ok], [r.test_acc for r in ok], "o-", color=colors[w.width],
                   label=f"n={w.width}")
    a.axvline(2, color="k", ls="--", lw=0.8)
    a.set_xscale("log")
    a.set_xlabel(r"$\eta\,\lambda_0$")
    a.set_ylabel("final test accuracy")
    paths.append(save(fig, out / "sharpness_accuracy.png"))
    return paths


def plot_subspace(res, path) -> Path:
    """Overlap with the top-k subspace over training vs a random k-dim subspace; stability."""
    fig, ax = figure(2, 1, (4.2, 3.2))
    a = ax[0][0]
    a.plot(res.steps, res.overlap_sq, "o-", label=r"top-$k$: $\|P_k g\|^2/\|g\|^2$")
    a.plot(res.steps, res.overlap, "s-", ms=3, label=r"top-$k$: $\|P_k g\|/\|g\|$")
    a.plot(res.steps, res.random_overlap_sq, "x-", color="gray", label="random k-dim subspace")
    a.axhline(res.random_expected, color="gray", ls=":", lw=0.8)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("gradient fraction")
    a.set_title(f"width {res.width}, k={res.k}, P={res.num_params}", fontsize=9)
    a.legend(fontsize=7)
    a = ax[0][1]
    a.plot(res.steps[1:], res.stability_prev[1:], "o-", label="vs previous")
    a.plot(res.steps, res.stability_final, "s-", label="vs final")
    a.set_ylim(0, 1.05)
    a.set_xlabel("step")
    a.set_ylabel("subspace stability")
    a.legend(fontsize=7)
    return save(fig, path)


def plot_projected(res, path) -> Path:
    """Training loss and test accuracy of plain / top-only / bulk-only SGD."""
    fig, ax = figure(2, 1, (4.2, 3.2))
    for v, L in res.train_loss.items():
        ax[0][0].plot(res.steps, L, label=v)
        ax[0][1].plot(res.steps, res.test_acc[v], label=v)
    ax[0][0].set_yscale("log")
    ax[0][0].set_xlabel("step")
    ax[0][0].set_ylabel("train loss")
    ax[0][0].set_title(f"projected SGD, k={res.k}", fontsize=9)
    ax[0][0].legend(fontsize=7)
    ax[0][1].set_xlabel("step")
    ax[0][1].set_ylabel("test accuracy")
    return save(fig, path)


def plot_ntk_scaling(res, path) -> Path:
    """Log-log kernel change and linearization gap vs width with fitted slopes, per parameterization."""
    fig, ax = figure(2, 1, (4.2, 3.4))
    markers = {"ntk": "o", "mup": "s", "sp": "^"}
    for j, q in enumerate(("kernel_change", "lin_gap")):
        a = ax[0][j]
        for f in (f for f in res.fits if f.quantity == q):
            err = None if any(e is None for e in f.errors) else f.errors
            line = a.errorbar(f.widths, f.values, yerr=err, fmt=markers.get(f.param, "o"), ms=5,
                              label=f"{f.param}: slope {f.slope:.2f} ± {f.slope_err:.2f}")
            loglog_fit_line(a, f.widths, f.slope, f.intercept, color=line[0].get_color(), lw=0.8)
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("width n")
        a.set_ylabel(r"$\|\Theta_t-\Theta_0\|_F/\|\Theta_0\|_F$" if q == "kernel_change"
                     else r"RMS $f_t - f^{lin}_t$")
        a.set_title(f"t={res.steps} steps ({res.activation}); 1/n predicted in NTK", fontsize=8)
        a.legend(fontsize=7)
    return save(fig, path)
