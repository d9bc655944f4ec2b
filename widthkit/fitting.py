"""Small least-squares fits with uncertainties, shared by the analyses."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .results import Result


@dataclass
class LineFit(Result):
    """y = intercept + slope * x, with standard errors from the residuals."""

    slope: float
    intercept: float
    slope_err: float
    intercept_err: float
    n: int


def fit_line(x, y, sigma=None) -> LineFit:
    """Weighted least squares of y on x (weights 1/sigma^2 when given)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if sigma is not None:
        sigma = np.asarray(sigma, float)
        ok &= np.isfinite(sigma) & (sigma > 0)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 2:
        return LineFit(float("nan"), float("nan"), float("nan"), float("nan"), n)
    w = np.ones(n) if sigma is None else 1.0 / sigma[ok] ** 2
    A = np.stack([np.ones(n), x], 1)
    AtW = A.T * w
    cov = np.linalg.pinv(AtW @ A)
    beta = cov @ (AtW @ y)
    resid = y - A @ beta
    dof = max(n - 2, 1)
    s2 = float((w * resid ** 2).sum() / dof) if n > 2 else 0.0
    # With known sigma, scale by the reduced chi^2 only when it exceeds 1 (conservative).
    scale = max(s2, 1.0) if sigma is not None else s2
    err = np.sqrt(np.clip(np.diag(cov) * scale, 0, None))
    return LineFit(float(beta[1]), float(beta[0]), float(err[1]), float(err[0]), n)


def fit_power_law(x, y, sigma=None) -> LineFit:
    """Fit y = C * x**slope on log-log axes (``intercept`` is log C)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = (x > 0) & (y > 0)
    s = None if sigma is None else np.asarray(sigma, float)[ok] / y[ok]
    return fit_line(np.log(x[ok]), np.log(y[ok]), s)
