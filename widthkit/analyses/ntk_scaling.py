"""``ntk-scaling``: how fast the NTK moves and how far the network strays from its linearization, vs width.

Dyer & Gur-Ari 2019 predict, in NTK parameterization at fixed training time, that the relative kernel
change and the gap to the linearized model both scale as 1/width.  The analysis trains its own members
from the recipe (full-batch GD at lr = lr_units x 2/lambda_0 per width) for each parameterization in
``params`` and fits the final-step values as power laws in width.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fmt
from ..dynamics import NTKScalingResult, ntk_scaling
from ..plots import figure, loglog_fit_line, save
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

FIGURE = "ntk_scaling.png"
NOTE = ("Prediction (Dyer & Gur-Ari 2019, NTK parameterization): kernel change and |f - f_lin| ~ 1/n at fixed "
        "training time. The derivation assumes an analytic activation; ReLU is not analytic and its exponents "
        "may deviate (Aitken & Gur-Ari 2020, arXiv 2006.06687). muP is a feature-learning parameterization: "
        "its kernel change does not vanish with width.")
QUANTITY = {"kernel_change": "kernel change", "lin_gap": "|f − f_lin|"}


@dataclass
class NTKScalingOptions:
    """The ``[ntk_scaling]`` recipe table, the ``widthkit ntk-scaling`` flags and the keyword arguments."""

    widths: list[int] = opt([], "widths (empty: the recipe's model.widths)")
    params: list[str] = opt([], "parameterizations to compare, of sp, ntk, mup (empty: the recipe's param.kind)")
    steps: int = opt(30, "full-batch GD steps")
    every: int = opt(0, "measure every N steps (0: steps/6)")
    seeds: int = opt(1, "inits per width (error bars from their spread)")
    n_train: int = opt(256, "full batch: the first n_train training examples")
    n_probe: int = opt(8, "the kernel and the linearization gap are measured on the first n_probe of them")
    lr_units: float = opt(0.5, "learning rate in units of 2/lambda_0 at each width, in (0, 1): the lazy phase")


@register_analysis
class NTKScaling(Analysis):
    name = "ntk-scaling"
    order = 60
    help = "||Theta_t - Theta_0||/||Theta_0|| and |f - f_lin| vs width in NTK / muP, with power-law fits"
    Options = NTKScalingOptions
    Result = NTKScalingResult
    smoke = dict(widths=[16, 32], params=["ntk", "mup"], steps=4, seeds=2, n_train=16, n_probe=4)
    needs = "recipe"
    in_study = False

    def compute(self, subject: Subject, options: NTKScalingOptions) -> NTKScalingResult:
        return ntk_scaling(subject.recipe, **dataclasses.asdict(options))

    def plot(self, result: NTKScalingResult, folder: Path) -> list[Path]:
        """Log-log kernel change and linearization gap vs width with the fitted lines, per parameterization."""
        fig, ax = figure(2, 1, (4.2, 3.4))
        markers = {"ntk": "o", "mup": "s", "sp": "^"}
        for j, q in enumerate(QUANTITY):
            a = ax[0][j]
            for f in (f for f in result.fits if f.quantity == q):
                err = None if np.isnan(f.errors).any() else f.errors
                line = a.errorbar(f.widths, f.values, yerr=err, fmt=markers[f.param], ms=5,
                                  label=f"{f.param}: slope {f.slope:.2f} ± {f.slope_err:.2f}")
                loglog_fit_line(a, f.widths, f.slope, f.intercept, color=line[0].get_color(), lw=0.8)
            a.set_xscale("log")
            a.set_yscale("log")
            a.set_xlabel("width n")
            a.set_ylabel(r"$\|\Theta_t-\Theta_0\|_F/\|\Theta_0\|_F$" if q == "kernel_change"
                         else r"RMS $f_t - f^{lin}_t$")
            a.set_title(f"t={result.steps} steps ({result.activation}); 1/n predicted in NTK", fontsize=8)
            a.legend(fontsize=7)
        return [save(fig, Path(folder) / FIGURE)]

    def blocks(self, result: NTKScalingResult, folder: Path) -> list[Block]:
        folder = Path(folder)
        b = Block("ntk-scaling", f"Kernel change and linearization gap vs width ({result.activation}, {result.loss}, "
                  f"{result.steps} GD steps at {result.lr_units}×2/λ0)", notes={"note": NOTE})
        b.tables.append(Table(
            "Power-law exponents in width at the final step (prediction in NTK parameterization: -1)",
            ["param", "quantity", "exponent", "values (per width)"],
            [[f.param, f.quantity, fmt.pm(f.slope, f.slope_err),
              " ".join(f"{w}:{fmt.num(v)}" for w, v in zip(f.widths, f.values))] for f in result.fits]))
        line = "; ".join(f"{f.param}: {QUANTITY[f.quantity]} ~ n^{f.slope:.2f}"
                         + (f"±{f.slope_err:.2f}" if len(f.widths) > 2 else "") for f in result.fits) \
            + " (prediction in NTK parameterization: n^-1, Dyer & Gur-Ari 2019)"
        b.lines.append(line)
        if (folder / FIGURE).exists():
            b.figures.append(Figure(folder / FIGURE, line))
        return [b]
