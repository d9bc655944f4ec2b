"""Gradient descent in a tiny subspace (Gur-Ari et al. 2018) and projected SGD (Song, Ahn & Yun 2024).

``track_subspace`` trains one member with SGD and, every ``every`` steps, measures the top-k Hessian
eigenspace of the loss on a fixed batch and the fraction of that batch's gradient inside it, next to
the same fraction for a random k-dim subspace (about k/P). ``projected_sgd`` trains from one init three
ways: plain SGD, SGD with the gradient projected onto the top-k eigenspace ("top-only", Dom-SGD) and
with that component removed ("bulk-only", Bulk-SGD). Everything lives in the coordinates where the
parameterization's per-parameter lr makes the update plain SGD (see :mod:`.hessian`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..errors import WidthkitError
from ..ladder import load_recipe_task
from ..progress import bar
from ..results import Result
from .hessian import gradient_overlap, hessian_top_eigs, subspace_stability
from ..recipe import resolve_recipe
from .setup import member, subset
from .train import GD, evaluate


@dataclass
class SubspaceTrack(Result):
    """Overlap of the gradient with the top-k Hessian eigenspace over plain SGD (one member).

    SGD at the recipe lr (momentum and schedule ignored) with the parameterization's lr scales; the
    Hessian and the gradient are those of the first ``hessian_batch`` training examples.
    """

    width: int
    seed: int
    k: int
    num_params: int
    lr: float
    batch_size: int
    hessian_batch: int
    steps: list[int]
    overlap_sq: list[float]             # ||P_k g||^2 / ||g||^2 (Gur-Ari et al. 2018)
    overlap: list[float]                # ||P_k g|| / ||g||
    random_overlap_sq: list[float]      # same fraction for a random k-dim subspace
    random_expected: float              # k / P
    top_eigenvalues: list[list[float]]  # [T][k]
    stability_prev: list[float | None]  # (1/k) sum_i ||P_k(t) v_i(t_prev)||^2 (None at the first step)
    stability_final: list[float]        # against the final top subspace
    train_loss: list[float]             # loss on the Hessian batch
    test_acc: list[float]


@dataclass
class ProjectedSGD(Result):
    """Loss curves of plain, top-only and bulk-only SGD from one init (Song, Ahn & Yun 2024).

    top-only: the gradient projected on the top-k eigenspace of the Hessian on the first
    ``hessian_batch`` training examples, refreshed every ``refresh`` steps; bulk-only: that component removed.
    """

    width: int
    k: int
    lr: float
    refresh: int
    hessian_batch: int
    steps: list[int]
    train_loss: dict[str, list[float]] = field(default_factory=dict)   # variant -> [T]
    test_acc: dict[str, list[float]] = field(default_factory=dict)


class _Batches:
    def __init__(self, x, y, batch_size: int, seed: int):
        self.x, self.y, self.bs = x, y, batch_size if 0 < batch_size < x.shape[0] else x.shape[0]
        self.g = torch.Generator().manual_seed(seed)
        self.perm, self.i = torch.randperm(x.shape[0], generator=self.g), 0

    def __call__(self):
        if self.i + self.bs > len(self.perm):
            self.perm, self.i = torch.randperm(self.x.shape[0], generator=self.g), 0
        idx = self.perm[self.i:self.i + self.bs]
        self.i += self.bs
        return self.x[idx], self.y[idx]


def _setup(recipe, width: int, seed: int, steps: int, every: int, k: int):
    """The recipe, task, resolved width/steps/k/every (0 = derived), member and its lr scales."""
    r = resolve_recipe(recipe)
    task = load_recipe_task(r)
    if task.kind != "classification" and not k:
        raise WidthkitError("k=0 means the number of classes; give k for a regression task")
    if r.optim.name != "sgd":
        raise WidthkitError(f"subspace experiments use SGD; this recipe uses optim.name='{r.optim.name}'; "
                            "set optim.name = \"sgd\" in the recipe")
    width = int(width or min(r.model.widths))
    steps = int(steps or r.train.steps)
    k = int(k or task.num_classes)
    every = int(every or max(steps // 20, 1))
    model, scales = member(r, width, seed, task, torch.float32)
    return r, task, width, steps, k, every, model, scales


def track_subspace(recipe, *, width: int, seed: int, steps: int, every: int, k: int,
                   hessian_batch: int) -> SubspaceTrack:
    """Train one member with plain SGD (recipe lr, batch size, lr scales) and track the overlap.

    ``width`` 0: the recipe's narrowest; ``steps`` 0: ``train.steps``; ``every`` 0: steps/20; ``k`` 0:
    the number of classes.  Hessian and gradient on the first ``hessian_batch`` training examples.
    """
    r, task, width, steps, k, every, model, scales = _setup(recipe, width, seed, steps, every, k)
    xh, yh = subset(task, hessian_batch)
    gd = GD(model, r.train.loss, scales)
    batches = _Batches(task.x_train, task.y_train, r.data.batch_size, seed)
    rec = {key: [] for key in ("steps", "overlap_sq", "overlap", "random_overlap_sq", "top_eigenvalues",
                               "train_loss", "test_acc")}
    Vs = []
    P = 0
    with bar("subspace", steps) as b:
        for t in range(steps + 1):
            if t % every == 0 or t == steps:
                o = gradient_overlap(model, r.train.loss, (xh, yh), k, lr_scales=scales, tol=1e-4, seed=t)
                P = o.num_params
                Vs.append(o.eigenvectors.float())
                rec["steps"].append(t)
                rec["overlap_sq"].append(o.overlap_sq)
                rec["overlap"].append(o.overlap)
                rec["random_overlap_sq"].append(o.random_overlap_sq)
                rec["top_eigenvalues"].append(o.eigenvalues)
                rec["train_loss"].append(evaluate(model, r.train.loss, xh, yh)[0])
                rec["test_acc"].append(evaluate(model, r.train.loss, task.x_test, task.y_test)[1])
            if t < steps:
                gd.step(*batches(), r.optim.lr)
                b.advance()
    stab_prev = [None] + [subspace_stability(Vs[i - 1], Vs[i]) for i in range(1, len(Vs))]
    stab_final = [subspace_stability(V, Vs[-1]) for V in Vs]
    return SubspaceTrack(width, seed, k, P, r.optim.lr, batches.bs, int(xh.shape[0]), random_expected=k / P,
                         stability_prev=stab_prev, stability_final=stab_final, **rec)


def projected_sgd(recipe, *, width: int, seed: int, steps: int, every: int, k: int, hessian_batch: int,
                  refresh: int) -> ProjectedSGD:
    """Plain vs top-only vs bulk-only SGD from the same init (arguments as :func:`track_subspace`); the
    top-k eigenspace (of the Hessian on a fixed batch) is recomputed every ``refresh`` steps."""
    r, task, width, steps, k, every, model0, scales = _setup(recipe, width, seed, steps, every, k)
    xh, yh = subset(task, hessian_batch)
    out = ProjectedSGD(width, k, r.optim.lr, refresh, int(xh.shape[0]), [])
    variants = ("sgd", "top-only", "bulk-only")
    with bar("projected-sgd", steps * len(variants)) as b:
        for v in variants:
            model = copy.deepcopy(model0)
            gd = GD(model, r.train.loss, scales)
            batches = _Batches(task.x_train, task.y_train, r.data.batch_size, seed)
            V = None
            losses, accs, ts = [], [], []
            for t in range(steps + 1):
                if v != "sgd" and t % refresh == 0 and t < steps:
                    V = hessian_top_eigs(model, r.train.loss, (xh, yh), k, lr_scales=scales, tol=1e-4,
                                         seed=t).eigenvectors.float()
                if t % every == 0 or t == steps:
                    ts.append(t)
                    losses.append(evaluate(model, r.train.loss, xh, yh)[0])
                    accs.append(evaluate(model, r.train.loss, task.x_test, task.y_test)[1])
                if t == steps:
                    break
                if v == "sgd":
                    tf = None
                elif v == "top-only":
                    tf = lambda g, V=V: V @ (V.T @ g)  # noqa: E731
                else:
                    tf = lambda g, V=V: g - V @ (V.T @ g)  # noqa: E731
                gd.step(*batches(), r.optim.lr, tf)
                b.advance()
            out.steps = ts
            out.train_loss[v] = losses
            out.test_acc[v] = accs
    return out
