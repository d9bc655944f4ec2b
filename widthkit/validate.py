"""One value validator and one literal parser, for recipe tables and for API keyword options.

* :func:`parse_value` reads a literal written as text (``--set`` values, ``?key=value`` task options).
* :func:`coerce` checks one value against a declared type and returns it converted; a mismatch is a one-line
  :class:`WidthkitError` naming the key.
* :func:`build_dataclass` builds a dataclass from a recipe table (unknown key: did-you-mean and the valid keys).
* :func:`signature_options` / :func:`check_options` do the same for the keyword options of a registered function
  (model families, task sources).

Declared types: ``int``, ``float``, ``bool``, ``str``, ``list[T]``, ``tuple[T, ...]``, ``dict``, ``Optional[T]``
(and other unions), ``Literal[...]`` (choices), ``Any``, any class (instance check), and
``Annotated[T, Range(...)]`` for bounds.  Messages speak the user's language: recipe keys in recipe (TOML) words
(``recipe key 'optim.lr' must be a number, got 'x'``), keyword options of an API call in Python's
(``task 'teacher': perturb must be float, got perturb='x'``).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import operator
import tomllib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable

from widthkit.errors import RecipeError, UnknownNameError, did_you_mean, unknown

T = typing.TypeVar("T")


def parse_value(text: str) -> Any:
    """A TOML literal (``0.1``, ``[16, 32]``, ``true``, ``"a b"``), else the stripped text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip()


@dataclass(frozen=True)
class Range:
    """Bounds for ``Annotated[int | float, Range(...)]``; a bounded number must also be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, x: float) -> bool:
        return (math.isfinite(x) and (self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def phrase(self) -> str:
        """E.g. ``>= 1``, ``in [0, 1]``, ``> 0 and < 1``."""
        if self.ge is not None and self.le is not None and self.gt is None and self.lt is None:
            return f"in [{self.ge:g}, {self.le:g}]"
        parts = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if v is not None]
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
UnitFraction = Annotated[float, Range(gt=0, le=1)]
OpenUnitFraction = Annotated[float, Range(gt=0, lt=1)]

# type -> (recipe words singular, recipe words plural, Python name)
_WORDS = {int: ("an integer", "integers", "int"), float: ("a number", "numbers", "float"),
          bool: ("true or false", "booleans", "bool"), str: ("a string", "strings", "str")}
_UNIONS = (typing.Union, types.UnionType)


def describe(tp: Any, recipe: bool = True, plural: bool = False) -> str:
    """What ``tp`` accepts, in recipe words (``a list of integers >= 1``) or Python's (``list[int >= 1]``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        ranges = [a.phrase() for a in args[1:] if isinstance(a, Range)]
        return " ".join([describe(args[0], recipe, plural)] + ranges)
    if tp in _WORDS:
        return _WORDS[tp][1 if plural else 0] if recipe else _WORDS[tp][2]
    if origin in _UNIONS:
        kinds = [describe(a, recipe, plural) for a in args if a is not type(None)]
        if type(None) in args and not recipe:  # recipes cannot write None
            kinds.append("None")
        return " or ".join(kinds)
    if origin is typing.Literal:
        return "one of: " + ", ".join(map(str, args))
    if origin in (list, tuple):
        inner = args[0] if args else Any
        if recipe:
            return f"{'lists' if plural else 'a list'} of {describe(inner, recipe, True)}"
        return f"{origin.__name__}[{describe(inner, recipe)}{', ...' if origin is tuple else ''}]"
    if tp is dict or origin is dict:
        return ("tables" if plural else "a table") if recipe else "dict"
    if tp is Any:
        return "anything"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """Raised inside :func:`_convert`; :func:`coerce` turns it into one message about the whole value."""


def _convert(value: Any, tp: Any) -> Any:
    if getattr(value, "shape", None) == () and callable(getattr(value, "item", None)):
        value = value.item()  # numpy scalar or 0-d tensor -> Python scalar
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        value = _convert(value, args[0])
        for r in args[1:]:
            if isinstance(r, Range) and not r.holds(value):
                raise _Mismatch
        return value
    if tp is Any:
        return value
    if origin in _UNIONS:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _convert(value, arg)
                except _Mismatch:
                    pass
        raise _Mismatch
    if origin is typing.Literal:
        for choice in args:  # True == 1, but a bool is not the choice 1
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
        raise _Mismatch
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]  # a scalar is a list of one
        return [_convert(v, args[0]) for v in items] if args else list(items)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (len(args) == 2 and args[1] is not Ellipsis):
            raise _Mismatch
        return tuple(_convert(v, args[0]) for v in value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return {k: _convert(v, args[1]) for k, v in value.items()} if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, bool):
            try:
                return operator.index(value)
            except TypeError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"widthkit.validate cannot check values against {tp!r}")
    raise _Mismatch


def coerce(value: Any, tp: Any, key: str, owner: str | None = None) -> Any:
    """``value`` converted to the declared type ``tp``, or a one-line WidthkitError naming ``key``.

    ``owner=None``: ``key`` is a recipe key (``optim.lr``); else ``key`` is a keyword option of the API call
    ``owner`` (``"model family 'mlp'"``).  An int is accepted for a float, an integral float for an int, and a
    scalar for a list of one.
    """
    try:
        return _convert(value, tp)
    except _Mismatch:
        pass
    choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()
    hint = did_you_mean(value, choices) if isinstance(value, str) and choices else ""
    if owner is None:
        raise RecipeError(f"recipe key '{key}' must be {describe(tp)}, got {value!r}{hint}")
    raise RecipeError(f"{owner}: {key} must be {describe(tp, recipe=False)}, got {key}={value!r}{hint}")


# ------------------------------------------------------------------------------------- recipe tables

def build_dataclass(cls: type[T], table: dict, where: str) -> T:
    """Instance of dataclass ``cls`` from the recipe table ``[where]`` (``where=""``: the recipe itself).

    Values are coerced to the field types (``Annotated`` ranges included); a field whose type is a dataclass
    is built from a nested table; a field with ``metadata={"extra": True}`` receives the unknown keys, else an
    unknown key raises with a suggestion spelled as it would be written inside ``[where]``.  Missing keys keep
    the field defaults; field help text may live in ``field(metadata={"help": ...})``.
    """
    return _build(cls, table, where, "")


def _build(cls, table: Any, where: str, rel: str):
    """``rel``: the dotted path of ``table`` inside ``[where]`` (with a trailing dot, or empty)."""
    name = ".".join(filter(None, (where, rel.rstrip("."))))
    if not isinstance(table, dict):
        raise RecipeError(f"recipe key '{name}' must be a table ([{name}]), got {table!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    extra = next((f.name for f in fields if f.metadata.get("extra")), None)
    names = [f.name for f in fields if f.name != extra]
    kwargs: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{name}.{key}" if name else key
        if key in names:
            tp = hints[key]
            kwargs[key] = (_build(tp, value, where, f"{rel}{key}.") if dataclasses.is_dataclass(tp)
                           else coerce(value, tp, full))
        elif extra:
            rest[key] = value
        else:
            raise UnknownNameError(f"unknown recipe key '{full}'{did_you_mean(rel + key, [rel + n for n in names])}; "
                                f"valid keys in [{name}]: {', '.join(names)}")
    if extra:
        kwargs[extra] = rest
    return cls(**kwargs)


# ------------------------------------------------------------------------------- API keyword options

@dataclass(frozen=True)
class Option:
    """A keyword option read from a function signature."""

    default: Any
    type: Any


def signature_options(fn: Callable, skip: tuple[str, ...] = ()) -> dict[str, Option]:
    """The keyword-only parameters of ``fn`` (except ``skip``) with their defaults and annotated types.

    Every option needs a default (TypeError otherwise: a programming error in the registered function).
    """
    hints = typing.get_type_hints(fn, include_extras=True)
    out = {}
    for key, p in inspect.signature(fn).parameters.items():
        if key in skip or p.kind != p.KEYWORD_ONLY:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{fn.__qualname__}: option '{key}' needs a default")
        out[key] = Option(p.default, hints.get(key, Any))
    return out


def check_options(given: dict[str, Any], options: dict[str, Option], owner: str) -> dict[str, Any]:
    """``given`` with every value coerced to its option's type; an unknown key raises with a suggestion."""
    out = {}
    for key, value in given.items():
        if key not in options:
            raise unknown(f"option for {owner}", key, options)
        out[key] = coerce(value, options[key].type, key, owner)
    return out
