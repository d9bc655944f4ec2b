"""Recipe glue shared by the dynamics commands: the ``[dynamics]`` section, members and data subsets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import WidthkitError


@dataclass
class DynamicsOptions:
    """Keys of the recipe's ``[dynamics]`` table (all optional; commands' flags override them).

    n_train: examples (first of the training set) used for full-batch GD in lr-phase / ntk-scaling.
    steps: training steps (0: the command's default). seeds: members per width.
    lrs: lr-phase grid in units of 2/lambda_0. lambda_every / lambda_steps: NTK eigenvalue cadence.
    n_probe: inputs on which ntk-scaling measures the kernel. lr_units: ntk-scaling lr in units of
    2/lambda_0. every: measurement cadence. params: parameterizations compared by ntk-scaling.
    k: subspace dimension (0 = number of classes). hessian_batch: examples for Hessian and gradient.
    refresh: projected SGD recomputes the top subspace every ``refresh`` steps.
    """

    n_train: int = 256
    steps: int = 0
    seeds: int = 1
    lrs: list[float] = field(default_factory=lambda: [0.5, 0.9, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0])
    lambda_every: int = 5
    lambda_steps: int = 60
    n_probe: int = 8
    lr_units: float = 0.5
    every: int = 0
    params: list[str] = field(default_factory=list)
    k: int = 0
    hessian_batch: int = 512
    refresh: int = 10


def options(recipe) -> DynamicsOptions:
    from ..recipe import section
    return section(recipe, "dynamics", DynamicsOptions)


def member(recipe, width: int, seed: int, task, dtype=torch.float32) -> tuple[nn.Module, dict]:
    """The parameterized model and its per-parameter lr scales, exactly as the trainer builds them."""
    from ..ladder import build_member
    model, table = build_member(recipe, width, seed, task)
    scales = table.lr_scales() if hasattr(table, "lr_scales") else dict(table)
    return model.to(dtype), scales


def subset(task, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training examples (a fixed full batch); online tasks draw n samples once."""
    if getattr(task, "online", False) and getattr(task, "x_train", None) is None:
        return task.sample(n, torch.Generator().manual_seed(0))
    n = min(n, task.x_train.shape[0])
    return task.x_train[:n], task.y_train[:n]


def check_widths(widths) -> list[int]:
    ws = sorted({int(w) for w in widths})
    if not ws or ws[0] < 1:
        raise WidthkitError(f"widths must be positive integers, got {list(widths)}")
    return ws


Factory = Callable[[int, int], "tuple[nn.Module, dict | None] | nn.Module"]


def call_factory(factory: Factory, width: int, seed: int) -> tuple[nn.Module, dict | None]:
    """``factory(width, seed)`` -> model or (model, lr_scales)."""
    out = factory(width, seed)
    return out if isinstance(out, tuple) else (out, None)
