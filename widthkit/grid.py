"""Step grids over training: when to evaluate (``train.eval_every``) and when to snapshot (``train.snapshots``).

A grid is written as

* ``N`` or ``"every:N"``: steps 0, N, 2N, ... and the last step;
* ``"log:K"``: K log-spaced steps, 0 and the last step included (as Vyas et al. 2023 evaluate);
* a list of steps (``train.snapshots`` only), e.g. ``[0, 10, 100]``; the last step is not added.

``""`` (the ``train.snapshots`` default) is the empty grid.  Grids are plain sorted lists of ints in
``[0, total]``; :func:`is_log` tells plots to draw such a time axis logarithmically.
"""
from __future__ import annotations

from .errors import WidthkitError

FORMS = "an integer N, \"every:N\", \"log:K\" or a list of steps"


def log_grid(total: int, k: int) -> list[int]:
    """``min(k, total + 1)`` distinct steps in ``[0, total]``: 0, then log-spaced from 1 up to ``total``.

    Each next step is the geometric interpolation from the previous one to ``total`` over the points left,
    bumped by one where rounding would repeat a step, so the grid has exactly that many distinct steps.
    """
    k = min(k, total + 1)
    if k <= 1:
        return [total]
    steps, prev = [0], 1
    for left in range(k - 1, 0, -1):  # points still to place after 0, including this one
        steps.append(prev)
        if left > 1:
            prev = max(prev + 1, round(prev * (total / prev) ** (1 / (left - 1))))
    steps[-1] = total
    return steps


def _form(spec, key: str) -> tuple[str, int]:
    """(kind, number) of a written grid: ("every", N) or ("log", K); raises naming ``key`` and the forms."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        kind, num = "every", spec
    else:
        kind, _, num_text = str(spec).partition(":")
        if kind not in ("every", "log") or not num_text.strip().isdigit():
            raise WidthkitError(f"recipe key '{key}' is {spec!r}; write {FORMS}")
        num = int(num_text)
    if num < 1 or (kind == "log" and num < 2):
        raise WidthkitError(f"recipe key '{key}' is {spec!r}; N must be >= 1 and K >= 2")
    return kind, num


def check(spec, key: str) -> None:
    """Raise a one-line WidthkitError if ``spec`` is not a grid (``""`` and lists of steps are)."""
    if not isinstance(spec, list) and spec != "":
        _form(spec, key)


def steps(spec, total: int, key: str) -> list[int]:
    """The sorted distinct steps of grid ``spec`` for a run of ``total`` steps (see the module doc)."""
    if isinstance(spec, list):
        late = [s for s in spec if s > total]
        if late:
            raise WidthkitError(f"recipe key '{key}' lists steps {late} past the last step {total}; "
                                f"list steps in [0, {total}]")
        return sorted(set(int(s) for s in spec))
    if spec == "":
        return []
    kind, num = _form(spec, key)
    if kind == "log":
        return log_grid(total, num)
    return sorted(set(range(0, total, num)) | {total})


def is_log(spec) -> bool:
    """Whether grid ``spec`` is log-spaced (plots over training then use a log time axis)."""
    return isinstance(spec, str) and spec.startswith("log:")
