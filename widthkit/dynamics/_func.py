"""Functional views of an ``nn.Module`` for torch.func: parameters as a dict, buffers held fixed.

Every kernel / curvature routine in :mod:`widthkit.dynamics` goes through these helpers so that
models with buffers (BatchNorm running statistics) are handled in one place: buffers are cloned,
so evaluating a model in training mode never changes the caller's running statistics.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..errors import WidthkitError, did_you_mean

Params = dict[str, torch.Tensor]


def trainable(model: nn.Module) -> Params:
    """The parameters that require grad, detached, keyed by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def output_fn(model: nn.Module) -> Callable[[Params, torch.Tensor], torch.Tensor]:
    """``f(params, x) -> model(x)`` with the model's buffers held fixed (never updated).

    Outputs are reshaped to ``[N, K]`` (a scalar-output model gives ``K = 1``).
    """
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def f(params: Params, x: torch.Tensor) -> torch.Tensor:
        # fresh copies inside the transformed function: training-mode BatchNorm may update them
        out = functional_call(model, (params, {n: b.clone() for n, b in buffers.items()}), (x,))
        return out.reshape(x.shape[0], -1)

    return f


def batch_coupled(model: nn.Module) -> bool:
    """True when the output of one example depends on the others (BatchNorm in training mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm)
               and (m.training or not m.track_running_stats) for m in model.modules())


def check_scales(params: Mapping[str, torch.Tensor], lr_scales: Mapping[str, float] | None) -> dict[str, float]:
    """Per-parameter lr scales (default 1), validated against the parameter names."""
    if lr_scales is None:
        return {n: 1.0 for n in params}
    extra = sorted(set(lr_scales) - set(params))
    if extra:
        raise WidthkitError(f"lr_scales names unknown parameter '{extra[0]}'{did_you_mean(extra[0], params)}; "
                            f"valid: {', '.join(list(params)[:12])}{', ...' if len(params) > 12 else ''}")
    out = {n: float(lr_scales.get(n, 1.0)) for n in params}
    bad = [n for n, s in out.items() if not s >= 0]
    if bad:
        raise WidthkitError(f"lr scale of '{bad[0]}' is {out[bad[0]]}; lr scales must be >= 0")
    return out
