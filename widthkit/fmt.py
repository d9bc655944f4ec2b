"""Number formatting for tables and readings: one family, used by the terminal, the report and the study.

Every formatter takes anything number-like (float, numpy scalar, None) and prints ``-`` for a missing or
non-finite value, so a table never shows ``nan`` or crashes on ``None``.
"""
from __future__ import annotations

import math

import numpy as np


def value(x) -> float:
    """``x`` as a float; NaN for None or anything that is not a number."""
    try:
        return float(x) if x is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def num(x, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, ``-`` if missing."""
    x = value(x)
    return "-" if not math.isfinite(x) else f"{x:.{digits}g}"


def pm(x, err, digits: int = 3) -> str:
    """``x ± err`` (the error with two significant digits); just ``x`` when the error is missing."""
    e = value(err)
    return num(x, digits) + (f" ± {e:.2g}" if math.isfinite(e) and math.isfinite(value(x)) else "")


def pct(x, decimals: int = 1) -> str:
    """A fraction as a percentage, ``-`` if missing."""
    x = value(x)
    return "-" if not math.isfinite(x) else f"{100 * x:.{decimals}f}%"


def signed(x, decimals: int = 3) -> str:
    """``+0.012`` style, for changes and slopes."""
    x = value(x)
    return "-" if not math.isfinite(x) else f"{x:+.{decimals}f}"


def mean_sd(values, digits: int = 4) -> str:
    """``mean ± sd`` (ddof=1) over the finite entries of ``values``."""
    v = np.asarray(values, float).reshape(-1)
    v = v[np.isfinite(v)]
    if not len(v):
        return "-"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.{digits}f}"


def cell(v) -> str:
    """A generic table cell: floats compactly, everything else as text."""
    if isinstance(v, (float, np.floating)) or v is None:
        return num(v, 4)
    return str(v)
