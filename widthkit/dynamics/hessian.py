"""Top Hessian eigenspace of the training loss and the gradient's overlap with it (tiny subspace).

Gur-Ari, Roberts & Dyer 2018: after a short warm-up the gradient lies mostly in the span of the top
k Hessian eigenvectors (k = number of classes). Hessian-vector products use double backward on the
model in training mode; the model's buffers (BatchNorm running statistics) are restored afterwards.

With ``lr_scales`` everything is measured in the coordinates in which per-parameter-lr gradient
descent is plain gradient descent (theta' = S^{-1/2} theta): Hessian S^{1/2} H S^{1/2}, gradient
S^{1/2} g. The default (no scales) is the plain parameter space.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..errors import WidthkitError
from ..results import Result
from ._func import check_scales
from .lanczos import lanczos
from .losses import LossFn, get_loss

Batch = tuple[torch.Tensor, torch.Tensor]


def _batches(data) -> list[Batch]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        return [tuple(data)]
    batches = list(data)
    if not batches or not all(len(b) == 2 for b in batches):
        raise WidthkitError("data must be an (x, y) pair of tensors or a list of (x, y) batches")
    return batches


@contextlib.contextmanager
def training_mode(model: nn.Module):
    """Evaluate ``model`` in training mode and restore its mode and buffers afterwards."""
    was = model.training
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.train()
    try:
        yield model
    finally:
        model.train(was)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(saved[n])


class HessianOperator:
    """Matrix-free ``v -> S^{1/2} H S^{1/2} v`` for the mean loss over ``data`` (double backward).

    The first-order graph is built once and reused by every product. ``grad`` is the (scaled)
    gradient vector at the same point. Use inside :func:`training_mode`.
    """

    def __init__(self, model: nn.Module, loss_fn: str | LossFn, data, *, lr_scales: Mapping | None = None):
        loss_fn = get_loss(loss_fn)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        scales = check_scales(dict(named), lr_scales)
        self.sqrt_s = torch.cat([torch.full((p.numel(),), scales[n] ** 0.5, dtype=p.dtype)
                                 for n, p in named])
        self.dim = self.sqrt_s.numel()
        batches = _batches(data)
        total = sum(int(x.shape[0]) for x, _ in batches)
        self._grads = []
        g = torch.zeros(self.dim, dtype=self.params[0].dtype)
        for x, y in batches:
            loss = loss_fn(model(x), y) * (x.shape[0] / total)
            gs = torch.autograd.grad(loss, self.params, create_graph=True)
            self._grads.append(gs)
            g += torch.cat([t.detach().reshape(-1) for t in gs])
        self.grad = g * self.sqrt_s
        self.dtype = self.params[0].dtype

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in self.params:
            out.append(v[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vs = self._split((v.to(self.dtype) * self.sqrt_s))
        hv = torch.zeros(self.dim, dtype=self.dtype)
        for gs in self._grads:
            dot = sum((g * u).sum() for g, u in zip(gs, vs))
            hs = torch.autograd.grad(dot, self.params, retain_graph=True, allow_unused=True)
            hv += torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                             for h, p in zip(hs, self.params)])
        return (hv * self.sqrt_s).to(v.dtype)


@dataclass
class HessianEigs(Result):
    """Top-k Hessian eigenvalues (descending). ``eigenvectors`` [P, k] are kept out of the JSON."""

    eigenvalues: list[float]
    k: int
    num_params: int
    iterations: int
    max_residual: float
    scaled: bool
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("eigenvectors", None)
        return d


def _top(op: HessianOperator, k: int, tol: float, max_iter: int | None, seed: int) -> HessianEigs:
    if k < 1 or k > op.dim:
        raise WidthkitError(f"k={k} must be between 1 and the number of parameters ({op.dim})")
    e = lanczos(op, op.dim, k, tol=tol, max_iter=max_iter, dtype=torch.float64, seed=seed)
    return HessianEigs([float(v) for v in e.values], k, op.dim, e.iterations,
                       float(e.residuals.max()), False, e.vectors)


def hessian_top_eigs(model: nn.Module, loss_fn: str | LossFn, data, k: int, *, lr_scales=None,
                     tol: float = 1e-6, max_iter: int | None = None, seed: int = 0) -> HessianEigs:
    """Largest-``k`` eigenpairs of the loss Hessian by Lanczos with full reorthogonalization.

    ``data``: an (x, y) pair or a list of batches (the loss is their example-weighted mean); the
    model is evaluated in training mode. ``loss_fn``: "mse", "xent" or ``f(out, y) -> scalar``.
    """
    with training_mode(model):
        op = HessianOperator(model, loss_fn, data, lr_scales=lr_scales)
        r = _top(op, k, tol, max_iter, seed)
    r.scaled = lr_scales is not None
    return r


def projection_fraction(g: torch.Tensor, V: torch.Tensor) -> float:
    """``||P_V g||^2 / ||g||^2`` for orthonormal columns V."""
    g = g.to(V.dtype)
    return float((V.T @ g).pow(2).sum() / g.pow(2).sum().clamp_min(1e-300))


def random_subspace(dim: int, k: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """k orthonormal columns spanning a uniformly random subspace of R^dim."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=dtype))[0]


@dataclass
class GradientOverlap(Result):
    """How much of the gradient lies in the top-k Hessian eigenspace.

    ``overlap_sq`` = ||P_k g||^2/||g||^2 (Gur-Ari et al. 2018's fraction of the gradient's squared
    norm), ``overlap`` = ||P_k g||/||g|| (the cosine used by later work, e.g. Song et al. 2024).
    ``random_overlap_sq`` is the same fraction for a random k-dim subspace (expected ``k / P``).
    """

    k: int
    num_params: int
    overlap_sq: float
    overlap: float
    random_overlap_sq: float
    random_expected: float
    grad_norm: float
    eigenvalues: list[float]
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.pop("eigenvectors", None)
        return d


def gradient_overlap(model: nn.Module, loss_fn: str | LossFn, data, k: int, *, lr_scales=None,
                     tol: float = 1e-5, max_iter: int | None = None, seed: int = 0) -> GradientOverlap:
    """Fraction of the loss gradient in the top-k Hessian eigenspace (both conventions, named)."""
    with training_mode(model):
        op = HessianOperator(model, loss_fn, data, lr_scales=lr_scales)
        e = _top(op, k, tol, max_iter, seed)
    g = op.grad.to(torch.float64)
    frac = projection_fraction(g, e.eigenvectors)
    rnd = projection_fraction(g, random_subspace(op.dim, k, seed + 1))
    return GradientOverlap(k, op.dim, frac, frac ** 0.5, rnd, k / op.dim, float(g.norm()),
                           e.eigenvalues, e.eigenvectors)


def subspace_stability(V_t: torch.Tensor, V_t2: torch.Tensor) -> float:
    """``(1/k) sum_i ||P_k(t') v_i(t)||^2`` for orthonormal columns V_t [P, k], V_t2 [P, k'].

    1 when the top subspace did not move, about k'/P for unrelated subspaces.
    """
    if V_t.shape[0] != V_t2.shape[0]:
        raise WidthkitError(f"subspaces live in different spaces ({V_t.shape[0]} vs {V_t2.shape[0]} params)")
    V_t2 = V_t2.to(V_t.dtype)
    return float((V_t2.T @ V_t).pow(2).sum() / V_t.shape[1])
