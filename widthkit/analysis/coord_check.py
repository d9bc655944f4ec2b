"""Coordinate check (Yang et al.): per-layer activation sizes after a few steps, across width.

Under muP every layer's typical activation entry stays O(1) as width grows; under SP
the output (and, with SGD, hidden layers) blow up with width.  Sizes are the RMS of
each Linear/Conv output on a fixed batch, after ``steps`` training steps of seed 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..engine import Ensemble, lr_at
from ..results import Result


@dataclass
class CoordCheckResult(Result):
    kind: str
    widths: list[int]
    steps: int
    layers: list[str]
    rms: dict = field(default_factory=dict)        # layer -> [per width] RMS activation after training
    ratio: dict = field(default_factory=dict)      # layer -> widest / narrowest


def coord_check(recipe, widths=None, steps: int = 5, seed: int = 0, batch: int = 64) -> CoordCheckResult:
    """Train one member per width for ``steps`` steps and record per-layer activation RMS."""
    from ..ladder import build_member, load_recipe_task
    from ..trainer import Batches
    task = load_recipe_task(recipe)
    widths = sorted(widths or recipe.model.widths)
    probe = task.x_train[:batch]
    rms: dict[str, list[float]] = {}
    for w in widths:
        model, table = build_member(recipe, w, seed, task)
        ens = Ensemble([model], table.lr_scales(), recipe.optim, recipe.train.loss)
        batches = Batches(recipe, task, [seed], ens.device)
        for t in range(steps):
            x, y = batches(t)
            ens.step(x, y, lr_at(t, recipe.optim, recipe.train.steps))
        member = ens.member(0)
        acts: dict[str, float] = {}
        hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.pow(2).mean().sqrt().item()))
                 for n, m in member.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        with torch.no_grad():
            member(probe)
        for h in hooks:
            h.remove()
        for n, v in acts.items():
            rms.setdefault(n, []).append(v)
    ratio = {n: float(v[-1] / v[0]) if v[0] > 0 else float("inf") for n, v in rms.items()}
    return CoordCheckResult(recipe.param.kind, widths, steps, list(rms), rms, ratio)


def plot_coord_check(results: list[CoordCheckResult], path) -> None:
    from ..plots import figure, save
    fig, axes = figure(ncols=len(results))
    for ax, r in zip(axes[0], results):
        for n in r.layers:
            ax.loglog(r.widths, r.rms[n], "o-", label=n)
        ax.set_title(f"{r.kind}: activation RMS after {r.steps} steps")
        ax.set_xlabel("width")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("RMS of layer output")
    save(fig, path)


def max_ratio(r: CoordCheckResult) -> float:
    return float(np.max([max(v, 1 / v) for v in r.ratio.values()]))
