"""Shared plotting helpers (matplotlib, Agg backend): one style, atomic PNG saves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_path  # noqa: E402


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.2), **kw):
    """A new figure with ``nrows x ncols`` axes of ``size`` inches each."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False, **kw)
    return fig, axes


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path


def width_colors(widths) -> dict:
    """A viridis colour per width, narrow = dark, wide = bright."""
    widths = list(widths)
    cmap = plt.get_cmap("viridis")
    n = max(len(widths) - 1, 1)
    return {w: cmap(i / n) for i, w in enumerate(widths)}


def loglog_fit_line(ax, x, slope: float, intercept: float, label: str | None = None, **kw) -> None:
    """Draw y = exp(intercept) * x**slope on log-log axes over the range of ``x``."""
    x = np.asarray(sorted(x), dtype=float)
    ax.plot(x, np.exp(intercept) * x ** slope, "--", color=kw.pop("color", "k"), label=label, **kw)
