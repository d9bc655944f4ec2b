"""Lanczos with full reorthogonalization for the top eigenpairs of a symmetric linear operator.

Used for the NTK (via NTK-vector products) and the loss Hessian (via Hessian-vector products), so
neither matrix is ever formed. Full reorthogonalization (two Gram-Schmidt passes against every
previous Lanczos vector) keeps the Krylov basis orthonormal, so no spurious copies of converged
eigenvalues appear; memory is ``iterations x dim``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Eigs:
    """Top-k Ritz pairs: ``values`` [k] (descending), ``vectors`` [dim, k] (orthonormal columns)."""

    values: torch.Tensor
    vectors: torch.Tensor
    iterations: int
    residuals: torch.Tensor  # ||A v - theta v|| for each pair


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int = 1, *,
            max_iter: int | None = None, tol: float = 1e-7, dtype=torch.float64, device=None,
            seed: int = 0, check_every: int = 4, start: torch.Tensor | None = None) -> Eigs:
    """Largest (algebraic) ``k`` eigenpairs of the symmetric operator ``matvec`` on R^dim.

    Stops when every wanted Ritz pair has residual ``|beta_m s_mi| <= tol * max|theta|`` or after
    ``max_iter`` steps (default ``min(dim, max(10k + 50, 80))``). Work happens in ``dtype``.
    ``start``: the first Lanczos vector (default: a random one from ``seed``), normalized here.
    """
    k = max(1, min(int(k), dim))
    max_iter = min(dim, max_iter if max_iter is not None else max(10 * k + 50, 80))
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(dim, generator=g, dtype=torch.float64) if start is None else start.to(torch.float64)
    q = q.to(device=device, dtype=dtype)
    q = q / q.norm()
    Q = [q]
    alphas: list[float] = []
    betas: list[float] = []
    theta = S = None
    for j in range(max_iter):
        w = matvec(Q[j]).to(dtype)
        alpha = float(torch.dot(Q[j], w))
        alphas.append(alpha)
        Qm = torch.stack(Q)
        for _ in range(2):  # full reorthogonalization, twice is enough
            w = w - Qm.T @ (Qm @ w)
        beta = float(w.norm())
        m = j + 1
        done = m == max_iter or beta <= 1e-12 * max(abs(a) for a in alphas)
        if done or (m >= k and m % check_every == 0):
            T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
            if m > 1:
                off = torch.tensor(betas[:m - 1], dtype=torch.float64)
                T += torch.diag(off, 1) + torch.diag(off, -1)
            theta, S = torch.linalg.eigh(T)
            res = (beta * S[-1, -k:]).abs()
            scale = float(theta.abs().max()) or 1.0
            if done or bool((res <= tol * scale).all()):
                break
        betas.append(beta)
        Q.append(w / beta)
    m = len(alphas)
    Qm = torch.stack(Q[:m]).to(torch.float64)
    kk = min(k, m)
    vals = theta[-kk:].flip(0)
    vecs = (Qm.T @ S[:, -kk:]).flip(1)
    res = (beta * S[-1, -kk:]).abs().flip(0)
    return Eigs(vals.to(dtype), vecs.to(dtype), m, res)
