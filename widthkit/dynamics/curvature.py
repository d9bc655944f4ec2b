"""Curvature beyond the top eigenvalues: trace, spectral density and the Gauss-Newton operator.

Operators are matrix-free and widthkit's own (they keep its loss conventions, BatchNorm buffers and
per-parameter lr scales): :class:`~widthkit.dynamics.hessian.HessianOperator` (double backward) and
:class:`GaussNewtonOperator` (``J^T H_L J``, jvp/vjp).  The trace estimators are curvlinops'
(the ``curvature`` extra), run on those operators:

* the trace by Hutchinson (``v^T A v`` averaged over Rademacher ``v``) or Hutch++ (Meyer et al. 2021:
  the exact trace on a sketched top subspace plus Hutchinson on the rest; ``queries`` matvecs in all).

The spectral density is by stochastic Lanczos quadrature (Ghorbani et al. 2019; Papyan 2020), on
widthkit's Lanczos (:func:`~widthkit.dynamics.lanczos.lanczos`, full reorthogonalization): each of
``repeats`` runs of ``steps`` steps from a random unit vector gives nodes ``theta_i`` (Ritz values) and
weights ``w_i`` (squared first components), so that ``sum_i w_i f(theta_i)`` estimates ``(1/P) tr f(A)``;
the top eigenvalues (outliers) are deflated and enter exactly (:func:`slq`).  The density is these
spikes, averaged over repeats, each widened to a Gaussian (:func:`density`).

Conventions: ``A`` is for the example-mean loss over ``data``; moments are per parameter
(``mean = tr(A) / P``, ``second = tr(A^2) / P``).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import jvp, vjp

from ..errors import WidthkitError, optional_import, unknown
from ..results import Result
from ._func import check_scales, output_fn, trainable
from .hessian import HessianOperator, _batches, training_mode
from .lanczos import Eigs, lanczos

OPERATORS = ("hessian", "gauss-newton")
Operator = Literal["hessian", "gauss-newton"]


class GaussNewtonOperator:
    """Matrix-free ``v -> S^{1/2} G S^{1/2} v``, ``G = mean_n J_n^T H_n J_n`` (the Gauss-Newton matrix).

    ``J_n`` [K, P] is the Jacobian of example n's outputs, ``H_n`` [K, K] the Hessian of its loss with
    respect to them: ``I`` for ``mse`` (1/2 sum_k (f_k - y_k)^2), ``diag(p) - p p^T`` for ``xent``.  G is
    positive semi-definite and equals the Hessian less the term weighted by the loss's first derivative.
    Same interface as :class:`HessianOperator` (``dim``, ``dtype``, ``__call__``); buffers stay fixed.
    """

    def __init__(self, model: nn.Module, loss: str, data, *, lr_scales: Mapping | None = None):
        if loss not in ("mse", "xent"):
            raise unknown("Gauss-Newton loss", loss, ("mse", "xent"))
        self.loss = loss
        self.params = trainable(model)
        scales = check_scales(self.params, lr_scales)
        self.dtype = next(iter(self.params.values())).dtype
        self.sqrt_s = torch.cat([torch.full((p.numel(),), scales[n] ** 0.5, dtype=self.dtype)
                                 for n, p in self.params.items()])
        self.dim = self.sqrt_s.numel()
        self.f = output_fn(model)
        self.batches = _batches(data)
        self.total = sum(int(x.shape[0]) for x, _ in self.batches)
        with torch.no_grad():
            self.probs = [torch.softmax(self.f(self.params, x), -1) if loss == "xent" else None
                          for x, _ in self.batches]

    def _split(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for n, p in self.params.items():
            out[n] = v[i:i + p.numel()].view_as(p)
            i += p.numel()
        return out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vs = self._split(v.to(self.dtype) * self.sqrt_s)
        gv = torch.zeros(self.dim, dtype=self.dtype)
        for (x, _), p in zip(self.batches, self.probs):
            fx = lambda params: self.f(params, x)  # noqa: E731
            _, jv = jvp(fx, (self.params,), (vs,))                      # [N, K]
            hjv = jv if p is None else p * jv - p * (p * jv).sum(-1, keepdim=True)
            _, pull = vjp(fx, self.params)
            (g,) = pull(hjv / self.total)
            gv += torch.cat([g[n].reshape(-1) for n in self.params])
        return (gv * self.sqrt_s).to(v.dtype)


def make_operator(model: nn.Module, loss: str, data, operator: Operator = "hessian", *, lr_scales=None):
    """The matrix-free ``operator`` ("hessian" or "gauss-newton") of ``loss`` over ``data``.

    Build a Hessian operator inside :func:`training_mode`."""
    if operator == "hessian":
        return HessianOperator(model, loss, data, lr_scales=lr_scales)
    if operator == "gauss-newton":
        return GaussNewtonOperator(model, loss, data, lr_scales=lr_scales)
    raise unknown("curvature operator", operator, OPERATORS)


# ------------------------------------------------------------------------------ curvlinops bridge
def _curvlinops():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # curvlinops' torch.jit.script at import
        return optional_import("curvlinops", "curvature", "the Hessian trace (Hutchinson, Hutch++)")


def as_linear_operator(op):
    """Our matrix-free operator as a curvlinops ``PyTorchLinearOperator`` (float64, symmetric)."""
    _curvlinops()
    from curvlinops._torch_base import PyTorchLinearOperator

    class _Op(PyTorchLinearOperator):
        SELF_ADJOINT = True

        def __init__(self):
            super().__init__([(op.dim,)], [(op.dim,)])

        def _matmat(self, X: list[torch.Tensor]) -> list[torch.Tensor]:
            (M,) = X                                                    # [P, K]
            return [torch.stack([op(M[:, k]).to(torch.float64) for k in range(M.shape[1])], 1)]

        @property
        def device(self):
            return torch.device("cpu")

        @property
        def dtype(self):
            return torch.float64

    return _Op()


@contextlib.contextmanager
def _seeded(seed: int):
    """curvlinops draws from torch's global generator: fork it, seed it, restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def trace_estimate(op, queries: int, method: str = "hutch++", seed: int = 0) -> float:
    """``tr(A)`` from ``queries`` matvecs: ``"hutch++"`` (a multiple of 3, below ``op.dim``) or ``"hutchinson"``."""
    cl = _curvlinops()
    if method not in ("hutch++", "hutchinson"):
        raise unknown("trace method", method, ("hutch++", "hutchinson"))
    if method == "hutch++" and (queries % 3 or not 3 <= queries < op.dim):
        raise WidthkitError(f"Hutch++ takes a multiple of 3 queries below the parameter count ({op.dim}), "
                            f"got {queries}; pass `queries` like {max(3, min(op.dim - 1, 30)) // 3 * 3}")
    fn = cl.hutchpp_trace if method == "hutch++" else cl.hutchinson_trace
    with _seeded(seed):
        return float(fn(as_linear_operator(op), queries))


def slq(op, steps: int, repeats: int, top: Eigs, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deflated stochastic Lanczos quadrature: nodes and weights [repeats, k + steps], each row summing to 1.

    The ``k`` eigenpairs in ``top`` (the outliers) enter exactly, each with weight 1/P; the rest of the
    spectrum is estimated by Lanczos (full reorthogonalization, ``steps`` steps) on the operator restricted
    to their orthogonal complement, from a random unit start vector there, with weight (P - k)/P in all.
    Deflating the outliers removes most of the variance of the moments, which they dominate.
    """
    Q = top.vectors.to(torch.float64)                                   # [P, k]
    k, P = Q.shape[1], op.dim
    steps = min(int(steps), P - k)
    if steps < 1 or repeats < 1:
        raise WidthkitError(f"SLQ needs `lanczos_steps` >= 1 and `repeats` >= 1, got {steps} and {repeats}")

    def rest(v: torch.Tensor) -> torch.Tensor:
        v = v - Q @ (Q.T @ v)
        w = op(v).to(torch.float64)
        return w - Q @ (Q.T @ w)

    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(repeats):
        v = torch.randn(P, generator=g, dtype=torch.float64)
        v = v - Q @ (Q.T @ v)
        v = v / v.norm()
        e = lanczos(rest, P, steps, max_iter=steps, tol=0.0, start=v)
        w = (e.vectors.T @ v) ** 2                                      # squared first components
        nodes.append(torch.cat([top.values.to(torch.float64), e.values]).numpy())
        weights.append(torch.cat([torch.full((k,), 1 / P, dtype=torch.float64), w / w.sum() * (P - k) / P]).numpy())
    return np.stack(nodes), np.stack(weights)


def density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """The SLQ density on ``grid`` [G]: Gaussians of width ``sigma`` at the nodes, weights averaged over repeats."""
    z = (grid[None, None, :] - nodes[..., None]) / sigma
    return (weights[..., None] * np.exp(-0.5 * z ** 2)).sum(1).mean(0) / (sigma * math.sqrt(2 * math.pi))


@dataclass
class Curvature(Result):
    """Trace, top eigenvalues and SLQ spectral density of one model's curvature operator.

    ``nodes``/``weights`` [repeats, steps]; ``mean`` = tr(A)/P and ``second`` = tr(A^2)/P from the
    quadrature; ``trace`` from ``trace_method`` with ``queries`` matvecs; ``top`` descending.
    """

    operator: str
    num_params: int
    trace: float
    trace_method: str
    queries: int
    top: list[float]
    nodes: list[list[float]]
    weights: list[list[float]]
    mean: float
    second: float


def curvature(model: nn.Module, loss: str, data, *, operator: Operator = "hessian", queries: int = 30,
              trace_method: str = "hutch++", lanczos_steps: int = 40, repeats: int = 4, top_k: int = 3,
              seed: int = 0, lr_scales=None) -> Curvature:
    """Trace, top-``top_k`` eigenvalues and SLQ density of the loss curvature of ``model`` on ``data``.

    ``data``: an (x, y) pair or a list of batches (the loss is their example-weighted mean); the model is
    evaluated in training mode, its buffers restored.  ``loss``: "mse" or "xent" (trainer conventions).
    """
    with training_mode(model):
        op = make_operator(model, loss, data, operator, lr_scales=lr_scales)
        queries = min(queries, (op.dim - 1) // 3 * 3) if trace_method == "hutch++" else queries
        tr = trace_estimate(op, queries, trace_method, seed)
        top = lanczos(op, op.dim, min(top_k, op.dim - 1), tol=1e-8, seed=seed + 1)
        nodes, weights = slq(op, lanczos_steps, repeats, top, seed + 2)
    return Curvature(operator, op.dim, tr, trace_method, queries, top.values.tolist(), nodes.tolist(),
                     weights.tolist(),
                     float((weights * nodes).sum(1).mean()), float((weights * nodes ** 2).sum(1).mean()))
