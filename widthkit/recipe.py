"""Recipes: one TOML file describes a whole width ladder.

A recipe is parsed into validated dataclasses (:class:`Recipe`).  Unknown keys,
wrong types and bad values raise a one-line :class:`WidthkitError` naming the key
and suggesting the right one.  ``--set section.key=value`` overrides any field.

Any scalar field may be given as a list to sweep over it (``optim.lr = [0.01, 0.1]``);
:func:`expand_grid` turns such a recipe into one recipe per grid point.
Analysis sections (``[transfer]``, ``[atlas]``, ``[dynamics]``, ``[ensemble_bias]``,
``[study]``) are free-form tables that each analysis validates with :func:`section`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DataNotFoundError, RecipeError, WidthkitError, did_you_mean

ANALYSIS_SECTIONS = ("transfer", "atlas", "dynamics", "ensemble_bias", "study")


@dataclass
class ModelSpec:
    family: str = "mlp"
    widths: list[int] = field(default_factory=lambda: [64, 256])
    kwargs: dict = field(default_factory=dict)  # the family's fixed hyper-parameters


@dataclass
class ParamSpec:
    kind: str = "sp"              # sp | ntk | mup
    base_width: int = 0           # muP base width; 0 means the narrowest width of the ladder
    output_mult: float = 1.0      # muP readout multiplier (alpha)
    readout_zero: bool = False    # muP: initialize the readout at zero
    gain: float = 0.0             # hidden-weight init gain; 0 = sqrt(2) for relu/gelu, 1 otherwise


@dataclass
class DataSpec:
    task: str = "digits"
    root: str = ""
    batch_size: int = 64          # 0 = full batch
    online: bool = False          # draw fresh samples every step
    shared_batches: bool = False  # every member sees the same minibatches: members differ only in their init
    options: dict = field(default_factory=dict)  # extra keys, passed to load_task


@dataclass
class TrainSpec:
    loss: str = "xent"            # xent | mse (mse = mean over examples of 0.5 * sum_k (f_k - y_k)^2)
    steps: int = 1000
    epochs: float = 0.0           # if > 0, steps = epochs * (n_train // batch_size)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    eval_every: int = 100
    checkpoint_every: int = 500
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    dtype: str = "float32"        # float32 | bfloat16 (autocast on GPU)
    strategy: str = "auto"        # auto | vectorized | loop | chunk:N
    memory_budget_mb: float = 0.0  # auto strategy: cap a group's activation memory (0 = no cap)
    eval_batch_size: int = 2048


@dataclass
class OptimSpec:
    name: str = "sgd"             # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"    # constant | cosine | linear
    warmup_steps: int = 0


@dataclass
class Recipe:
    name: str = "ladder"
    seed: int = 0
    model: ModelSpec = field(default_factory=ModelSpec)
    param: ParamSpec = field(default_factory=ParamSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    analysis: dict = field(default_factory=dict)  # free-form analysis sections

    # ----------------------------------------------------------------- views
    @property
    def base_width(self) -> int:
        return self.param.base_width or min(self.model.widths)

    def to_dict(self) -> dict:
        """The resolved recipe as nested plain dicts (TOML layout)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        for sec in ("model", "param", "data", "train", "optim"):
            d = dataclasses.asdict(getattr(self, sec))
            extra = d.pop("kwargs", None) or d.pop("options", None) or {}
            d.update(extra)
            out[sec] = d
        out.update(copy.deepcopy(self.analysis))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not device, strategy or budgets)."""
        d = self.to_dict()
        for k in ("device", "strategy", "eval_batch_size", "checkpoint_every", "memory_budget_mb"):
            d["train"].pop(k, None)
        for k in ANALYSIS_SECTIONS:
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"model": ModelSpec, "param": ParamSpec, "data": DataSpec, "train": TrainSpec, "optim": OptimSpec}
_EXTRA = {"model": "kwargs", "data": "options"}  # sections whose unknown keys pass through
_CHOICES = {
    "param.kind": ("sp", "ntk", "mup"),
    "train.loss": ("xent", "mse"),
    "train.dtype": ("float32", "bfloat16", "float64"),
    "optim.name": ("sgd", "adam", "adamw"),
    "optim.schedule": ("constant", "cosine", "linear"),
}


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(key: str, value: Any, tp) -> Any:
    """Check ``value`` against the annotated type ``tp``; raise one clear line if wrong."""
    origin = typing.get_origin(tp)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]
        return [_coerce(key, v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise WidthkitError(f"recipe key '{key}' must be a table, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise WidthkitError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}")


def _build_section(name: str, cls, table: dict):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in _EXTRA.values()]
    kwargs, extra = {}, {}
    for key, value in table.items():
        if key in names:
            kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
        elif name in _EXTRA:
            extra[key] = value
        else:
            raise WidthkitError(f"unknown recipe key '{name}.{key}'"
                                f"{did_you_mean(f'{name}.{key}', [f'{name}.{n}' for n in names])}; "
                                f"valid keys in [{name}]: {', '.join(names)}")
    if name in _EXTRA:
        kwargs[_EXTRA[name]] = extra
    return cls(**kwargs)


def _validate(r: Recipe) -> None:
    for key, choices in _CHOICES.items():
        sec, attr = key.split(".")
        v = getattr(getattr(r, sec), attr)
        if v not in choices:
            raise WidthkitError(f"recipe key '{key}' is '{v}'{did_you_mean(v, choices)}; "
                                f"choose one of: {', '.join(choices)}")
    if not r.model.widths:
        raise WidthkitError("recipe key 'model.widths' is empty; give a list like [16, 64, 256]")
    for w in r.model.widths:
        if w <= 0:
            raise WidthkitError(f"recipe key 'model.widths' has {w}; widths must be positive integers")
    if len(set(r.model.widths)) != len(r.model.widths):
        raise WidthkitError("recipe key 'model.widths' has repeated widths; list each width once")
    if not r.train.seeds:
        raise WidthkitError("recipe key 'train.seeds' is empty; give a count like 4 or a list like [0, 1]")
    if len(set(r.train.seeds)) != len(r.train.seeds):
        raise WidthkitError("recipe key 'train.seeds' has repeated seeds; list each seed once")
    positive = {"optim.lr": r.optim.lr, "train.eval_every": r.train.eval_every}
    if r.train.epochs <= 0:
        positive["train.steps"] = r.train.steps
    for key, v in positive.items():
        if not v > 0:
            raise WidthkitError(f"recipe key '{key}' is {v}; it must be positive")
    nonneg = {"data.batch_size": r.data.batch_size, "optim.momentum": r.optim.momentum,
              "optim.weight_decay": r.optim.weight_decay, "optim.warmup_steps": r.optim.warmup_steps,
              "train.checkpoint_every": r.train.checkpoint_every, "param.base_width": r.param.base_width,
              "train.memory_budget_mb": r.train.memory_budget_mb}
    for key, v in nonneg.items():
        if v < 0:
            raise WidthkitError(f"recipe key '{key}' is {v}; it must be zero or positive")
    st = r.train.strategy
    if not (st in ("auto", "vectorized", "loop") or (st.startswith("chunk:") and st[6:].isdigit() and int(st[6:]) > 0)):
        raise WidthkitError(f"recipe key 'train.strategy' is '{st}'; choose auto, vectorized, loop or chunk:N")
    if len(r.optim.betas) != 2:
        raise WidthkitError("recipe key 'optim.betas' must be two numbers, like [0.9, 0.999]")
    from .models import model_kwargs  # validates family and its hyper-parameters
    accepted = model_kwargs(r.model.family)
    for key in r.model.kwargs:
        if key not in accepted:
            raise WidthkitError(f"unknown recipe key 'model.{key}' for family '{r.model.family}'"
                                f"{did_you_mean(key, accepted)}; valid: {', '.join(sorted(accepted)) or 'none'}")


def _seeds(value: Any) -> Any:
    """``seeds = 4`` means seeds 0..3; a list is taken as is."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise WidthkitError(f"recipe key 'train.seeds' is {value}; give a positive count or a list of seeds")
        return list(range(value))
    return value


def from_dict(raw: dict) -> Recipe:
    """Build and validate a :class:`Recipe` from a TOML-shaped dict (one grid point)."""
    raw = copy.deepcopy(raw)
    top = [f.name for f in dataclasses.fields(Recipe) if f.name != "analysis"]
    known = set(top) | set(ANALYSIS_SECTIONS)
    kwargs: dict[str, Any] = {"analysis": {}}
    for key, value in raw.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise WidthkitError(f"recipe key '{key}' must be a table ([{key}])")
            if key == "train" and "seeds" in value:
                value["seeds"] = _seeds(value["seeds"])
            kwargs[key] = _build_section(key, _SECTIONS[key], value)
        elif key in ("name", "seed"):
            kwargs[key] = _coerce(key, value, str if key == "name" else int)
        elif key in ANALYSIS_SECTIONS:
            if not isinstance(value, dict):
                raise WidthkitError(f"recipe key '{key}' must be a table ([{key}])")
            kwargs["analysis"][key] = value
        else:
            raise WidthkitError(f"unknown recipe section or key '{key}'{did_you_mean(key, known)}; "
                                f"valid: {', '.join(sorted(known))}")
    r = Recipe(**kwargs)
    _validate(r)
    return r


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML literal (``0.1``, ``[16, 32]``, ``true``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``section.key=value`` overrides to a raw recipe dict."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise WidthkitError(f"--set '{item}' is not of the form section.key=value (e.g. optim.lr=0.1)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise WidthkitError(f"--set '{key}': '{p}' is not a section")
        node[parts[-1]] = parse_value(text.strip())
    return raw


def _sweep_fields() -> dict[str, set[str]]:
    """Fields whose declared type is a scalar: a list there means a sweep."""
    out = {}
    for sec, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out[sec] = {k for k, tp in hints.items() if typing.get_origin(tp) not in (list, dict)}
    return out


def expand_grid(raw: dict) -> list[tuple[str, dict]]:
    """Split a raw recipe with swept fields into ``[(key, raw_point), ...]``.

    The key names the grid point, e.g. ``"optim.lr=0.01,optim.momentum=0.9"`` (``""`` if
    nothing is swept).  Family hyper-parameters in ``[model]`` may be swept too.
    """
    scalar = _sweep_fields()
    axes: list[tuple[str, str, list]] = []
    for sec, table in raw.items():
        if not isinstance(table, dict) or sec not in _SECTIONS:
            continue
        for key, value in table.items():
            if not isinstance(value, list):
                continue
            if sec == "model":  # family hyper-parameters: a list is a sweep unless the default is a list
                swept = key != "widths" and not _list_kwarg(raw, key)
            else:
                swept = key in scalar[sec]
            if swept:
                if not value:
                    raise WidthkitError(f"recipe key '{sec}.{key}' is an empty sweep list")
                axes.append((sec, key, value))
    if not axes:
        return [("", raw)]
    points = []
    for combo in itertools.product(*[a[2] for a in axes]):
        point = copy.deepcopy(raw)
        parts = []
        for (sec, key, _), v in zip(axes, combo):
            point[sec][key] = v
            parts.append(f"{sec}.{key}={v}")
        points.append((",".join(parts), point))
    return points


def _list_kwarg(raw: dict, key: str) -> bool:
    """Family hyper-parameters whose default is a list (e.g. resnet ``layers``) are not sweeps."""
    from .models import model_kwargs
    family = raw.get("model", {}).get("family", ModelSpec.family)
    try:
        return isinstance(model_kwargs(family).get(key), (list, tuple))
    except WidthkitError:
        return False


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file meant by ``name_or_path``: an existing file, else a shipped recipe by name.

    ``quickstart`` or ``quickstart.toml`` (a bare name, no folder) names the recipe shipped as
    package data (``widthkit/recipes/quickstart.toml``), so it works from an installed wheel in any
    directory; a file of that name in the current directory wins.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = Path(importlib.resources.files("widthkit").joinpath("recipes"))
    names = sorted(p.stem for p in shipped.glob("*.toml"))
    stem = path.name.removesuffix(".toml")
    if path.name == str(name_or_path) and stem in names:
        return shipped / f"{stem}.toml"
    raise DataNotFoundError(f"recipe '{name_or_path}' not found{did_you_mean(stem, names)}; pass a TOML file "
                            f"or the name of a shipped recipe: {', '.join(names)}")


def read_recipe_file(name_or_path: str | Path) -> tuple[str, dict]:
    """Read a TOML recipe (a path or a shipped name, see :func:`find_recipe`); a missing file or bad TOML is one line."""
    path = find_recipe(name_or_path)
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"recipe file '{path}' is not valid TOML: {e}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load one recipe (no sweeps) from a TOML file, with ``--set`` overrides."""
    _, raw = read_recipe_file(path)
    raw = apply_overrides(raw, overrides)
    points = expand_grid(raw)
    if len(points) > 1:
        raise WidthkitError(f"recipe '{path}' sweeps {len(points)} grid points; this command takes one. "
                            "Fix the swept field with --set (e.g. --set optim.lr=0.1)")
    return from_dict(points[0][1])


def parse_recipe(text: str, overrides: list[str] | None = None) -> Recipe:
    """Like :func:`load_recipe` for TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WidthkitError(f"recipe is not valid TOML: {e}") from None
    return from_dict(apply_overrides(raw, overrides))


T = typing.TypeVar("T")


def section(recipe: Recipe, name: str, cls: type[T], overrides: dict | None = None) -> T:
    """Validate the free-form analysis table ``[name]`` against dataclass ``cls``."""
    table = dict(recipe.analysis.get(name, {}))
    table.update(overrides or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in names:
            raise WidthkitError(f"unknown recipe key '{name}.{key}'{did_you_mean(key, names)}; "
                                f"valid keys in [{name}]: {', '.join(names)}")
        tp = hints[key]
        if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        kwargs[key] = _coerce(f"{name}.{key}", value, tp) if tp in (int, float, bool, str) or \
            typing.get_origin(tp) in (list, dict) else value
    return cls(**kwargs)
