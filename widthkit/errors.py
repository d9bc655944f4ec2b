"""User-facing errors and warnings.

A :class:`WidthkitError` is a mistake the user can fix (a recipe typo, a missing
file, a wrong layer name).  Messages are one line that says what is wrong *and* how
to fix it, naming Python parameters between backticks (`` `resume=True` ``).  The CLI prints
the message without a traceback, with those names turned into its flags (``--resume``), and exits 2.

Each subclass also derives from the builtin a Python caller would catch for that kind
of problem, so ``except ValueError`` or ``except FileNotFoundError`` works as expected:

- ``RecipeError`` (``ValueError``): a bad recipe, option or argument value;
- ``UnknownNameError`` (``KeyError`` and ``ValueError``): a name no registry or list holds;
- ``DataNotFoundError`` (``FileNotFoundError``): a data set or input file that is not there;
- ``DataError`` (``ValueError``): a data set that is there but unusable;
- ``RunStoreError`` (``OSError``): a run directory, index or shard that cannot be used;
- ``ClusterError`` (``ConnectionError``): a Ray cluster that cannot be reached;
- ``JobsFailedError`` (``RuntimeError``): training jobs failed (the finished ones are kept);
- ``OptionalDependencyError`` (``ImportError``): an optional extra that is not installed.

Warnings (something the user should know, but work goes on) are :class:`WidthkitWarning`.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Iterable


class WidthkitError(Exception):
    """A problem in the user's input, reported as one line."""

    def __str__(self) -> str:  # the message only, also where a builtin base formats it otherwise
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class RecipeError(WidthkitError, ValueError):
    """A recipe, option or argument has a wrong value or form."""


class UnknownNameError(WidthkitError, KeyError, ValueError):
    """A name (model family, task, analysis, layer, ...) that no registry or list holds."""


class DataNotFoundError(WidthkitError, FileNotFoundError):
    """A data set, recipe or other input file is not where it was looked for."""


class DataError(WidthkitError, ValueError):
    """A data set is present but unusable: unreadable, wrongly shaped, or too small for the chosen classes."""


class RunStoreError(WidthkitError, OSError):
    """A run directory, index or shard is missing, foreign or damaged."""


class ClusterError(WidthkitError, ConnectionError):
    """A Ray cluster cannot be reached or has no room for the jobs."""


class JobsFailedError(WidthkitError, RuntimeError):
    """Some training jobs failed; the finished ones are kept and a rerun with resume continues."""


class OptionalDependencyError(WidthkitError, ImportError):
    """A feature needs an optional package that is not installed."""


def optional_import(module: str, extra: str, feature: str):
    """``import module``, or a one-line :class:`OptionalDependencyError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OptionalDependencyError(f"{feature} needs the '{extra}' extra: pip install 'widthkit[{extra}]' "
                                      f"(in a checkout: pip install -e '.[{extra}]')") from None


class WidthkitWarning(UserWarning):
    """Something the user should know (skipped widths, diverged members); work goes on."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """Standard error for an unknown name: names it, suggests, and lists the valid ones."""
    choices = sorted(str(c) for c in choices)
    shown = ", ".join(choices[:40]) + (", ..." if len(choices) > 40 else "")
    return UnknownNameError(f"unknown {kind} '{name}'{did_you_mean(name, choices)}; valid: {shown}")
