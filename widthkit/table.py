"""Terminal output (rich): analysis blocks, the ladder summary every command prints, plain tables."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from . import fmt
from .build import count_params
from .errors import RunStoreError


def console() -> Console:
    """stdout; wide enough when stdout is a file or a pipe."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_table(title: str, columns: list[str], rows: list[list], lines=()) -> None:
    """A table on stdout (numbers formatted by :func:`widthkit.fmt.cell`), then its reading lines.

    Every string is printed as plain text (``[lo, hi]`` is not rich markup)."""
    t = RichTable()
    for c in columns:
        t.add_column(Text(str(c)), justify="left" if c in ("strategy", "point", "analysis", "output", "layer")
                     else "right")
    for r in rows:
        t.add_row(*[Text(c.text if hasattr(c, "path") else fmt.cell(c)) for c in r])
    con = console()
    con.print(title, highlight=False, soft_wrap=True, style="italic", markup=False)
    if columns:
        con.print(t)
    for line in lines:
        con.print(line, highlight=False, soft_wrap=True, markup=False)


def print_blocks(blocks, point: str = "") -> None:
    """An analysis's report blocks in the terminal: each table, then the readings (as in the HTML report)."""
    for b in blocks:
        title = b.title + (f" [{point}]" if point else "")
        if not b.tables:
            print_table(title, [], [], b.lines)
        for i, t in enumerate(b.tables):
            print_table(f"{title}: {t.caption}" if i == 0 else t.caption, t.columns, t.rows,
                        b.lines if i == len(b.tables) - 1 else ())


def ladder_rows(view) -> list[dict]:
    """One summary row per finished width of a point view: params, final test loss and accuracy over seeds.

    A width whose shards cannot be read is left out (the report and ``run_warnings`` name it)."""
    rows = []
    for w in view.widths:
        try:
            m = view.metrics(w)
        except RunStoreError:
            continue
        div = view.diverged(w)
        rows.append({"width": w, "params": count_params(view.param_table(w)),
                     "test_loss": m["test_loss"][~div, -1], "test_acc": m["test_acc"][~div, -1],
                     "diverged": int(div.sum()), "members": len(div), "strategy": view.strategy(w)["strategy"]})
    return rows


def print_ladder(view) -> None:
    r = view.recipe
    title = f"{r.name}: {r.model.family}, {r.param.kind}, {r.data.task}" + (f" [{view.point_key}]" if view.point_key else "")
    print_table(title, ["width", "params", "test loss (mean ± sd)", "test acc (mean ± sd)", "diverged", "strategy"],
                [[row["width"], row["params"], fmt.mean_sd(row["test_loss"]), fmt.mean_sd(row["test_acc"]),
                  f"{row['diverged']}/{row['members']}", row["strategy"]] for row in ladder_rows(view)])
