"""User-facing errors.

A :class:`WidthkitError` is a mistake the user can fix (a recipe typo, a missing
file, a wrong layer name).  The CLI prints its message as one line, without a
traceback, and exits non-zero.  Messages say what is wrong *and* how to fix it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class WidthkitError(Exception):
    """A problem in the user's input, reported as one line."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> WidthkitError:
    """Standard error for an unknown name: names it, suggests, and lists the valid ones."""
    choices = sorted(str(c) for c in choices)
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return WidthkitError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}; valid: {shown}")
