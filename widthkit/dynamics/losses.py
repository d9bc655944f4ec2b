"""The training losses of widthkit, as ``loss(out, y) -> scalar`` callables for one model.

Delegates to :func:`widthkit.engine.member_losses`, so the dynamics analyses use exactly the
trainer's convention: "mse" = mean over examples of 1/2 sum_k (f_k - y_k)^2 (integer labels
become one-hot targets), "xent" = mean softmax cross-entropy.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..engine import member_losses
from ..errors import unknown

LOSSES = ("mse", "xent")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_loss(loss: str | LossFn) -> LossFn:
    """A callable for ``loss`` ("mse", "xent" or already a callable)."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise unknown("loss", loss, LOSSES)

    def fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = out.reshape(out.shape[0], -1)
        return member_losses(out.unsqueeze(0), y.unsqueeze(0), loss)[0]

    fn.__name__ = loss
    return fn
