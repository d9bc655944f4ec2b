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
from typing import Callable, Sequence

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


def classifier_rule(rise_tol: float = 0.01, blowup: float = 1e8) -> str:
    """The rule :func:`classify` applies, in words (stated in every ``lr-phase`` output)."""
    return (f"lazy: the loss never rose above (1 + {rise_tol:g}) L0 (L0 = initial loss); catapult: it rose above "
            "that, then ended below L0 and below L_const, the loss of the best constant prediction (mean target "
            "for mse, class frequencies for xent; ignored when the targets are constant); divergent: a non-finite "
            f"loss, a loss above {blowup:g} L0, or a run that rose and did not end below both (a net whose units "
            "all died ends at about L_const). The final NTK top eigenvalue below 2/lr is reported as a check of "
            "the catapult, not used to classify")


def constant_loss(y: torch.Tensor, k: int, loss: str) -> float | None:
    """L_const: the training loss of the best constant prediction of ``k`` outputs (None for a custom loss)."""
    if loss not in ("mse", "xent"):
        return None
    if loss == "xent":
        freq = torch.bincount(y.reshape(-1), minlength=k).double() / y.numel()
        return float(-(freq[freq > 0] * freq[freq > 0].log()).sum())
    t = torch.nn.functional.one_hot(y, k).double() if y.dtype == torch.int64 else y.double().reshape(y.shape[0], -1)
    return float(0.5 * (t - t.mean(0)).pow(2).sum(1).mean())


def classify(losses: Sequence[float], rise_tol: float = 0.01, blowup: float = 1e8,
             floor: float | None = None) -> str:
    """Phase of one run from its loss curve (``losses[0]`` = initial loss; ``floor`` = L_const); rule:
    :func:`classifier_rule`."""
    L = np.asarray(losses, float)
    L0 = L[0]
    if not np.isfinite(L).all() or L.max() > blowup * max(L0, 1e-30):
        return "divergent"
    if L.max() <= L0 * (1 + rise_tol):
        return "lazy" if L[-1] < L0 else "divergent"
    end = min(L0, floor) if floor is not None and floor > 0 else L0
    return "catapult" if L[-1] < end else "divergent"


def bisect(is_above: Callable[[float], bool], lo: float, hi: float, tol: float) -> tuple[float, float, int]:
    """Shrink a bracket ``[lo, hi]`` (``is_above(lo)`` False, ``is_above(hi)`` True) of a threshold by bisection
    until ``hi - lo <= tol * (hi + lo) / 2`` (relative width ``tol``). Returns (lo, hi, evaluations)."""
    if not 0 < lo < hi or not tol > 0:
        raise WidthkitError(f"bisect needs 0 < lo < hi and tol > 0, got lo={lo}, hi={hi}, tol={tol}")
    n = 0
    while hi - lo > tol * 0.5 * (hi + lo):
        mid = 0.5 * (lo + hi)
        n += 1
        if is_above(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi, n


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


# A boundary's upper side, as a predicate on the phase of one run.
BOUNDARIES = {"lazy|catapult": lambda phase: phase != "lazy", "catapult|divergent": lambda phase: phase == "divergent"}


@dataclass
class Boundary(Result):
    """One phase boundary at one width and seed, bracketed by bisection; lr in units of 1/lambda_0."""

    name: str                  # lazy|catapult or catapult|divergent
    seed: int
    lambda0: float
    lo: float | None           # largest lr*lambda_0 on the lower side (None: the lowest lr tried is above)
    hi: float | None           # smallest lr*lambda_0 on the upper side (None: never crossed)
    estimate: float | None     # (lo + hi)/2, known to +-tol/2 relative; None when not bracketed
    runs: int                  # training runs this boundary cost beyond the grid
    note: str = ""             # why it is not bracketed


@dataclass
class WidthPhases(Result):
    """All learning rates at one width (grid: the first seed), with the boundaries (units of 1/lambda_0).

    With bisection on (``tol > 0``) ``lazy_catapult_boundary`` and ``eta_max`` are the means of the bisected
    boundaries over seeds (``*_std``: their standard deviation); with ``tol = 0`` they are grid midpoints.
    """

    width: int
    lambda0: float                          # the first seed's, measured on lambda_examples examples
    critical_lr: float                      # 2 / lambda_0
    lazy_catapult_boundary: float | None
    max_stable_lr: float | None             # largest grid lr*lambda_0 that did not diverge
    first_divergent_lr: float | None        # smallest grid lr*lambda_0 that diverged
    eta_max: float | None                   # the catapult|divergent boundary (None if nothing diverged)
    runs: list[PhaseRun] = field(default_factory=list)
    lambda_examples: int = 0                # lambda_0 is measured on the full batch of this many examples
    boundaries: list[Boundary] = field(default_factory=list)
    lazy_catapult_std: float | None = None
    eta_max_std: float | None = None
    constant_loss: float | None = None      # L_const of the classifier rule on this batch


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
    seeds: list[int] = field(default_factory=lambda: [0])
    tol: float = 0.0           # relative bracket width of the bisected boundaries (0: grid only)
    classifier: str = ""       # the phase rule, :func:`classifier_rule`


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


class PhaseScan:
    """Full-batch GD runs of copies of one initialized ``model`` on (x, y) at lr = c / lambda_0.

    ``lambda_every``/``lambda_steps``: measure the NTK top eigenvalue every ``lambda_every`` steps
    during the first ``lambda_steps`` steps (0: only at init and at the end); those and the final
    eigenvalue are converged to relative Ritz residual ``track_tol`` (lambda_0 itself to 1e-8).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, loss: str = "mse",
                 lr_scales=None, x_test=None, y_test=None, lambda_every: int = 0, lambda_steps: int = 0,
                 rise_tol: float = 0.01, track_tol: float = 1e-3):
        self.model, self.x, self.y, self.steps, self.loss, self.scales = model, x, y, steps, loss, lr_scales
        self.x_test, self.y_test = x_test, y_test
        self.lambda_every, self.lambda_steps, self.rise_tol, self.track_tol = lambda_every, lambda_steps, rise_tol, track_tol
        self.lam0 = ntk_top_eigenvalue(model, x, lr_scales=lr_scales, loss=loss).eigenvalue
        with torch.no_grad():
            self.floor = constant_loss(y, model(x[:1]).reshape(1, -1).shape[1], loss)
        if not self.lam0 > 0:
            raise WidthkitError(f"the NTK top eigenvalue at init is {self.lam0}; the model's output does not "
                                "depend on its trainable parameters")

    def _lam(self, m: nn.Module) -> float:
        return ntk_top_eigenvalue(m, self.x, lr_scales=self.scales, loss=self.loss, tol=self.track_tol).eigenvalue

    def run(self, c: float, measure: bool = True) -> PhaseRun:
        """One run at lr = c / lambda_0; ``measure=False`` skips the eigenvalues and the test evaluation."""
        lr = float(c) / self.lam0
        m = copy.deepcopy(self.model)
        gd = GD(m, self.loss, self.scales)
        L, lam_t, lam_s = [], [], []
        for t in range(self.steps + 1):
            if measure and self.lambda_every and t < self.lambda_steps and t % self.lambda_every == 0:
                lam_s.append(t)
                lam_t.append(self._lam(m))
            if t == self.steps:
                with torch.no_grad():
                    L.append(float(gd.loss_fn(m(self.x), self.y)))
                break
            L.append(gd.step(self.x, self.y, lr))
            if not math.isfinite(L[-1]) or L[-1] > 1e8 * max(L[0], 1e-30):
                break
            if L[-1] < 1e-14 * L[0]:  # converged; also avoids slow denormal arithmetic
                break
        phase = classify(L, self.rise_tol, floor=self.floor)
        fin = self._lam(m) if measure and phase != "divergent" else None
        tl = ta = None
        if measure and self.x_test is not None and phase != "divergent":
            tl, ta = evaluate(m, self.loss, self.x_test, self.y_test)
        return PhaseRun(lr, float(c) / 2.0, float(c), phase, L, lam_s, lam_t, fin,
                        None if fin is None else bool(fin < 2.0 / lr),
                        float(np.nanmax(L) / L[0]) if L[0] > 0 else float("nan"), tl,
                        None if ta is None or math.isnan(ta) else ta)

    def boundary(self, name: str, grid: Sequence[float], known: dict[float, str], start: int, tol: float,
                 seed: int = 0, extend: int = 4) -> Boundary:
        """Bracket boundary ``name`` (a key of :data:`BOUNDARIES`) to relative width ``tol``.

        ``grid``: sorted lr*lambda_0 values; ``known``: phases already run (lr*lambda_0 -> phase); the
        walk for a bracket starts at ``grid[start]`` (moving down while the lower neighbour is already on
        the upper side, up while it is not, doubling past the grid's end at most ``extend`` times), then
        :func:`bisect` narrows it.
        """
        above = BOUNDARIES[name]
        grid, known, runs = list(grid), dict(known), 0

        def is_above(c: float) -> bool:
            nonlocal runs
            if c not in known:
                known[c] = self.run(c, measure=False).phase
                runs += 1
            return above(known[c])

        i = min(max(start, 0), len(grid) - 1)
        top = grid[-1] * 2 ** extend
        while not is_above(grid[i]):
            if i == len(grid) - 1:
                if grid[i] >= top:
                    return Boundary(name, seed, self.lam0, grid[i], None, None, runs,
                                    f"not crossed up to lr = {grid[i]:.3g}/lambda_0")
                grid.append(2.0 * grid[i])
            i += 1
        while i > 0 and is_above(grid[i - 1]):
            i -= 1
        if i == 0:
            return Boundary(name, seed, self.lam0, None, grid[0], None, runs,
                            f"already crossed at the lowest lr tried, {grid[0]:.3g}/lambda_0")
        lo, hi, n = bisect(is_above, grid[i - 1], grid[i], tol)
        return Boundary(name, seed, self.lam0, lo, hi, 0.5 * (lo + hi), runs)


def grid_starts(runs: Sequence[PhaseRun]) -> dict[str, int]:
    """Per boundary, the index of the first grid run on its upper side (the last run if none is)."""
    return {name: next((i for i, r in enumerate(runs) if above(r.phase)), len(runs) - 1)
            for name, above in BOUNDARIES.items()}


def pool_boundaries(wp: WidthPhases) -> WidthPhases:
    """Set ``wp``'s lazy|catapult boundary and eta_max to the mean (and std) of its bisected boundaries."""
    for name, mean, std in (("lazy|catapult", "lazy_catapult_boundary", "lazy_catapult_std"),
                            ("catapult|divergent", "eta_max", "eta_max_std")):
        est = [b.estimate for b in wp.boundaries if b.name == name and b.estimate is not None]
        if est:
            setattr(wp, mean, float(np.mean(est)))
            setattr(wp, std, float(np.std(est, ddof=1)) if len(est) > 1 else 0.0)
    return wp


def scan_lrs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lrs: Sequence[float], steps: int, *,
             loss: str = "mse", lr_scales=None, x_test=None, y_test=None, lambda_every: int = 0,
             lambda_steps: int = 0, width: int = 0, rise_tol: float = 0.01, track_tol: float = 1e-3,
             tol: float = 0.0, seed: int = 0, progress=None) -> WidthPhases:
    """Train copies of ``model`` by full-batch GD on (x, y) at lr = c * 2/lambda_0 for each c of the sorted
    grid ``lrs``; with ``tol > 0`` also bisect both boundaries to relative width ``tol`` (member ``seed``).
    Other options: :class:`PhaseScan`."""
    scan = PhaseScan(model, x, y, steps, loss=loss, lr_scales=lr_scales, x_test=x_test, y_test=y_test,
                     lambda_every=lambda_every, lambda_steps=lambda_steps, rise_tol=rise_tol, track_tol=track_tol)
    runs = []
    for c in lrs:
        runs.append(scan.run(2.0 * float(c)))
        if progress is not None:
            progress.advance()
    lc, mx, fd, eta = _boundaries(runs)
    wp = WidthPhases(width, scan.lam0, 2.0 / scan.lam0, lc, mx, fd, eta, runs, int(x.shape[0]),
                     constant_loss=scan.floor)
    if tol > 0:
        known = {r.lr_lambda: r.phase for r in runs}
        grid = [r.lr_lambda for r in runs]
        wp.boundaries = [scan.boundary(name, grid, known, i, tol, seed) for name, i in grid_starts(runs).items()]
    return pool_boundaries(wp)
