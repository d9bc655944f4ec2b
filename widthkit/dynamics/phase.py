"""``lr_phase``: the learning-rate phase diagram (lazy / catapult / divergent) across widths."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import WidthkitError
from ..progress import bar
from .catapult import LRPhaseResult, scan_lrs
from .setup import Factory, call_factory, check_widths


def lr_phase(factory: Factory, data, *, widths: Sequence[int], lrs: Sequence[float], steps: int,
             loss: str = "mse", lambda_every: int = 0, lambda_steps: int = 0, seed: int = 0,
             dtype=torch.float32) -> LRPhaseResult:
    """Scan learning rates (units of 2/lambda_0) with full-batch GD at every width, one init per width.

    ``factory(width, seed) -> model | (model, lr_scales)``; ``data = (x, y)`` or ``(x, y, x_test, y_test)``
    (floating inputs are cast to ``dtype``); ``lambda_every``/``lambda_steps``: measure the NTK top
    eigenvalue every ``lambda_every`` steps during the first ``lambda_steps`` (0: only at init and end).
    The ``lr-phase`` analysis calls it with the recipe's members and its first ``n_train`` examples.
    """
    if len(data) not in (2, 4):
        raise WidthkitError("data must be (x, y) or (x, y, x_test, y_test)")
    x, y = data[0], data[1]
    xt, yt = (data[2], data[3]) if len(data) == 4 else (None, None)
    widths = check_widths(widths)
    lrs = sorted(float(c) for c in lrs)
    if not lrs or lrs[0] <= 0:
        raise WidthkitError(f"lrs (units of 2/lambda_0) must be positive, got {lrs}")
    x = x.to(dtype) if x.is_floating_point() else x
    if xt is not None and xt.is_floating_point():
        xt = xt.to(dtype)
    per = []
    with bar("lr-phase", len(widths) * len(lrs)) as b:
        for w in widths:
            model, scales = call_factory(factory, w, seed)
            per.append(scan_lrs(model, x, y, lrs, steps, loss=loss, lr_scales=scales, x_test=xt, y_test=yt,
                                lambda_every=lambda_every, lambda_steps=lambda_steps, width=w, progress=b))
    return LRPhaseResult(widths, lrs, int(steps), loss, int(x.shape[0]), per)
