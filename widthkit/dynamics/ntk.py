"""Empirical neural tangent kernel (torch.func) and its top eigenvalue without forming it.

Definitions (K outputs, N examples, J_p = d f / d theta_p):

* ``Theta = sum_p s_p J_p J_p^T`` with ``s_p`` the per-parameter lr scale (``lr_scales``, default 1).
  This is the kernel of gradient descent with per-parameter learning rate ``lr * s_p``: to first
  order ``f_{t+1} - f_t = -lr * Theta @ dL/df``. In widthkit's folded parameterizations (forward
  multipliers folded into the weights) pass ``widthkit.param.lr_scales(model)``; for a module with
  explicit multipliers and ``s_p = 1`` the kernel is the same.
* Stability convention (:data:`CONVENTION`): loss ``L = (1/m) sum_i l(f(x_i), y_i)``, with
  ``l = 1/2 ||f - y||^2`` for "mse" (mean over examples, sum over outputs) and softmax cross-entropy
  for "xent". Linearized gradient descent is stable iff ``lr < 2 / lambda`` with
  ``lambda = lambda_max( H^{1/2} Theta H^{1/2} / m )``, Theta the full [mK, mK] kernel and H the
  block-diagonal Hessian of ``l`` wrt the outputs: ``H = I`` for "mse",
  ``H_i = diag(p_i) - p_i p_i^T`` (softmax covariance) for "xent".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp, vmap

from ..errors import WidthkitError, unknown
from ..results import Result
from ._func import batch_coupled, check_scales, output_fn, trainable
from .lanczos import lanczos

CONVENTION = ("lambda = lambda_max(H^1/2 Theta H^1/2 / m); Theta = sum_p lr_scale_p J_p J_p^T is the full "
              "[mK x mK] NTK; loss = mean over the m examples of l(f, y) with l = 1/2 sum_k (f_k - y_k)^2 "
              "(mse, H = I) or softmax cross-entropy (xent, H = diag(p) - p p^T); gradient descent with "
              "per-parameter lr = lr * lr_scale_p is linearly stable iff lr < 2/lambda")

MODES = ("trace", "full", "flat")


def _jacobian(model: nn.Module, params, x: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Per-example Jacobians ``{name: [N, K, *shape]}``.

    Independent examples use vmap(jacrev) per example; models whose examples interact (BatchNorm
    in training mode) use the Jacobian of the whole batch output, which is the kernel that full-batch
    gradient descent sees.
    """
    f = output_fn(model)
    if batch_coupled(model):
        return jacrev(lambda p: f(p, x))(params)

    def single(p, xi):
        return f(p, xi.unsqueeze(0))[0]

    jf = vmap(jacrev(single), in_dims=(None, 0))
    parts = [jf(params, x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
    return {n: torch.cat([pt[n] for pt in parts]) for n in params}


def ntk(model: nn.Module, x: torch.Tensor, *, lr_scales: Mapping[str, float] | None = None,
        mode: str = "trace", x2: torch.Tensor | None = None, chunk: int = 64) -> torch.Tensor:
    """Empirical NTK ``Theta(x, x2) = sum_p s_p J_p(x) J_p(x2)^T`` of ``model`` as it is (train/eval mode).

    ``mode``: "trace" sums over outputs -> [N, N2]; "full" -> [N, N2, K, K]; "flat" -> [N*K, N2*K]
    (example-major, row ``i*K + a``). ``lr_scales`` weights each parameter (see module docstring).
    """
    if mode not in MODES:
        raise unknown("ntk mode", mode, MODES)
    params = trainable(model)
    if not params:
        raise WidthkitError("the model has no trainable parameters; the NTK is zero")
    scales = check_scales(params, lr_scales)
    Ja = _jacobian(model, params, x, chunk)
    Jb = Ja if x2 is None else _jacobian(model, params, x2, chunk)
    N, K = next(iter(Ja.values())).shape[:2]
    N2 = next(iter(Jb.values())).shape[0]
    eq = "iap,jap->ij" if mode == "trace" else "iap,jbp->ijab"
    out = None
    for n, s in scales.items():
        if s == 0:
            continue
        a = Ja[n].reshape(N, K, -1)
        b = Jb[n].reshape(N2, K, -1)
        term = s * torch.einsum(eq, a, b)
        out = term if out is None else out + term
    if out is None:
        out = torch.zeros((N, N2) if mode == "trace" else (N, N2, K, K), dtype=x.dtype)
    if mode == "flat":
        out = out.permute(0, 2, 1, 3).reshape(N * K, N2 * K)
    return out


def loss_output_hessian_sqrt(logits: torch.Tensor, loss: str) -> torch.Tensor | None:
    """``H_i^{1/2}`` [N, K, K] of the per-example loss wrt the outputs (None for mse, where H = I)."""
    if loss == "mse":
        return None
    if loss == "xent":
        p = torch.softmax(logits, -1)
        H = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
        w, V = torch.linalg.eigh(H)
        return (V * w.clamp_min(0).sqrt().unsqueeze(-2)) @ V.transpose(-1, -2)
    raise unknown("loss", loss, ("mse", "xent"))


class NTKOperator:
    """Matrix-free ``u -> H^{1/2} Theta H^{1/2} u / m`` on R^{N*K} (or Theta_trace on R^N) via jvp/vjp.

    Each product costs one vjp and one jvp (two forwards, one backward); Theta is never formed.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, lr_scales=None, mode: str = "full",
                 loss: str = "mse", normalize: bool = True):
        if mode not in ("full", "trace"):
            raise unknown("ntk eigenvalue mode", mode, ("full", "trace"))
        self.params = trainable(model)
        self.scales = check_scales(self.params, lr_scales)
        f = output_fn(model)
        self._f = lambda p: f(p, x)
        self.out, self._vjp = vjp(self._f, self.params)
        self.N, self.K = self.out.shape
        self.mode = mode
        self.hsqrt = loss_output_hessian_sqrt(self.out.detach(), loss) if mode == "full" else None
        if mode == "trace" and loss != "mse":
            raise WidthkitError("the trace NTK has no loss weighting; use mode='full' with loss='xent'")
        self.denom = float(self.N) if normalize else 1.0
        self.dim = self.N * self.K if mode == "full" else self.N

    def _kernel(self, u: torch.Tensor) -> torch.Tensor:
        (g,) = self._vjp(u)
        g = {n: g[n] * s for n, s in self.scales.items()}
        return jvp(self._f, (self.params,), (g,))[1]

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        dt = self.out.dtype
        if self.mode == "trace":  # sum_a J_a S J_a^T v: one cotangent per output, batched
            u = torch.zeros(self.K, self.N, self.K, dtype=dt)
            idx = torch.arange(self.K)
            u[idx, :, idx] = v.to(dt)
            out = torch.stack([self._kernel(u[a])[:, a] for a in range(self.K)]).sum(0)
            return out.to(v.dtype) / self.denom
        u = v.to(dt).view(self.N, self.K)
        if self.hsqrt is not None:
            u = torch.einsum("iab,ib->ia", self.hsqrt, u)
        out = self._kernel(u)
        if self.hsqrt is not None:
            out = torch.einsum("iab,ib->ia", self.hsqrt, out)
        return out.reshape(-1).to(v.dtype) / self.denom


@dataclass
class NTKEigen(Result):
    """Top NTK eigenvalue(s) and the learning rate at which linearized GD loses stability."""

    eigenvalue: float          # lambda_0 in the convention below
    eigenvalues: list[float]   # top-k, descending
    critical_lr: float         # 2 / eigenvalue
    n_examples: int
    n_outputs: int
    loss: str
    normalized: bool           # divided by m (the loss is a mean over examples)
    mode: str
    iterations: int
    residual: float
    convention: str = CONVENTION


def ntk_top_eigenvalue(model: nn.Module, x: torch.Tensor, *, lr_scales=None, mode: str = "full",
                       loss: str = "mse", normalize: bool = True, k: int = 1, tol: float = 1e-8,
                       max_iter: int | None = None, seed: int = 0) -> NTKEigen:
    """lambda_0 by Lanczos on NTK-vector products (jvp/vjp), never forming the Gram matrix.

    With the defaults (``mode="full"``, ``normalize=True``) this is the stability eigenvalue of
    :data:`CONVENTION`; ``normalize=False, loss="mse"`` gives the plain top eigenvalue of the
    [NK x NK] Gram matrix (``mode="trace"``: of the [N x N] trace kernel).
    """
    op = NTKOperator(model, x, lr_scales=lr_scales, mode=mode, loss=loss, normalize=normalize)
    dt = op.out.dtype if op.out.dtype == torch.float64 else torch.float64
    e = lanczos(op, op.dim, k, tol=tol, max_iter=max_iter, dtype=dt, seed=seed)
    lam = float(e.values[0])
    return NTKEigen(eigenvalue=lam, eigenvalues=[float(v) for v in e.values],
                    critical_lr=2.0 / lam if lam > 0 else float("inf"), n_examples=op.N,
                    n_outputs=op.K, loss=loss, normalized=normalize, mode=mode,
                    iterations=e.iterations, residual=float(e.residuals.max()))

