"""CLI flags derived from an options dataclass: ``max_vectors`` is ``--max-vectors``, one name everywhere.

bool -> ``--flag/--no-flag``; ``list[T]`` -> space-separated values; ``Literal`` -> one of its choices;
int/float/str -> one value.  Every flag
defaults to "not given" (None), so the recipe's table and then the dataclass default apply.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

RESERVED = ("run", "recipe", "out", "json", "point", "overrides", "quiet", "help")


def flag(name: str) -> str:
    """The CLI flag of an option name."""
    return "--" + name.replace("_", "-")


def _argtype(tp) -> dict:
    if typing.get_origin(tp) is typing.Annotated:  # bounds are checked with the options, naming the flag
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:  # argparse's own choices: "invalid choice: 'x' (choose from ...)"
        choices = typing.get_args(tp)
        return {"type": type(choices[0]), "choices": choices}
    if origin is list:
        (inner,) = typing.get_args(tp) or (str,)
        return {"nargs": "+", "type": inner, "metavar": inner.__name__.upper()}
    return {"type": tp, "metavar": getattr(tp, "__name__", "VALUE").upper()}


def add_option_flags(parser, fields) -> None:
    """Add one flag per ``(name, type, default, help)`` field."""
    for name, tp, default, help in fields:
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        parser.add_argument(flag(name), dest=name, default=None,
                            help=f"{help} (default: {shown if shown not in ('', []) else 'none'})", **_argtype(tp))


def given_options(args, options: type) -> dict:
    """The options the command line gave (None = not given)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(options)
            if getattr(args, f.name, None) is not None}
