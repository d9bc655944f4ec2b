"""``coord-check``: mup's coordinate check -- every layer's output size per step, across width, per parameterization.

Yang et al. 2021 (Tensor Programs V): under muP every hidden representation h_t stays Theta(1) as width
grows and so does its change h_t - h_1 from the initialization (features learn at every width); under
SP the readout (and with SGD the hidden updates) grow with width, under NTK the updates shrink.  The
analysis trains ``seeds`` members per width for ``steps`` steps on one fixed batch, records mean |h_t|
and mean |h_t - h_1| of every module's output at each step t (t = 1 is the initialization, as in
``mup.get_coord_data``), and fits each one's width exponent (see :mod:`widthkit.dynamics.coord_check`).

muP's readout: widthkit, like mup's ``MuReadout``, initializes the readout with std
1/(sqrt(fan_in) m_in), so the output at initialization shrinks like 1/width, and the first step's
gradient reaching the hidden layers with it (their first updates shrink like width^-1/2).  muP allows
any readout init up to that size; the check starts the muP readout at zero, as mup's examples do, so
the output is pure update (``readout_zero = false`` keeps the recipe's init).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

from .. import fmt
from ..dynamics import ParamCoords, coord_check
from ..dynamics.setup import with_param
from ..plots import figure, save
from ..results import Result
from ..validate import PositiveFloat, PositiveInt
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

FIGURES = {"size": "coord_check.png", "update": "coord_check_update.png"}
LABEL = {"mup": "muP", "sp": "SP", "ntk": "NTK"}
QUANTITY = {"size": "mean |h_t|", "update": "mean |h_t - h_1|"}


@dataclass
class CoordCheckOptions:
    """The ``[coord_check]`` recipe table, the ``widthkit coord-check`` flags and the keyword arguments."""

    widths: list[int] = opt([], "widths (empty: the recipe's model.widths)")
    params: list[str] = opt(["mup", "sp"], "parameterizations to compare, of sp, ntk, mup")
    steps: PositiveInt = opt(5, "steps t = 1..T recorded, each before its update (t = 1: the initialization)")
    seeds: PositiveInt = opt(4, "members 0..seeds-1 per width: mean and spread over them")
    batch: PositiveInt = opt(64, "the fixed training batch: the first N training examples, every step")
    readout_zero: bool = opt(True, "muP: start the readout at zero as mup's examples do (false: the recipe's init)")
    threshold: PositiveFloat = opt(0.2, "readings name layers whose width exponent leaves [-threshold, threshold]")


@dataclass
class CoordCheckResult(Result):
    """One entry per parameterization, in the order of ``params``; ``threshold`` of the readings."""

    per_param: list[ParamCoords]
    threshold: float


def _exp(e: float, err: float) -> str:
    return f"width^{fmt.pm(e, err, 2)}"


def _reading(p: ParamCoords, threshold: float, quantities: tuple[str, ...] = ("size", "update")) -> str:
    """One sentence: the layers whose ``quantities`` grow or shrink beyond ``threshold``, or that none does."""
    name = LABEL[p.param] + (" (readout at zero)" if p.readout_zero else "")
    span, what = f"t = 1..{p.steps}", " and ".join(quantities)
    bad = p.beyond(threshold, quantities)
    if not bad:
        worst = max((abs(e) for q in quantities for v in getattr(p, q).exponent.values() for e in v
                     if np.isfinite(e)), default=float("nan"))
        return (f"{name}: every layer's {what} stays within width^±{fmt.num(threshold)} at {span} "
                f"(largest |exponent| {fmt.num(worst, 2)}).")
    parts = [f"{n} {q} {'grows' if e > 0 else 'shrinks'} like {_exp(e, err)} (t = {t})" for q, n, t, e, err in bad]
    return f"{name}, {what} beyond width^±{fmt.num(threshold)} at {span}: " + "; ".join(parts) + "."


def _peak(p: ParamCoords, quantity: str, layer: str) -> str:
    """The exponent of the step with the largest |exponent|, as ``e ± err (t = s)``."""
    c = getattr(p, quantity)
    e = np.asarray(c.exponent.get(layer, []), float)
    if not np.isfinite(e).any():
        return "-"
    i = int(np.nanargmax(np.abs(e)))
    return f"{fmt.pm(e[i], c.err[layer][i], 2)} (t = {i + 1})"


@register_analysis
class CoordCheck(Analysis):
    name = "coord-check"
    order = 70
    help = "coordinate check (mup's): every layer's output size per step across width, flat under muP"
    Options = CoordCheckOptions
    Result = CoordCheckResult
    smoke = dict(widths=[16, 64], steps=2, seeds=2)
    needs = "recipe"
    in_study = False

    def compute(self, subject: Subject, options: CoordCheckOptions) -> CoordCheckResult:
        recipes = [with_param(subject.recipe, p) for p in options.params]
        for r in recipes:
            r.param.readout_zero = r.param.readout_zero or options.readout_zero   # muP only (widthkit.param)
        return CoordCheckResult([coord_check(r, widths=options.widths, steps=options.steps, seeds=options.seeds,
                                             batch=options.batch) for r in recipes], options.threshold)

    def plot(self, result: CoordCheckResult, folder: Path) -> list[Path]:
        """mup's grid: one panel per step, mean over seeds (bars: spread over seeds) against width on log-log
        axes, one line per layer, one row per parameterization; one figure for sizes, one for updates."""
        kinds = ["size", "update"] if result.per_param[0].steps > 1 else ["size"]  # updates start at t = 2
        return [self._grid(result, q, Path(folder)) for q in kinds]

    @staticmethod
    def _grid(result: CoordCheckResult, quantity: str, folder: Path) -> Path:
        pp = result.per_param
        steps = range(1 if quantity == "size" else 2, pp[0].steps + 1)   # the update is 0 at t = 1
        fig, axes = figure(ncols=len(steps), nrows=len(pp), size=(3.0, 2.6), sharex=True)
        for row, p in zip(axes, pp):
            c = getattr(p, quantity)
            colors = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, len(p.layers)))
            for ax, t in zip(row, steps):
                for n, color in zip(p.layers, colors):
                    v = np.asarray(c.values[n], float)[:, :, t - 1]       # [width, seed]
                    if (v > 0).all():
                        ax.errorbar(p.widths, v.mean(1), yerr=v.std(1), fmt="o-", ms=3, lw=1, color=color,
                                    label=f"{n} ({c.exponent[n][t - 1]:+.2f})")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_title(f"{LABEL[p.param]}, t = {t}", fontsize=9)
                if t == steps[-1]:
                    ax.legend(fontsize=6, title="layer (exponent)", title_fontsize=6)
            row[0].set_ylabel(QUANTITY[quantity])
        for ax in axes[-1]:
            ax.set_xlabel("width")
        return save(fig, folder / FIGURES[quantity], dpi=90)

    def blocks(self, result: CoordCheckResult, folder: Path) -> list[Block]:
        folder, pp = Path(folder), result.per_param
        ws, p0 = pp[0].widths, pp[0]
        b = Block("coord-check", f"Coordinate check: every layer's output at t = 1..{p0.steps} (t = 1: init), "
                  f"widths {ws[0]} to {ws[-1]}, {len(p0.seeds)} seeds, lr {fmt.num(p0.lr)} "
                  f"({', '.join(LABEL[p.param] for p in pp)})")
        layers = list(dict.fromkeys(n for p in pp for n in p.layers))
        b.tables.append(Table("Width exponent of each layer's output size mean|h_t| and update mean|h_t - h_1| "
                              "(weighted least-squares slope on log-log axes, ± its standard error) at the step "
                              "with the largest |exponent|",
                              ["layer"] + [f"{LABEL[p.param]} {q}" for p in pp for q in ("size", "update")],
                              [[n] + [_peak(p, q, n) for p in pp for q in ("size", "update")] for n in layers]))
        b.lines += [_reading(p, result.threshold) for p in pp]
        for q, name in FIGURES.items():
            if (folder / name).exists():
                b.figures.append(Figure(folder / name, " ".join(_reading(p, result.threshold, (q,)) for p in pp)))
        b.notes["exponent"] = ("slope of log(mean over seeds) on log(width), each width weighted by the standard "
                               "error of its mean, ± the slope's standard error; '-' where the value is exactly 0 "
                               "(updates at t = 1, a zero readout)")
        return [b]
