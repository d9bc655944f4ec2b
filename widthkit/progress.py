"""Progress bars, information lines and warnings, and quiet mode.

The library reports through the standard channels: :func:`info` logs to the
``"widthkit"`` logger at INFO level (silent unless the caller configures logging) and
:func:`warn` issues a :class:`~widthkit.errors.WidthkitWarning`.  Quiet mode (no bars,
no info lines; warnings still show) is a context variable set for a block of code with
:func:`quiet`, so it follows the call, not the process; ``WIDTHKIT_QUIET=1`` sets its
default.  The command line shows both channels on stderr with :func:`terminal`.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import warnings
from typing import Callable, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from .errors import WidthkitWarning

T = TypeVar("T")
log = logging.getLogger("widthkit")
log.addHandler(logging.NullHandler())  # a library: nothing shows until the application configures logging
console = Console(stderr=True)
_QUIET = contextvars.ContextVar("widthkit_quiet", default=bool(os.environ.get("WIDTHKIT_QUIET")))


@contextlib.contextmanager
def quiet(flag: bool = True) -> Iterator[None]:
    """Within the block, quiet mode is ``flag`` (no progress bars or info lines); the outer value returns after."""
    token = _QUIET.set(bool(flag))
    try:
        yield
    finally:
        _QUIET.reset(token)


def is_quiet() -> bool:
    """Whether the current block runs in quiet mode."""
    return _QUIET.get()


def info(msg: str) -> None:
    """An informational line, logged to ``widthkit`` at INFO level unless quiet."""
    if not is_quiet():
        log.info(msg)


def warn(msg: str) -> None:
    """A :class:`WidthkitWarning` (shown even when quiet), attributed to the caller of the function that warns."""
    warnings.warn(msg, WidthkitWarning, stacklevel=3)


class _ConsoleHandler(logging.Handler):
    """Prints each record as one line through :data:`console` (so it lands above a live progress bar)."""

    def __init__(self, translate: Callable[[str], str]) -> None:
        super().__init__(logging.INFO)
        self.translate = translate

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(escape(self.translate(record.getMessage())), highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's contract: report, never raise
            self.handleError(record)


@contextlib.contextmanager
def terminal(translate: Callable[[str], str] = str) -> Iterator[None]:
    """Within the block, show widthkit's info lines and warnings on stderr as the CLI does.

    Info lines print as they are, warnings as one ``warning: ...`` line, every time they are
    issued; ``translate`` rewrites each message first (the CLI turns API names into flags).
    Other packages' warnings keep Python's display.
    """
    handler = _ConsoleHandler(translate)
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # shown here once, not again by a root handler
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", WidthkitWarning)
            show_other = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if issubclass(category, WidthkitWarning):
                    console.print(f"[yellow]warning:[/yellow] {escape(translate(str(message)))}",
                                  highlight=False, soft_wrap=True)
                else:
                    show_other(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


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
    if is_quiet() or not sys.stderr.isatty():
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
