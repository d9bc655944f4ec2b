"""Coordinate check (Yang et al. 2021): per-layer activation sizes after a few steps, across width.

Under muP every layer's typical activation entry stays O(1) as width grows; under SP the output (and,
with SGD, hidden layers) blow up with width.  Sizes are the RMS of each Linear/Conv output on a fixed
batch (the first ``batch`` training examples), after ``steps`` steps of the trainer's own update.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..engine import Ensemble, lr_at
from ..ladder import build_member, load_recipe_task
from ..results import Result
from ..trainer import Batches
from ..recipe import resolve_recipe
from .setup import check_widths


@dataclass
class ParamCoords(Result):
    """Activation sizes per layer and width, for one parameterization."""

    param: str                     # sp | ntk | mup
    widths: list[int]
    steps: int
    layers: list[str]              # Linear/Conv modules in forward order (the readout last)
    rms: dict[str, list[float]]    # layer -> RMS of its output per width, after training
    ratio: dict[str, float]        # layer -> widest / narrowest

    def max_ratio(self) -> float:
        """The largest change factor over layers, growth or shrinkage (>= 1)."""
        return float(np.max([max(v, 1 / v) for v in self.ratio.values()]))


def coord_check(recipe, *, widths, steps: int, seed: int, batch: int) -> ParamCoords:
    """Train member ``seed`` at each width (empty: the recipe's) for ``steps`` steps of the recipe's
    optimizer, then record each Linear/Conv layer's output RMS on the first ``batch`` training examples."""
    recipe = resolve_recipe(recipe)
    task = load_recipe_task(recipe)
    widths = check_widths(widths or recipe.model.widths)
    probe = task.x_train[:batch]
    rms: dict[str, list[float]] = {}
    for w in widths:
        model, table = build_member(recipe, w, seed, task)
        ens = Ensemble([model], table.lr_scales(), recipe.optim, recipe.train.loss, eps_scales=table.eps_scales())
        batches = Batches(recipe, task, [seed], ens.device)
        for t in range(steps):
            x, y = batches(t)
            ens.step(x, y, lr_at(t, recipe.optim, recipe.train.steps))
        trained = ens.member(0)
        acts: dict[str, float] = {}
        hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.pow(2).mean().sqrt().item()))
                 for n, m in trained.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        with torch.no_grad():
            trained(probe)
        for h in hooks:
            h.remove()
        for n, v in acts.items():
            rms.setdefault(n, []).append(v)
    ratio = {n: float(v[-1] / v[0]) if v[0] > 0 else float("inf") for n, v in rms.items()}
    return ParamCoords(recipe.param.kind, widths, steps, list(rms), rms, ratio)
