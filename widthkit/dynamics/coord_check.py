"""Coordinate check (Yang et al. 2021, TP5 section 5 / the ``mup`` package's ``get_coord_data``).

Every member trains on one fixed batch (``mup``'s ``fix_data``): the first ``batch`` training examples,
at the recipe's optimizer and peak learning rate held constant (no warmup, no decay: a schedule would
hide the first steps).  At step t = 1..T, during the forward pass of step t and before its update (so
t = 1 is the initialization), a forward hook on every module records two sizes of its output h_t on
that batch:

* ``size``   = mean |h_t|        (``mup``'s ``l1`` statistic, the default of ``get_coord_data``);
* ``update`` = mean |h_t - h_1|  (how far training moved it; zero at t = 1 by definition).

Modules: every module whose output depends on a parameter (leaves and the model output), in forward
order; a container whose output is one of its children's (an ``nn.Sequential``'s) is dropped, and the
root is named ``output`` when kept.  Seeds are the members 0..S-1 of the recipe, trained together as
one vectorized :class:`~widthkit.engine.Ensemble` per width; the sizes are measured on each member's
own forward with hooks (train mode, buffers copied, dropout seeded per member and step).

The fitted exponent of a layer at step t is the least-squares slope of log(mean over seeds) against
log(width), each width weighted by the standard error of its mean over seeds, with the slope's standard
error (:func:`width_exponents`).  muP predicts exponent 0 for every layer's update and for every hidden
representation; SP predicts growth (the readout like width^1 after a step of SGD).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from ..build import build_member, load_recipe_task
from ..engine import Ensemble
from ..fitting import fit_power_law
from ..recipe import resolve_recipe
from ..results import Result
from ..seeds import derive_seed
from .setup import check_widths, subset

OUTPUT = "output"  # the name of the model's own output (the root module) when no child returns it


@dataclass
class Coords(Result):
    """One statistic of every layer's output across width, seed and step, with its width exponents.

    ``values[layer]`` is [width][seed][t] (t = 1..T in position t-1); ``exponent[layer][t-1]`` the slope
    of log(mean over seeds) on log(width) (see :func:`width_exponents`), ``err`` its standard error (both
    NaN where the value is exactly zero, e.g. every update at t = 1).
    """

    values: dict[str, list[list[list[float]]]]
    exponent: dict[str, list[float]]
    err: dict[str, list[float]]


@dataclass
class ParamCoords(Result):
    """The coordinate check of one parameterization: sizes and updates of every layer per width, seed, step."""

    param: str                     # sp | ntk | mup
    widths: list[int]
    seeds: list[int]
    steps: int                     # T: records at t = 1..T (t = 1 is the initialization)
    lr: float                      # the constant learning rate of every step
    readout_zero: bool             # the readout weight started at zero (muP's readout_zero; output at t = 1 is 0)
    layers: list[str]              # modules in forward order (the model's output last)
    size: Coords                   # mean |h_t|
    update: Coords                 # mean |h_t - h_1|

    def beyond(self, threshold: float, quantities=("size", "update")) -> list[tuple[str, str, int, float, float]]:
        """``(quantity, layer, t, exponent, err)`` for each layer and quantity (``size``, ``update``) whose
        exponent leaves [-threshold, threshold] at some step: the step of the largest |exponent|."""
        out = []
        for q in quantities:
            c: Coords = getattr(self, q)
            for n in self.layers:
                e = np.asarray(c.exponent[n], float)
                bad = np.where(np.isfinite(e) & (np.abs(e) > threshold))[0]
                if len(bad):
                    i = bad[np.argmax(np.abs(e[bad]))]
                    out.append((q, n, int(i) + 1, float(e[i]), float(c.err[n][i])))
        return out


def width_exponents(widths, values) -> tuple[list[float], list[float]]:
    """Per step, the slope of log(mean over seeds) on log(width) by weighted least squares, each width weighted
    by the standard error of its mean over seeds (narrow widths, whose members scatter most, count least),
    and the slope's standard error.  ``values`` [width][seed][t]; returns two lists of length T (NaN where
    a mean is 0).  One seed: an unweighted fit, its error from the residuals."""
    v = np.asarray(values, float)                                        # [W, S, T]
    mean, S = v.mean(1), v.shape[1]
    sem = v.std(1, ddof=1) / np.sqrt(S) if S > 1 else None
    fits = [fit_power_law(widths, mean[:, t], None if sem is None else sem[:, t]) if (mean[:, t] > 0).all()
            else None for t in range(v.shape[2])]
    return ([f.slope if f else float("nan") for f in fits], [f.slope_err if f else float("nan") for f in fits])


def _coords(widths, values: dict) -> Coords:
    fits = {n: width_exponents(widths, v) for n, v in values.items()}
    return Coords(values, {n: f[0] for n, f in fits.items()}, {n: f[1] for n, f in fits.items()})


def record_outputs(model: torch.nn.Module, params: dict, buffers: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter-dependent module output of ``model`` run on ``params``/``buffers`` and ``x``
    (forward hooks; ``functional_call``), in forward order; see the module docstring for which modules."""
    outs: dict[str, torch.Tensor] = {}
    seen = [False]                                      # a module with parameters has run

    def hook(mod, _inp, out, name):
        seen[0] = seen[0] or any(True for _ in mod.parameters(recurse=False))
        if seen[0] and isinstance(out, torch.Tensor):
            outs[name] = out
    handles = [m.register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n, m in model.named_modules()]
    try:
        functional_call(model, (params, buffers), (x,))
    finally:
        for h in handles:
            h.remove()

    def inside(c: str, n: str) -> bool:
        return c != n and (n == "" or c.startswith(f"{n}."))
    return {(n or OUTPUT): o for n, o in outs.items() if not any(inside(c, n) and outs[c] is o for c in outs)}


def coord_check(recipe, *, widths, steps: int, seeds: int, batch: int) -> ParamCoords:
    """The coordinate check of ``recipe``'s parameterization: members 0..``seeds``-1 at each width (empty:
    the recipe's widths), trained ``steps`` steps on the first ``batch`` training examples (see the module
    docstring); returns every layer's size and update per width, seed and step with their width exponents."""
    recipe = resolve_recipe(recipe)
    task = load_recipe_task(recipe)
    widths = check_widths(widths or recipe.model.widths)
    x, y = subset(task, batch)
    member_seeds = list(range(seeds))
    size: dict[str, list] = {}
    update: dict[str, list] = {}
    for w in widths:
        built = [build_member(recipe, w, s, task) for s in member_seeds]
        zero = any(r.role == "readout" and r.init_std == 0.0 for r in built[0][1].rules)
        ens = Ensemble([m for m, _ in built], [t.lr_scales() for _, t in built], recipe.optim, recipe.train.loss,
                       eps_scales=[t.eps_scales() for _, t in built])
        xs, ys = x.to(ens.device).expand(seeds, *x.shape), y.to(ens.device).expand(seeds, *y.shape)
        net = ens.template.train()
        first: list[dict] = []
        per_seed: list[dict[str, list]] = [{} for _ in member_seeds]
        for t in range(steps):
            for i, s in enumerate(member_seeds):
                with torch.no_grad(), torch.random.fork_rng(devices=[]):
                    torch.manual_seed(derive_seed(s, t))
                    outs = record_outputs(net, {k: v[i] for k, v in ens.params.items()},
                                          {k: v[i].clone() for k, v in ens.buffers.items()}, xs[i])
                if t == 0:
                    first.append(outs)
                for n, h in outs.items():
                    rec = per_seed[i].setdefault(n, ([], []))
                    rec[0].append(h.abs().mean().item())
                    rec[1].append((h - first[i][n]).abs().mean().item())
            if t < steps - 1:                           # the last update would never be recorded
                ens.step(xs, ys, recipe.optim.lr)
        for n in per_seed[0]:
            size.setdefault(n, []).append([per_seed[i][n][0] for i in range(seeds)])
            update.setdefault(n, []).append([per_seed[i][n][1] for i in range(seeds)])
    layers = list(size)
    return ParamCoords(recipe.param.kind, widths, member_seeds, steps, recipe.optim.lr, zero, layers,
                       _coords(widths, size), _coords(widths, update))
