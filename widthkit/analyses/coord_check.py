"""``coord-check``: per-layer activation sizes after a few training steps, across width, per parameterization.

Yang et al. 2021's coordinate check: under muP every layer's typical activation entry stays O(1) as
width grows, under SP the readout (and with SGD the hidden layers) grows.  The analysis trains one
member per width of the recipe in each parameterization of ``params``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import fmt
from ..dynamics import ParamCoords, coord_check
from ..dynamics.setup import with_param
from ..plots import figure, save
from ..results import Result
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

FIGURE = "coord_check.png"
LABEL = {"mup": "muP", "sp": "SP", "ntk": "NTK"}


@dataclass
class CoordCheckOptions:
    """The ``[coord_check]`` recipe table, the ``widthkit coord-check`` flags and the keyword arguments."""

    widths: list[int] = opt([], "widths (empty: the recipe's model.widths)")
    params: list[str] = opt(["mup", "sp"], "parameterizations to compare, of sp, ntk, mup")
    steps: int = opt(5, "training steps before measuring")
    seed: int = opt(0, "member seed")
    batch: int = opt(64, "activations measured on the first N training examples")


@dataclass
class CoordCheckResult(Result):
    """One entry per parameterization, in the order of ``params``."""

    per_param: list[ParamCoords]


def _change(p: ParamCoords) -> str:
    """How parameterization ``p``'s sizes change from the narrowest to the widest width."""
    if p.param == "mup":
        return f"muP keeps activation sizes within {fmt.num(p.max_ratio())}× across width"
    readout = p.layers[-1]
    r = p.ratio[readout]
    verb = f"grows {fmt.num(r)}×" if r >= 1 else f"shrinks {fmt.num(1 / r)}×"
    return f"{LABEL[p.param]}'s readout ({readout}) {verb}"


@register_analysis
class CoordCheck(Analysis):
    name = "coord-check"
    order = 70
    help = "coordinate check: per-layer activation sizes after a few steps, flat across width under muP"
    Options = CoordCheckOptions
    Result = CoordCheckResult
    smoke = dict(widths=[16, 64], steps=2)
    needs = "recipe"
    in_study = False

    def compute(self, subject: Subject, options: CoordCheckOptions) -> CoordCheckResult:
        recipes = [with_param(subject.recipe, p) for p in options.params]
        return CoordCheckResult([coord_check(r, widths=options.widths, steps=options.steps, seed=options.seed,
                                             batch=options.batch) for r in recipes])

    def plot(self, result: CoordCheckResult, folder: Path) -> list[Path]:
        """Log-log activation RMS vs width, one panel per parameterization, one line per layer."""
        fig, axes = figure(ncols=len(result.per_param))
        for ax, p in zip(axes[0], result.per_param):
            for n in p.layers:
                ax.loglog(p.widths, p.rms[n], "o-", label=n)
            ax.set_title(f"{p.param}: activation RMS after {p.steps} steps")
            ax.set_xlabel("width")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("RMS of layer output")
        return [save(fig, Path(folder) / FIGURE)]

    def blocks(self, result: CoordCheckResult, folder: Path) -> list[Block]:
        folder, pp = Path(folder), result.per_param
        ws = pp[0].widths
        b = Block("coord-check", f"Coordinate check: activation RMS after {pp[0].steps} steps, widths {ws[0]} to "
                  f"{ws[-1]} ({', '.join(p.param for p in pp)})")
        layers = list(dict.fromkeys(n for p in pp for n in p.layers))
        b.tables.append(Table(f"Activation RMS of each layer's output, width {ws[-1]} / width {ws[0]}",
                              ["layer"] + [p.param for p in pp],
                              [[n] + [fmt.num(p.ratio.get(n)) for p in pp] for n in layers]))
        line = f"from width {ws[0]} to {ws[-1]}, " + " while ".join(_change(p) for p in pp)
        b.lines.append(line)
        if (folder / FIGURE).exists():
            b.figures.append(Figure(folder / FIGURE, line))
        return [b]
