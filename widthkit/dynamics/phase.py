"""``lr_phase``: the learning-rate phase diagram (lazy / catapult / divergent) across widths."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import WidthkitError
from ..progress import bar
from .catapult import LRPhaseResult, scan_lrs
from ..recipe import resolve_recipe
from .setup import call_factory, check_widths, member, options, subset

DEFAULT_STEPS = 200


def lr_phase(recipe=None, widths: Sequence[int] | None = None, lrs: Sequence[float] | None = None,
             steps: int | None = None, *, factory=None, data=None, loss: str | None = None,
             n_train: int | None = None, lambda_every: int | None = None, lambda_steps: int | None = None,
             seed: int = 0, overrides: list[str] | None = None, dtype=torch.float32) -> LRPhaseResult:
    """Scan learning rates (units of 2/lambda_0) with full-batch GD at every width.

    Either a ``recipe`` (Recipe, .toml path or TOML text; models from ``build_member``, data: the first
    ``n_train`` training examples, loss and parameterization from the recipe, options from its
    ``[dynamics]`` table) or ``factory(width, seed) -> model | (model, lr_scales)`` with
    ``data = (x, y)`` or ``(x, y, x_test, y_test)`` and ``loss``.
    """
    xt = yt = None
    if factory is None:
        if recipe is None:
            raise WidthkitError("pass a recipe, or factory= and data=")
        from ..ladder import load_recipe_task
        r = resolve_recipe(recipe, overrides)
        opt = options(r)
        task = load_recipe_task(r)
        n_train = n_train or opt.n_train
        x, y = subset(task, n_train)
        xt, yt = task.x_test, task.y_test
        loss = loss or r.train.loss
        widths = widths or r.model.widths
        lrs = lrs or opt.lrs
        steps = steps or opt.steps or DEFAULT_STEPS
        lambda_every = opt.lambda_every if lambda_every is None else lambda_every
        lambda_steps = opt.lambda_steps if lambda_steps is None else lambda_steps
        make = lambda w: member(r, w, seed, task, dtype)  # noqa: E731
    else:
        if data is None or len(data) not in (2, 4):
            raise WidthkitError("with factory=, pass data=(x, y) or (x, y, x_test, y_test)")
        x, y = data[0], data[1]
        if len(data) == 4:
            xt, yt = data[2], data[3]
        loss = loss or "mse"
        if widths is None or lrs is None:
            raise WidthkitError("with factory=, pass widths= and lrs= (units of 2/lambda_0)")
        steps = steps or DEFAULT_STEPS
        lambda_every = lambda_every or 0
        lambda_steps = lambda_steps or 0
        make = lambda w: call_factory(factory, w, seed)  # noqa: E731
    widths = check_widths(widths)
    lrs = sorted(float(c) for c in lrs)
    if not lrs or lrs[0] <= 0:
        raise WidthkitError(f"learning rates (units of 2/lambda_0) must be positive, got {lrs}")
    x = x.to(dtype) if x.is_floating_point() else x
    if xt is not None and xt.is_floating_point():
        xt = xt.to(dtype)
    per = []
    with bar("lr-phase", len(widths) * len(lrs)) as b:
        for w in widths:
            model, scales = make(w)
            per.append(scan_lrs(model, x, y, lrs, steps, loss=loss, lr_scales=scales, x_test=xt, y_test=yt,
                                lambda_every=lambda_every, lambda_steps=lambda_steps, width=w, progress=b))
    notes = ("full-batch GD on the first n_train training examples from one init per width; lr grid in units "
             "of 2/lambda_0; boundaries in units of 1/lambda_0 (lazy/catapult predicted at 2, eta_max at 4 for "
             "the two-layer linear model, larger for ReLU nets)")
    return LRPhaseResult(widths, lrs, int(steps), loss, int(x.shape[0]), per, notes=notes)
