"""Progress bars (rich) that respect ``--quiet`` and non-interactive output."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

T = TypeVar("T")
_QUIET = bool(os.environ.get("WIDTHKIT_QUIET"))
console = Console(stderr=True)


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) progress bars and informational messages."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


def info(msg: str) -> None:
    """An informational line on stderr, unless quiet."""
    if not _QUIET:
        console.print(msg, highlight=False)


def warn(msg: str) -> None:
    """A warning line on stderr (shown even when quiet)."""
    console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False)


class Bar:
    """A handle to advance one task of a progress display."""

    def __init__(self, progress: Progress | None, task) -> None:
        self._p, self._t = progress, task

    def advance(self, n: float = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def update(self, **kw) -> None:
        if self._p is not None:
            self._p.update(self._t, **kw)


@contextlib.contextmanager
def bar(desc: str, total: float | None) -> Iterator[Bar]:
    """Context manager yielding a :class:`Bar`; invisible when quiet or not a terminal."""
    if _QUIET or not sys.stderr.isatty():
        yield Bar(None, None)
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*cols, console=console, transient=False) as p:
        yield Bar(p, p.add_task(desc, total=total))


def track(it: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(it, "__len__"):
        total = len(it)  # type: ignore[arg-type]
    with bar(desc, total) as b:
        for x in it:
            yield x
            b.advance()
