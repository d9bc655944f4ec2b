"""``lr_phase``: the learning-rate phase diagram (lazy / catapult / divergent) across widths."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import WidthkitError
from ..progress import bar
from .catapult import LRPhaseResult, PhaseScan, classifier_rule, grid_starts, pool_boundaries, scan_lrs
from .setup import Factory, call_factory, check_widths


def lr_phase(factory: Factory, data, *, widths: Sequence[int], lrs: Sequence[float], steps: int,
             loss: str = "mse", lambda_every: int = 0, lambda_steps: int = 0, seeds: Sequence[int] = (0,),
             tol: float = 0.02, rise_tol: float = 0.01, dtype=torch.float32) -> LRPhaseResult:
    """Scan learning rates (units of 2/lambda_0) with full-batch GD at every width, and bisect both boundaries.

    ``factory(width, seed) -> model | (model, lr_scales)``; ``data = (x, y)`` or ``(x, y, x_test, y_test)``
    (floating inputs are cast to ``dtype``); ``lambda_every``/``lambda_steps``: measure the NTK top
    eigenvalue every ``lambda_every`` steps during the first ``lambda_steps`` (0: only at init and end).
    The grid runs on the first seed (the phase diagram); every seed's lazy|catapult and catapult|divergent
    boundaries are then bracketed by bisection to relative width ``tol`` (0: grid only), starting from the
    first seed's grid brackets, each seed with its own lambda_0. Phases follow :func:`classifier_rule`.
    The ``lr-phase`` analysis calls it with the recipe's members and its first ``n_train`` examples.
    """
    if len(data) not in (2, 4):
        raise WidthkitError("data must be (x, y) or (x, y, x_test, y_test)")
    x, y = data[0], data[1]
    xt, yt = (data[2], data[3]) if len(data) == 4 else (None, None)
    widths = check_widths(widths)
    lrs = sorted(float(c) for c in lrs)
    seeds = [int(s) for s in seeds]
    if not lrs or lrs[0] <= 0:
        raise WidthkitError(f"lrs (units of 2/lambda_0) must be positive, got {lrs}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise WidthkitError(f"seeds must be distinct member seeds, got {seeds}")
    if not 0 <= tol < 1:
        raise WidthkitError(f"tol (relative bracket width) must be in [0, 1), got {tol}")
    x = x.to(dtype) if x.is_floating_point() else x
    if xt is not None and xt.is_floating_point():
        xt = xt.to(dtype)
    per = []
    with bar("lr-phase", len(widths) * (len(lrs) + len(seeds) - 1)) as b:
        for w in widths:
            model, scales = call_factory(factory, w, seeds[0])
            wp = scan_lrs(model, x, y, lrs, steps, loss=loss, lr_scales=scales, x_test=xt, y_test=yt,
                          lambda_every=lambda_every, lambda_steps=lambda_steps, width=w, rise_tol=rise_tol,
                          tol=tol, seed=seeds[0], progress=b)
            grid = [r.lr_lambda for r in wp.runs]
            for s in seeds[1:]:
                model, scales = call_factory(factory, w, s)
                scan = PhaseScan(model, x, y, steps, loss=loss, lr_scales=scales, rise_tol=rise_tol)
                if tol > 0:
                    wp.boundaries += [scan.boundary(name, grid, {}, i, tol, s)
                                      for name, i in grid_starts(wp.runs).items()]
                b.advance()
            per.append(pool_boundaries(wp))
    return LRPhaseResult(widths, lrs, int(steps), loss, int(x.shape[0]), per, seeds=seeds, tol=float(tol),
                         classifier=classifier_rule(rise_tol))
