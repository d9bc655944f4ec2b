"""widthkit.validate: the one value validator (recipe tables, task options, model options) and literal parser."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import pytest

from widthkit.errors import WidthkitError
from widthkit.validate import (PositiveInt, Range, build_dataclass, check_options, coerce, describe, parse_value,
                               signature_options)


def test_parse_value_reads_toml_literals_else_text():
    assert parse_value("0.1") == 0.1 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[16, 32]") == [16, 32] and parse_value('"a b"') == "a b"
    assert parse_value(" coarse ") == "coarse" and parse_value("1e3") == 1000.0


@pytest.mark.parametrize("value,tp,out", [
    (3, float, 3.0), (2.0, int, 2), (np.int64(4), int, 4), (np.float32(0.5), float, 0.5), (True, bool, True),
    (5, list[int], [5]), ((1, 2), list[int], [1, 2]), ([1, 2], tuple[PositiveInt, ...], (1, 2)),
    (None, int | None, None), (7, int | None, 7), ("mup", Literal["sp", "mup"], "mup"), (5, Literal[5, 7], 5),
    ({"a": 1}, dict, {"a": 1}), (object, Any, object), (0.5, Annotated[float, Range(ge=0, le=1)], 0.5),
])
def test_coerce_converts_to_the_declared_type(value, tp, out):
    got = coerce(value, tp, "k")
    assert got == out and type(got) is type(out)


@pytest.mark.parametrize("value,tp", [
    (True, int), (1, bool), (2.5, int), ("x", float), (1, str), (True, Literal[1, 2]), (0, PositiveInt),
    (math.inf, Annotated[float, Range(gt=0)]), (math.nan, Annotated[float, Range(gt=0)]), ([1, "a"], list[int]),
    (5, tuple[int, ...]), ([1], dict),
])
def test_coerce_rejects_with_one_line_naming_the_key(value, tp):
    with pytest.raises(WidthkitError) as exc:
        coerce(value, tp, "optim.lr")
    assert str(exc.value).startswith("recipe key 'optim.lr' must be ") and "\n" not in str(exc.value)


def test_messages_speak_recipe_or_python():
    with pytest.raises(WidthkitError, match=r"^recipe key 'optim.lr' must be a number, got 'x'$"):
        coerce("x", float, "optim.lr")
    with pytest.raises(WidthkitError, match=r"^task 'teacher': perturb must be float in \[0, 1\], got perturb=2$"):
        coerce(2, Annotated[float, Range(ge=0, le=1)], "perturb", "task 'teacher'")
    with pytest.raises(WidthkitError, match=r"must be one of: sp, ntk, mup, got 'mupp' \(did you mean 'mup'\?\)"):
        coerce("mupp", Literal["sp", "ntk", "mup"], "param.kind")
    assert describe(list[PositiveInt]) == "a list of integers >= 1"
    assert describe(PositiveInt | None, recipe=False) == "int >= 1 or None"
    assert describe(Annotated[float, Range(gt=0, lt=1)], recipe=False) == "float > 0 and < 1"


@dataclass
class Inner:
    lr: Annotated[float, Range(gt=0)] = 0.1


@dataclass
class Model:
    family: str = "mlp"
    kwargs: dict = field(default_factory=dict, metadata={"extra": True})  # receives the unknown keys


@dataclass
class Outer:
    subsets: int = field(default=64, metadata={"help": "K-subsets per ensemble size"})
    widths: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_build_dataclass_coerces_nests_and_collects_extras():
    o = build_dataclass(Outer, {"subsets": 8.0, "widths": 16, "inner": {"lr": 1}}, "ensemble_bias")
    assert o == Outer(8, [16], Inner(1.0))
    assert build_dataclass(Model, {"family": "cnn", "depth": 3}, "model") == Model("cnn", {"depth": 3})
    assert build_dataclass(Outer, {}, "ensemble_bias") == Outer()
    with pytest.raises(WidthkitError, match=r"^recipe key 'ensemble_bias.inner.lr' must be a number > 0, got 0$"):
        build_dataclass(Outer, {"inner": {"lr": 0}}, "ensemble_bias")
    with pytest.raises(WidthkitError, match=r"recipe key 'ensemble_bias.inner' must be a table"):
        build_dataclass(Outer, {"inner": 3}, "ensemble_bias")


def test_unknown_keys_suggest_the_spelling_used_inside_the_table():
    with pytest.raises(WidthkitError) as exc:
        build_dataclass(Outer, {"subsetz": 3}, "ensemble_bias")
    assert str(exc.value) == ("unknown recipe key 'ensemble_bias.subsetz' (did you mean 'subsets'?); "
                              "valid keys in [ensemble_bias]: subsets, widths, inner")
    with pytest.raises(WidthkitError, match=r"unknown recipe key 'inner.lrr' \(did you mean 'inner.lr'\?\)"):
        build_dataclass(Outer, {"inner": {"lrr": 3}}, "")  # from the recipe root: dotted, as in --set


def test_signature_options_and_check_options():
    def fn(req, *, depth: PositiveInt = 2, act: Literal["relu", "tanh"] = "relu", note="x"):
        return req

    opts = signature_options(fn)
    assert {k: o.default for k, o in opts.items()} == {"depth": 2, "act": "relu", "note": "x"}
    assert check_options({"depth": 3.0, "note": 5}, opts, "model family 'f'") == {"depth": 3, "note": 5}
    with pytest.raises(WidthkitError, match=r"unknown option for model family 'f' 'dept' \(did you mean 'depth'"):
        check_options({"dept": 1}, opts, "model family 'f'")
    with pytest.raises(WidthkitError, match=r"^model family 'f': depth must be int >= 1, got depth=-1$"):
        check_options({"depth": -1}, opts, "model family 'f'")

    def no_default(*, depth: int):
        return depth
    with pytest.raises(TypeError, match="needs a default"):
        signature_options(no_default)
