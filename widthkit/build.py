"""Recipe -> task, architecture and initialized member: what the trainer, store and ladder build from.

Below the store and the ladder (both import it, it imports neither), so a run can rebuild its
task and members and a job can know its size without importing the driver.
"""
from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from .centered import Centered, apply_conventions
from .data import Task, load_task
from .models import create_model
from .param import ParamTable, mup_architecture, parameterize
from .recipe import Recipe
from .seeds import derive_seed


def load_recipe_task(recipe: Recipe) -> Task:
    """The task a recipe trains on."""
    return load_task(recipe.data.task, root=recipe.data.root, online=recipe.data.online, **recipe.data.options)


def _model_kwargs(recipe: Recipe, task: Task) -> dict:
    return dict(in_shape=tuple(task.in_shape), num_classes=task.num_classes, **recipe.model.kwargs)


def build_architecture(recipe: Recipe, width: int, task: Task) -> nn.Module:
    """The recipe's model at ``width`` with its parameterization's architecture changes
    (muP's 1/d attention, the centered wrapper) but default weights: the shell that stored weights load into."""
    model = create_model(recipe.model.family, width=width, **_model_kwargs(recipe, task))
    model = mup_architecture(model) if recipe.param.kind == "mup" else model
    return Centered(model) if recipe.param.center else model


def member_params(recipe: Recipe, width: int, task: Task) -> int:
    """Parameters of one member at ``width``, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = create_model(recipe.model.family, width=width, **_model_kwargs(recipe, task))
    return sum(p.numel() for p in model.parameters())


@lru_cache(maxsize=8)
def _shape_models(family: str, kwargs_json: str, base_width: int) -> tuple[nn.Module, nn.Module]:
    """The architecture at the base width and at twice it, on the meta device (for muP)."""
    kw = json.loads(kwargs_json)
    kw["in_shape"] = tuple(kw["in_shape"])
    with torch.device("meta"):
        return (create_model(family, width=base_width, **kw), create_model(family, width=2 * base_width, **kw))


def build_member(recipe: Recipe, width: int, seed: int, task: Task) -> tuple[nn.Module, ParamTable]:
    """One initialized member: the model at ``width`` for member ``seed``, and its param table.

    The init depends only on (recipe seed, member seed, width), so a member is the same
    whether it is trained alone, in a chunk or in the full ensemble.
    """
    kw = _model_kwargs(recipe, task)
    init_seed = derive_seed(recipe.seed, seed, "init", width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = create_model(recipe.model.family, width=width, **kw)
    base = delta = None
    if recipe.param.kind == "mup":
        base, delta = _shape_models(recipe.model.family, json.dumps(kw, sort_keys=True), recipe.base_width)
    table = parameterize(model, kind=recipe.param.kind, width=width, base_width=recipe.base_width,
                         base_model=base, delta_model=delta, optimizer=recipe.optim.name, gain=recipe.param.gain,
                         activation=kw.get("activation"), output_mult=recipe.param.output_mult,
                         readout_zero=recipe.param.readout_zero, eps_scaling=recipe.param.eps_scaling,
                         generator=torch.Generator().manual_seed(init_seed))
    return apply_conventions(model, table, center=recipe.param.center, gamma0=recipe.param.gamma0,
                             readout=recipe.param.readout)


def count_params(table: dict | ParamTable) -> int:
    """Parameters of one member, from its param table (a :class:`ParamTable` or its stored dict)."""
    rules = table["rules"] if isinstance(table, dict) else [r.__dict__ for r in table.rules]
    return int(sum(np.prod(r["shape"]) for r in rules))
