"""A minimal (S)GD loop with per-parameter lr scales and an optional gradient transform.

The dynamics experiments need control the ladder trainer does not offer: measuring the NTK or
Hessian between steps and restricting the gradient to a subspace (projected SGD). The update is the
trainer's plain SGD: ``theta_p -= lr * s_p * g_p``. A ``transform`` acts in the scaled coordinates
theta' = S^{-1/2} theta (where the update is plain GD): ``g' = S^{1/2} g -> transform(g')``.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from ._func import check_scales
from .losses import LossFn, get_loss


class GD:
    """Gradient descent on ``model`` in place: ``step(x, y, lr) -> loss before the step``."""

    def __init__(self, model: nn.Module, loss: str | LossFn, lr_scales: Mapping[str, float] | None = None):
        self.model = model
        self.loss_fn = get_loss(loss)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        scales = check_scales(dict(named), lr_scales)
        self.scales = [scales[n] for n, _ in named]
        self.sqrt_s = torch.cat([torch.full((p.numel(),), s ** 0.5, dtype=p.dtype)
                                 for s, p in zip(self.scales, self.params)])

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        loss = self.loss_fn(self.model(x), y)
        grads = list(torch.autograd.grad(loss, self.params))
        return float(loss.detach()), grads

    @torch.no_grad()
    def apply(self, grads: list[torch.Tensor], lr: float,
              transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if transform is None:
            for p, g, s in zip(self.params, grads, self.scales):
                p.sub_(g, alpha=lr * s)
            return
        gs = transform(torch.cat([g.reshape(-1) for g in grads]) * self.sqrt_s) * self.sqrt_s
        i = 0
        for p in self.params:
            p.sub_(gs[i:i + p.numel()].view_as(p).to(p.dtype), alpha=lr)
            i += p.numel()

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float,
             transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
        loss, grads = self.gradient(x, y)
        self.apply(grads, lr, transform)
        return loss


@torch.no_grad()
def evaluate(model: nn.Module, loss: str | LossFn, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) on (x, y); accuracy is NaN for regression targets."""
    was = model.training
    model.eval()
    out = model(x).reshape(x.shape[0], -1)
    model.train(was)
    val = float(get_loss(loss)(out, y))
    acc = float((out.argmax(-1) == y).double().mean()) if y.dtype == torch.int64 else float("nan")
    return val, acc
