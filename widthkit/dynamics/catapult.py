"""The catapult mechanism (Lewkowycz et al. 2020): lazy, catapult and divergent phases of GD.

Learning rates are measured against lambda_0, the top eigenvalue of the NTK at initialization in
the convention of :data:`widthkit.dynamics.ntk.CONVENTION` (mean loss over examples, MSE =
1/2 sum over outputs). Predictions for the solvable two-layer linear model: lazy for
lr < 2/lambda_0, catapult (loss rises for ~log n steps while the curvature falls, then converges to
a flatter point with final lambda < 2/lr) for 2/lambda_0 < lr < 4/lambda_0, divergent above.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import WidthkitError
from ..results import Result
from .ntk import CONVENTION, ntk_top_eigenvalue
from .train import GD, evaluate

PHASES = ("lazy", "catapult", "divergent")


class TwoLayerLinear(nn.Module):
    """``f(x) = n^{-1/2} v^T u x`` in NTK parameterization (u, v ~ N(0, 1)), the paper's solvable model."""

    def __init__(self, d_in: int, width: int, d_out: int = 1, generator: torch.Generator | None = None,
                 dtype=torch.float32):
        super().__init__()
        self.width = width
        self.u = nn.Parameter(torch.randn(width, d_in, generator=generator, dtype=dtype))
        self.v = nn.Parameter(torch.randn(d_out, width, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.u.T) @ self.v.T / math.sqrt(self.width)


def catapult_recurrence(f0: float, lam0: float, lr: float, width: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's exact one-sample updates (target y = 0, ||x|| = 1, loss f^2/2):

    ``f_{t+1} = (1 - lr lam_t + lr^2 f_t^2 / n) f_t``, ``lam_{t+1} = lam_t + (lr f_t^2 / n)(lr lam_t - 4)``.
    Returns (f_t, lam_t) for t = 0..steps.
    """
    f = np.empty(steps + 1)
    lam = np.empty(steps + 1)
    f[0], lam[0] = f0, lam0
    for t in range(steps):
        ft = f[t]
        f[t + 1] = (1 - lr * lam[t] + lr ** 2 * ft ** 2 / width) * ft
        lam[t + 1] = lam[t] + (lr * ft ** 2 / width) * (lr * lam[t] - 4)
    return f, lam


def classify(losses: Sequence[float], rise_tol: float = 0.01, blowup: float = 1e8) -> str:
    """Phase of one run from its loss curve (``losses[0]`` = initial loss).

    divergent: a non-finite loss, a loss above ``blowup x`` the initial one, or a final loss not below
    the initial one; catapult: the loss rose more than ``rise_tol`` (relative) above its initial
    value and came back down below it; lazy: it never rose (monotone up to ``rise_tol``).
    """
    L = np.asarray(losses, float)
    L0 = L[0]
    if not np.isfinite(L).all() or L.max() > blowup * max(L0, 1e-30) or L[-1] >= L0:
        return "divergent"
    return "catapult" if L.max() > L0 * (1 + rise_tol) else "lazy"


@dataclass
class PhaseRun(Result):
    """One training run at one learning rate."""

    lr: float
    lr_units: float            # lr / (2/lambda_0)
    lr_lambda: float           # lr * lambda_0 (units of 1/lambda_0)
    phase: str                 # lazy | catapult | divergent
    loss: list[float]          # training loss at steps 0..T (T may be shorter when diverged)
    lambda_steps: list[int]
    lambdas: list[float]       # NTK top eigenvalue at lambda_steps (CONVENTION)
    final_lambda: float | None
    final_lambda_below_2_over_lr: bool | None
    max_loss_ratio: float      # max_t L_t / L_0
    test_loss: float | None
    test_acc: float | None


@dataclass
class WidthPhases(Result):
    """All learning rates at one width, with the measured boundaries (in units of 1/lambda_0)."""

    width: int
    lambda0: float
    critical_lr: float                      # 2 / lambda_0
    lazy_catapult_boundary: float | None    # lr*lambda_0 midway between last lazy and first catapult run
    max_stable_lr: float | None             # largest lr*lambda_0 that did not diverge
    first_divergent_lr: float | None        # smallest lr*lambda_0 that diverged
    eta_max: float | None                   # midpoint of the two above (None if no run diverged)
    runs: list[PhaseRun] = field(default_factory=list)


@dataclass
class LRPhaseResult(Result):
    """Learning-rate phase diagram across widths."""

    widths: list[int]
    lrs: list[float]           # grid in units of 2/lambda_0
    steps: int
    loss: str
    n_train: int
    per_width: list[WidthPhases]
    convention: str = CONVENTION


def _boundaries(runs: list[PhaseRun]):
    runs = sorted(runs, key=lambda r: r.lr_lambda)
    lazy = [r.lr_lambda for r in runs if r.phase == "lazy"]
    cat = [r.lr_lambda for r in runs if r.phase == "catapult"]
    div = [r.lr_lambda for r in runs if r.phase == "divergent"]
    stable = [r.lr_lambda for r in runs if r.phase != "divergent"]
    lc = None
    if lazy and cat:
        above = [c for c in cat if c > max(lazy)] or cat
        lc = 0.5 * (max(lazy) + min(above))
    mx = max(stable) if stable else None
    fd = min([d for d in div if mx is None or d > mx] or div) if div else None
    eta = 0.5 * (mx + fd) if (mx is not None and fd is not None) else None
    return lc, mx, fd, eta


def scan_lrs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lrs: Sequence[float], steps: int, *,
             loss: str = "mse", lr_scales=None, x_test=None, y_test=None, lambda_every: int = 0,
             lambda_steps: int = 0, width: int = 0, rise_tol: float = 0.01, track_tol: float = 1e-3,
             progress=None) -> WidthPhases:
    """Train copies of ``model`` by full-batch GD on (x, y) at lr = c * 2/lambda_0 for each c.

    ``lambda_every``/``lambda_steps``: measure the NTK top eigenvalue every ``lambda_every`` steps
    during the first ``lambda_steps`` steps (0: only at init and at the end); those and the final
    eigenvalue are converged to relative Ritz residual ``track_tol`` (lambda_0 itself to 1e-8).
    """
    lam0 = ntk_top_eigenvalue(model, x, lr_scales=lr_scales, loss=loss).eigenvalue
    if not lam0 > 0:
        raise WidthkitError(f"the NTK top eigenvalue at init is {lam0}; the model's output does not depend "
                            "on its trainable parameters")
    runs = []
    for c in lrs:
        lr = float(c) * 2.0 / lam0
        m = copy.deepcopy(model)
        gd = GD(m, loss, lr_scales)
        L, lam_t, lam_s = [], [], []
        for t in range(steps + 1):
            if lambda_every and t < lambda_steps and t % lambda_every == 0:
                lam_s.append(t)
                lam_t.append(ntk_top_eigenvalue(m, x, lr_scales=lr_scales, loss=loss, tol=track_tol).eigenvalue)
            if t == steps:
                with torch.no_grad():
                    L.append(float(gd.loss_fn(m(x), y)))
                break
            L.append(gd.step(x, y, lr))
            if not math.isfinite(L[-1]) or L[-1] > 1e8 * max(L[0], 1e-30):
                break
            if L[-1] < 1e-14 * L[0]:  # converged; also avoids slow denormal arithmetic
                break
        phase = classify(L, rise_tol)
        fin = None
        if phase != "divergent":
            fin = ntk_top_eigenvalue(m, x, lr_scales=lr_scales, loss=loss, tol=track_tol).eigenvalue
        tl = ta = None
        if x_test is not None and phase != "divergent":
            tl, ta = evaluate(m, loss, x_test, y_test)
        runs.append(PhaseRun(lr, float(c), float(c) * 2.0, phase, L, lam_s, lam_t, fin,
                             None if fin is None else bool(fin < 2.0 / lr),
                             float(np.nanmax(L) / L[0]) if L[0] > 0 else float("nan"), tl,
                             None if ta is None or math.isnan(ta) else ta))
        if progress is not None:
            progress.advance()
    lc, mx, fd, eta = _boundaries(runs)
    return WidthPhases(width, lam0, 2.0 / lam0, lc, mx, fd, eta, runs)
