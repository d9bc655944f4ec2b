"""How fast the NTK moves and how far a network strays from its linearization, versus width.

Dyer & Gur-Ari 2019 predict, in NTK parameterization and at fixed training time, that
``||Theta_t - Theta_0||_F / ||Theta_0||_F`` and ``|f_t - f_t^lin|`` both scale as 1/n.
The linearized model ``f^lin(theta) = f(theta_0) + J(theta_0)(theta - theta_0)`` is trained beside
the real one with the same data, loss, learning rate and per-parameter lr scales; its products
are torch.func jvp/vjp at theta_0. The derivation assumes an analytic activation: for ReLU the
exponents may deviate (Aitken & Gur-Ari 2020).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.func import jvp, vjp

from ..errors import WidthkitError
from ..fitting import LineFit, fit_power_law
from ..ladder import load_recipe_task
from ..progress import bar
from ..results import Result
from ._func import check_scales, output_fn, trainable
from .losses import get_loss
from .ntk import ntk, ntk_top_eigenvalue
from ..recipe import resolve_recipe
from .setup import check_widths, member, subset, with_param
from .train import GD

class Linearized:
    """Gradient descent on the first-order Taylor model of ``model`` around its current parameters."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss, lr_scales=None):
        f = output_fn(model)
        self.params0 = {n: p.clone() for n, p in trainable(model).items()}
        self.scales = check_scales(self.params0, lr_scales)
        self._f = f
        self.x, self.y = x, y
        self.loss_fn = get_loss(loss)
        self.f0, self._vjp = vjp(lambda p: f(p, x), self.params0)
        self.delta = {n: torch.zeros_like(p) for n, p in self.params0.items()}

    def outputs(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """f^lin on ``x`` (default: the training inputs)."""
        if x is None:
            return self.f0 + jvp(lambda p: self._f(p, self.x), (self.params0,), (self.delta,))[1]
        return jvp(lambda p: self._f(p, x), (self.params0,), (self.delta,))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        out, tan = self.outputs(x)
        return out + tan

    def step(self, lr: float) -> float:
        out = self.outputs().detach().requires_grad_(True)
        loss = self.loss_fn(out, self.y)
        (r,) = torch.autograd.grad(loss, out)
        (g,) = self._vjp(r)
        for n, s in self.scales.items():
            self.delta[n] = self.delta[n] - lr * s * g[n]
        return float(loss.detach())


def _rel_change(K: torch.Tensor, K0: torch.Tensor) -> float:
    return float((K - K0).norm() / K0.norm())


@dataclass
class KernelTrajectory(Result):
    """Kernel motion and linearization gap over full-batch GD at one width."""

    width: int
    param: str
    seed: int
    lr: float
    lambda0: float
    steps: list[int]
    kernel_change: list[float]     # ||Theta_t - Theta_0||_F / ||Theta_0||_F on the probe inputs (full kernel)
    lin_gap: list[float]           # RMS over probe outputs of f_t - f_t^lin
    train_loss: list[float]
    lin_train_loss: list[float]
    num_params: int = 0


def track_kernel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, steps: int,
                 every: int = 0, loss="mse", lr_scales=None, x_probe: torch.Tensor | None = None,
                 width: int = 0, param: str = "", seed: int = 0, lambda0: float = float("nan")) -> KernelTrajectory:
    """Train ``model`` (in place) and its linearization by full-batch GD on (x, y) for ``steps`` steps.

    Every ``every`` steps (default: only at the end) record the relative change of the full NTK on
    ``x_probe`` (default ``x``) and the RMS gap between the network and the linearized model there.
    """
    xp = x if x_probe is None else x_probe
    every = every or steps
    K0 = ntk(model, xp, lr_scales=lr_scales, mode="flat")
    lin = Linearized(model, x, y, loss, lr_scales)
    gd = GD(model, loss, lr_scales)
    rec = dict(steps=[], kernel_change=[], lin_gap=[], train_loss=[], lin_train_loss=[])
    for t in range(steps + 1):
        if t % every == 0 or t == steps:
            with torch.no_grad():
                ft = model(xp).reshape(xp.shape[0], -1)
                fl = lin.predict(xp)
                L = float(gd.loss_fn(model(x).reshape(x.shape[0], -1), y))
                Ll = float(gd.loss_fn(lin.outputs(), y))
            rec["steps"].append(t)
            rec["kernel_change"].append(_rel_change(ntk(model, xp, lr_scales=lr_scales, mode="flat"), K0))
            rec["lin_gap"].append(float((ft - fl).pow(2).mean().sqrt()))
            rec["train_loss"].append(L)
            rec["lin_train_loss"].append(Ll)
        if t < steps:
            gd.step(x, y, lr)
            lin.step(lr)
    n = sum(p.numel() for p in gd.params)
    return KernelTrajectory(width, param, seed, lr, lambda0, num_params=n, **rec)


@dataclass
class ScalingFit(LineFit):
    """Power law in width of one quantity at the final step, for one parameterization: the line fitted to
    (log width, log value), ``slope`` being the exponent."""

    param: str
    quantity: str              # kernel_change | lin_gap
    widths: list[int]
    values: list[float]        # mean over seeds per width
    errors: list[float]        # standard error over seeds (NaN with one seed)


@dataclass
class NTKScalingResult(Result):
    """Kernel motion and linearization gap versus width, per parameterization."""

    widths: list[int]
    params: list[str]
    steps: int
    lr_units: float            # lr = lr_units * 2 / lambda_0 at each width (CONVENTION of .ntk)
    n_train: int
    n_probe: int
    loss: str
    activation: str
    fits: list[ScalingFit]
    trajectories: list[KernelTrajectory]


def _fit(param, quantity, trajs) -> ScalingFit:
    ws = sorted({t.width for t in trajs})
    vals, errs = [], []
    for w in ws:
        v = np.array([getattr(t, quantity)[-1] for t in trajs if t.width == w], float)
        vals.append(float(v.mean()))
        errs.append(float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan"))
    sigma = None if np.isnan(errs).any() else errs
    return ScalingFit(**asdict(fit_power_law(ws, vals, sigma)), param=param, quantity=quantity, widths=ws,
                      values=vals, errors=errs)


def ntk_scaling(recipe, *, widths, params, steps: int, every: int, seeds: int, n_train: int, n_probe: int,
                lr_units: float) -> NTKScalingResult:
    """For each parameterization and width: full-batch GD on the first ``n_train`` examples at
    lr = lr_units * 2/lambda_0, tracking the kernel change and |f - f_lin| on ``n_probe`` inputs;
    then fit the final-step values as power laws in width (slope +- standard error).

    ``widths``/``params`` empty: the recipe's; ``every`` 0: steps/6; seeds 0..``seeds``-1 per width.
    """
    r = resolve_recipe(recipe)
    task = load_recipe_task(r)
    widths = check_widths(widths or r.model.widths)
    recipes = {p: with_param(r, p) for p in params or [r.param.kind]}
    every = int(every or max(steps // 6, 1))
    if not 0 < lr_units < 1:
        raise WidthkitError(f"lr_units={lr_units} must be in (0, 1): larger learning rates leave the lazy phase")
    x, y = subset(task, n_train)
    xp = x[:n_probe]
    trajs, fits = [], []
    with bar("ntk-scaling", len(recipes) * len(widths) * seeds) as b:
        for p, rp in recipes.items():
            pt = []
            for w in widths:
                for s in range(seeds):
                    model, scales = member(rp, w, s, task)
                    lam = ntk_top_eigenvalue(model, x, lr_scales=scales, loss=r.train.loss).eigenvalue
                    pt.append(track_kernel(model, x, y, lr=lr_units * 2 / lam, steps=steps, every=every,
                                           loss=r.train.loss, lr_scales=scales, x_probe=xp, width=w,
                                           param=p, seed=s, lambda0=lam))
                    b.advance()
            trajs += pt
            fits += [_fit(p, "kernel_change", pt), _fit(p, "lin_gap", pt)]
    return NTKScalingResult(widths, list(recipes), steps, lr_units, int(x.shape[0]), int(xp.shape[0]), r.train.loss,
                            str(r.model.kwargs.get("activation", "relu")), fits, trajs)
