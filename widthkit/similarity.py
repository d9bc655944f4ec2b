"""Comparing two networks' representations and distributions on the same inputs (numpy, float64).

* :func:`cka`: linear centered kernel alignment (Kornblith et al. 2019, arXiv 1905.00414) between features
  ``X`` [n, p] and ``Y`` [n, q] of the same n inputs.  ``debiased=True`` (the default) uses the unbiased
  HSIC estimator (Song et al. 2012) in both the numerator and the normalization, so independent features
  score about 0 at any n and dimension, while the plain (biased) estimate is pulled up by dimension / n.
  CKA is 1 for ``Y = c X Q`` (orthogonal Q, c != 0), and invariant to an orthogonal rotation and an
  isotropic scaling of either side.
* :func:`wasserstein1`: the 1-Wasserstein distance between two 1-D empirical distributions.
* :func:`kernel_alignment`: the eigenvalues of a kernel matrix and the cumulative power of a target in its
  top eigenvectors (task-model alignment, Canatar, Bordelon & Pehlevan 2021).
"""
from __future__ import annotations

import numpy as np


def gram(x: np.ndarray) -> np.ndarray:
    """The linear Gram matrix [n, n] of features ``x`` [n, ...] (flattened per input, centred over inputs)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    x = x - x.mean(0)
    return x @ x.T


def hsic(K: np.ndarray, L: np.ndarray, debiased: bool = True) -> float:
    """HSIC of two [n, n] Gram matrices (unscaled): unbiased U-statistic (needs n >= 4), else tr(K H L H)."""
    n = len(K)
    if not debiased:
        H = np.eye(n) - 1.0 / n
        return float(np.sum((H @ K @ H) * L))
    if n < 4:
        raise ValueError(f"the debiased HSIC needs at least 4 inputs, got {n}")
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    kl = K.sum(0) @ L.sum(0)
    return float((np.sum(K * L) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2.0 * kl / (n - 2)) / (n * (n - 3)))


def cka(x: np.ndarray, y: np.ndarray, debiased: bool = True) -> float:
    """Linear CKA between features ``x`` [n, ...] and ``y`` [n, ...] of the same n inputs (see module doc).

    The debiased value can fall slightly below 0 (or above 1) through noise; NaN if either side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"cka needs features of the same inputs; got {len(x)} and {len(y)} rows")
    return gram_cka(gram(x), gram(y), debiased)


def gram_cka(K: np.ndarray, L: np.ndarray, debiased: bool = True) -> float:
    """:func:`cka` from the Gram matrices of the two sides (reuse a Gram across many comparisons)."""
    den = hsic(K, K, debiased) * hsic(L, L, debiased)
    return float(hsic(K, L, debiased) / np.sqrt(den)) if den > 0 else float("nan")


def wasserstein1(a: np.ndarray, b: np.ndarray, n_quantiles: int = 1000) -> float:
    """W1 distance between the empirical distributions of the values of ``a`` and ``b`` (any shapes).

    W1 = integral over q in (0, 1) of |F_a^-1(q) - F_b^-1(q)|, by the midpoint rule on ``n_quantiles`` levels
    (exact for two samples of that size).
    """
    q = (np.arange(n_quantiles) + 0.5) / n_quantiles
    qa = np.quantile(np.asarray(a, np.float64).ravel(), q, method="inverted_cdf")
    qb = np.quantile(np.asarray(b, np.float64).ravel(), q, method="inverted_cdf")
    return float(np.mean(np.abs(qa - qb)))


def kernel_alignment(K: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the symmetric kernel ``K`` [n, n] (descending, divided by their sum) and the target's
    cumulative power C(k) [n]: the share of ``||y||^2`` (y [n] or [n, K], centered over the inputs) in the
    top-k eigenvectors.  A kernel aligned with the task has C(k) near 1 at small k."""
    y = np.asarray(y, np.float64).reshape(len(K), -1)
    y = y - y.mean(0)
    w, V = np.linalg.eigh((np.asarray(K, np.float64) + np.asarray(K, np.float64).T) / 2)
    w, V = w[::-1], V[:, ::-1]
    power = ((V.T @ y) ** 2).sum(1)
    return w / w.sum(), np.cumsum(power) / power.sum()
