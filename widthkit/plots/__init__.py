"""Shared plotting helpers: one style, atomic PNG saves.

Figures are plain :class:`matplotlib.figure.Figure` objects drawn on their own Agg
canvas, so plotting touches no pyplot state and never switches the caller's backend
(a notebook keeps its inline backend; no figure is left open).
"""
from __future__ import annotations

import base64
import contextlib
import contextvars
import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_path


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.2), **kw):
    """A new figure with ``nrows x ncols`` axes of ``size`` inches each: ``(fig, axes[nrows][ncols])``."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


_CAPTURED: contextvars.ContextVar[list | None] = contextvars.ContextVar("widthkit_figures", default=None)


class Figures(list):
    """A list of matplotlib ``Figure`` objects that Jupyter shows inline (each as a PNG)."""

    def _repr_html_(self) -> str:
        out = []
        for fig in self:
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=90)
            out.append(f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')
        return "".join(out)


@contextlib.contextmanager
def capture():
    """Within the block, every figure passed to :func:`save` is also collected into the yielded :class:`Figures`."""
    figs = Figures()
    token = _CAPTURED.set(figs)
    try:
        yield figs
    finally:
        _CAPTURED.reset(token)


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG atomically (and collect it inside :func:`capture`)."""
    path = Path(path)
    fig.tight_layout()
    captured = _CAPTURED.get()
    if captured is not None:
        captured.append(fig)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def width_colors(widths) -> dict:
    """A viridis colour per width, narrow = dark, wide = bright."""
    widths = list(widths)
    cmap = matplotlib.colormaps["viridis"]
    n = max(len(widths) - 1, 1)
    return {w: cmap(i / n) for i, w in enumerate(widths)}


def loglog_fit_line(ax, x, slope: float, intercept: float, label: str | None = None, **kw) -> None:
    """Draw y = exp(intercept) * x**slope on log-log axes over the range of ``x``."""
    x = np.asarray(sorted(x), dtype=float)
    ax.plot(x, np.exp(intercept) * x ** slope, "--", color=kw.pop("color", "k"), label=label, **kw)


def time_axis(ax, log: bool) -> None:
    """Label ``ax``'s x axis as training steps; logarithmic (linear below step 1, so step 0 shows) when the
    step grid is log-spaced (``train.eval_every = "log:K"``)."""
    if log:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)
    ax.set_xlabel("step" + (" (log)" if log else ""))
