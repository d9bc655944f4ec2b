"""Recipe glue shared by the dynamics analyses: members, data subsets, widths."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..errors import WidthkitError, unknown
from ..build import build_member


PARAM_KINDS = ("sp", "ntk", "mup")


def with_param(recipe, kind: str):
    """A copy of ``recipe`` in parameterization ``kind`` (sp, ntk or mup), for analyses that compare them."""
    if kind not in PARAM_KINDS:
        raise unknown("parameterization", kind, PARAM_KINDS)
    r = copy.deepcopy(recipe)
    r.param.kind = kind
    return r


def member(recipe, width: int, seed: int, task, dtype=torch.float32) -> tuple[nn.Module, dict]:
    """The parameterized model and its per-parameter lr scales, exactly as the trainer builds them."""
    model, table = build_member(recipe, width, seed, task)
    return model.to(dtype), table.lr_scales()


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
