"""Terminal tables (rich) and the ladder summary every command prints."""
from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from .build import count_params
from .store import Run

_out = Console()


def show(table: Table, summary=()) -> None:
    """Print a rich table and its summary lines on stdout; wide enough when stdout is a file or pipe."""
    import sys
    con = _out if sys.stdout.isatty() else Console(width=160)
    con.print(table)
    for line in summary:
        con.print(line, highlight=False)


def cell(x, e=None, digits: str = ".4g", err_digits: str = ".2g") -> str:
    """A table cell 'x ± e'; '-' for missing or non-finite values."""
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:{digits}}" + (f" ± {e:{err_digits}}" if e is not None and np.isfinite(e) else "")


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """Print a table to stdout; numbers are formatted compactly."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c not in ("strategy", "point") else "left")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    _out.print(t)


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def pm(values) -> str:
    """'mean ± std' over finite values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "nan"
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}"


def ladder_rows(run: Run) -> list[dict]:
    """One summary row per finished width: params, final test loss and accuracy over seeds."""
    rows = []
    for w in run.widths:
        m = run.metrics(w)
        div = run.diverged(w)
        rows.append({"width": w, "params": count_params(run.param_table(w)),
                     "test_loss": m["test_loss"][~div, -1], "test_acc": m["test_acc"][~div, -1],
                     "diverged": int(div.sum()), "members": len(div), "strategy": run.strategy(w)["strategy"]})
    return rows


def print_ladder(run: Run) -> None:
    rows = ladder_rows(run)
    title = f"{run.recipe.name}: {run.recipe.model.family}, {run.recipe.param.kind}, {run.recipe.data.task}" + \
        (f" [{run.point_key}]" if run.point_key else "")
    print_table(title, ["width", "params", "test loss (mean ± sd)", "test acc (mean ± sd)", "diverged", "strategy"],
                [[r["width"], r["params"], pm(r["test_loss"]), pm(r["test_acc"]), f"{r['diverged']}/{r['members']}",
                  r["strategy"]] for r in rows])
