"""``hessian``: the loss curvature of trained members against width: trace, top eigenvalues, spectral density.

For each width, one member's weights (the final ones or a snapshot from the run store, or those after
``step`` steps, retrained) and the mean training loss over the first ``examples`` training examples give the curvature
operator (the Hessian, or the Gauss-Newton matrix), in plain parameter coordinates.  Its trace is estimated by Hutch++, its top eigenvalues by
Lanczos, and its spectral density by deflated stochastic Lanczos quadrature
(:mod:`widthkit.dynamics.curvature`).  The densities of all widths share one figure (log density, as
Ghorbani et al. 2019 and Papyan 2020 show them); trace and top eigenvalue are fitted as powers of width.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import fmt
from ..build import build_architecture, build_member
from ..dynamics.curvature import OPERATORS, Curvature, curvature, density
from ..dynamics.setup import subset
from ..errors import WidthkitError
from ..fitting import LineFit, fit_power_law
from ..plots import figure, loglog_fit_line, save, width_colors
from ..results import Result
from ..store import analysable_widths
from ..trainer import train_members
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

DENSITY, VS_WIDTH = "hessian_density.png", "hessian_width.png"


@dataclass
class HessianOptions:
    """The ``[hessian]`` recipe table, the ``widthkit hessian`` flags and the keyword arguments."""

    width: list[int] = opt([], "widths to measure, e.g. --width 16 64 (default: every finished width)")
    seed: int = opt(-1, "member seed (-1: the first)")
    step: int = opt(-1, "training step of the weights (-1: the final ones; a snapshot step is read from the "
                        "store, another step is retrained, deterministically)")
    operator: str = opt("hessian", "curvature matrix: hessian or gauss-newton")
    lr_scaled: bool = opt(False, "measure S^1/2 A S^1/2 with S the per-parameter lr scales (muP's), the "
                                 "coordinates in which the optimizer is plain gradient descent")
    examples: int = opt(256, "the loss is the mean over the first N training examples")
    queries: int = opt(30, "Hutch++ matrix-vector products for the trace (a multiple of 3)")
    lanczos_steps: int = opt(30, "Lanczos steps per SLQ run")
    repeats: int = opt(4, "SLQ runs (random start vectors) averaged")
    top_k: int = opt(0, "top eigenvalues, deflated exactly in the density (0: the output dimension)")


@dataclass
class HessianResult(Result):
    """One :class:`Curvature` per width (same seed, step and examples), and power-law fits against width."""

    operator: str
    widths: list[int]
    seed: int
    step: int
    lr_scaled: bool
    examples: int
    curvature: list[Curvature]
    trace_fit: LineFit
    top_fit: LineFit


def member_at(view, width: int, seed: int, step: int) -> nn.Module:
    """Member (width, seed) with its weights after ``step`` training steps (-1: the final ones).

    A stored step (a snapshot, or the last step) is read from the store; another step is trained again.
    """
    final = int(view.metrics(width)["step"][-1])
    if step < 0:
        return view.load_member(width, seed)
    if step > final:
        raise WidthkitError(f"`step={step}` is past the run's last step ({final}); pass a step from 0 to {final}")
    if step in view.snapshot_steps(width):
        return view.load_member(width, seed, step)
    return retrained_member(view, width, seed, step)


def retrained_member(view, width: int, seed: int, step: int) -> nn.Module:
    """Member (width, seed) trained again to ``step`` with the run's recipe: the same init, batches and lr
    schedule (training is a function of the seeds and the step), so the same weights the ladder had then."""
    task = view.task()
    with torch.enable_grad():
        res, _, _ = train_members(view.recipe, width, [seed], task, build_member=build_member, stop_at=step,
                                  label=f"width {width}, seed {seed} to step {step}")
    model = build_architecture(view.recipe, width, task)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v[0])) for k, v in res.state.items()})
    return model.eval()


def measure(view, o: HessianOptions) -> HessianResult:
    """The curvature of member ``o.seed`` after ``o.step`` steps at each of ``o.width`` (float64, training mode)."""
    if o.operator not in OPERATORS:
        raise WidthkitError(f"`operator={o.operator!r}` is not one of {', '.join(OPERATORS)}")
    widths = sorted(o.width) if o.width else analysable_widths(view)
    missing = sorted(set(widths) - set(view.widths))
    if missing:
        raise WidthkitError(f"width {missing[0]} is not a finished width of this run; finished: {view.widths}")
    seed = view.seeds[0] if o.seed < 0 else o.seed
    x, y = subset(view.task(), o.examples)
    x = x.double()
    y = y.double() if y.is_floating_point() else y
    t = view.targets()
    k = o.top_k or (int(t.max()) + 1 if t.ndim == 1 else t.shape[-1])
    curves = []
    for w in widths:
        scales = build_member(view.recipe, w, seed, view.task())[1].lr_scales() if o.lr_scaled else None
        curves.append(curvature(member_at(view, w, seed, o.step).double(), view.loss_name, (x, y),
                                operator=o.operator, queries=o.queries, lanczos_steps=o.lanczos_steps,
                                repeats=o.repeats, top_k=k, seed=seed, lr_scales=scales))
    return HessianResult(o.operator, widths, seed, o.step, o.lr_scaled, len(x), curves,
                         fit_power_law(widths, [c.trace for c in curves]),
                         fit_power_law(widths, [c.top[0] for c in curves]))


def plot_density(res: HessianResult, path: Path, points: int = 400) -> Path:
    """The SLQ densities of every width on one figure (log density against eigenvalue)."""
    fig, axes = figure(1, 1, size=(5.4, 3.6))
    ax = axes[0][0]
    colors = width_colors(res.widths)
    for w, c in zip(res.widths, res.curvature):
        nodes, weights = np.asarray(c.nodes), np.asarray(c.weights)
        lo, hi = float(nodes.min()), float(nodes.max())
        pad = 0.05 * (hi - lo or 1.0)
        grid = np.linspace(lo - pad, hi + pad, points)
        ax.semilogy(grid, np.clip(density(nodes, weights, grid, sigma=(hi - lo or 1.0) / 100), 1e-8, None),
                    color=colors[w], label=f"N={w}")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("spectral density")
    ax.set_title(f"{res.operator} spectrum (SLQ)")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_vs_width(res: HessianResult, path: Path) -> Path:
    """Trace and top eigenvalue against width, log-log, with their power-law fits."""
    fig, axes = figure(2, 1)
    for ax, vals, f, name in ((axes[0][0], [c.trace for c in res.curvature], res.trace_fit, "trace"),
                              (axes[0][1], [c.top[0] for c in res.curvature], res.top_fit, "top eigenvalue")):
        ax.loglog(res.widths, np.clip(vals, 1e-12, None), "o-")
        if np.isfinite(f.slope):
            loglog_fit_line(ax, res.widths, f.slope, f.intercept, label=f"N^{f.slope:.2f}")
            ax.legend(fontsize=8)
        ax.set_xticks(res.widths, [str(w) for w in res.widths])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("width N")
        ax.set_title(name)
    return save(fig, path)


def _trend(vals: list[float], widths: list[int], fit: LineFit, what: str) -> str:
    slope = "" if not np.isfinite(fit.slope) else f" (N^{fit.slope:.2f}" + (
        f" ± {fit.slope_err:.2f})" if fit.n > 2 else ")")
    return (f"the {what} goes from {fmt.num(vals[0])} at N={widths[0]} to {fmt.num(vals[-1])} at "
            f"N={widths[-1]}{slope}")


@register_analysis
class Hessian(Analysis):
    name = "hessian"
    order = 55
    help = "Hessian (or Gauss-Newton) trace, top eigenvalues and spectral density of trained members vs width"
    Options = HessianOptions
    Result = HessianResult
    smoke = dict(examples=32, queries=6, lanczos_steps=6, repeats=1, top_k=2)
    in_study = False

    def applies(self, subject: Subject, options: HessianOptions) -> str:
        view = subject.require_point(self.name)
        return "" if view.widths else "no width is finished yet"

    def compute(self, subject: Subject, options: HessianOptions) -> HessianResult:
        return measure(subject.require_point(self.name), options)

    def plot(self, res: HessianResult, folder: Path) -> list[Path]:
        folder = Path(folder)
        return [plot_density(res, folder / DENSITY), plot_vs_width(res, folder / VS_WIDTH)]

    def blocks(self, res: HessianResult, folder: Path) -> list[Block]:
        traces = [c.trace for c in res.curvature]
        tops = [c.top[0] for c in res.curvature]
        k = len(res.curvature[0].top)
        rows = [[str(w), str(c.num_params), fmt.num(c.trace), fmt.num(c.trace / c.num_params), fmt.num(c.second),
                 ", ".join(fmt.num(v) for v in c.top)] for w, c in zip(res.widths, res.curvature)]
        bulk = [1 - sum(c.top) / c.trace if c.trace else float("nan") for c in res.curvature]
        folder = Path(folder)
        return [Block(self.name, f"Curvature vs width ({res.operator})", lines=[
            _trend(traces, res.widths, res.trace_fit, f"{res.operator} trace") + ", "
            + _trend(tops, res.widths, res.top_fit, "top eigenvalue") + ".",
            f"The top {k} eigenvalues hold {fmt.num(1 - bulk[0])} of the trace at N={res.widths[0]} and "
            f"{fmt.num(1 - bulk[-1])} at N={res.widths[-1]}; the other eigenvalues (the bulk) hold the rest."],
            tables=[Table(f"member seed {res.seed} at step {'final' if res.step < 0 else res.step}, loss on "
                          f"{res.examples} training examples; trace by "
                          f"{res.curvature[0].trace_method} ({res.curvature[0].queries} queries)",
                          ["width", "params", "trace", "trace / P", "tr(A²) / P", f"top {k}"], rows)],
            figures=[Figure(folder / DENSITY, f"SLQ spectral densities of {len(res.widths)} widths; the largest "
                            f"eigenvalue is {fmt.num(tops[0])} at N={res.widths[0]} and {fmt.num(tops[-1])} at "
                            f"N={res.widths[-1]}."),
                     Figure(folder / VS_WIDTH, _trend(traces, res.widths, res.trace_fit, "trace") + ".")],
            notes={"operator": "Hessian of the mean training loss (double backward); gauss-newton: J^T H_L J",
                   "density": "deflated SLQ: top eigenvalues exact, the rest from Lanczos runs on the complement",
                   "coordinates": "S^1/2 A S^1/2, S = per-parameter lr scales" if res.lr_scaled
                   else "plain parameters (no per-parameter lr scaling)"})]
