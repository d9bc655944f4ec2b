"""Recipes: one TOML file describes a whole width ladder.

A recipe is parsed into validated dataclasses (:class:`Recipe`).  Unknown keys,
wrong types and bad values raise a one-line :class:`WidthkitError` naming the key
and suggesting the right one.  ``--set section.key=value`` overrides any field.

Any scalar field may be given as a list to sweep over it (``optim.lr = [0.01, 0.1]``);
:func:`expand_grid` turns such a recipe into one recipe per grid point.
Any other table (``[transfer]``, ``[atlas]``, ``[study]``, ...) belongs to an analysis, which validates
it with :func:`section`; a table whose name is close to a training section (``[modle]``) is refused as a
typo, and ``widthkit.analyses.base.check_recipe_tables`` checks the rest against the registered analyses.
Field types (choices as ``Literal``, bounds as ``Annotated[..., Range]``) are checked by
:mod:`widthkit.validate`.
"""
from __future__ import annotations

import copy
import difflib
import dataclasses
import hashlib
import importlib.resources
import itertools
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import grid
from .errors import DataNotFoundError, RecipeError, WidthkitError, did_you_mean
from .validate import (NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, build_dataclass,
                       parse_value)


@dataclass
class ModelSpec:
    family: str = "mlp"
    widths: list[int] = field(default_factory=lambda: [64, 256])
    kwargs: dict = field(default_factory=dict, metadata={"extra": True})  # the family's hyper-parameters


@dataclass
class ParamSpec:
    kind: Literal["sp", "ntk", "mup"] = "sp"
    base_width: NonNegativeInt = 0  # muP base width; 0 means the narrowest width of the ladder
    output_mult: float = 1.0      # muP readout multiplier (alpha)
    readout_zero: bool = False    # muP: initialize the readout at zero
    gain: float = 0.0             # hidden-weight init gain; 0 = sqrt(2) for relu/gelu, 1 otherwise


@dataclass
class DataSpec:
    task: str = "digits"
    root: str = ""
    batch_size: NonNegativeInt = 64  # 0 = full batch
    online: bool = False          # draw fresh samples every step
    shared_batches: bool = False  # every member sees the same minibatches: members differ only in their init
    options: dict = field(default_factory=dict, metadata={"extra": True})  # other keys, passed to load_task


@dataclass
class TrainSpec:
    loss: Literal["xent", "mse"] = "xent"  # mse = mean over examples of 0.5 * sum_k (f_k - y_k)^2
    steps: int = 1000
    epochs: float = 0.0           # if > 0, steps = epochs * (n_train // batch_size)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    eval_every: PositiveInt | str = 100  # every N steps, or "log:K" (K log-spaced steps); see widthkit.grid
    snapshots: list[NonNegativeInt] | str = ""  # member weights kept at: [steps], "log:K" or "every:N" (grid)
    snapshot_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # storage of the snapshots
    checkpoint_every: NonNegativeInt = 500
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"  # bfloat16: autocast on GPU
    strategy: str = "auto"        # auto | vectorized | loop | chunk:N, optionally +compile | +eager
    memory_budget_mb: NonNegativeFloat = 0.0  # auto strategy: cap a group's activation memory (0 = no cap)
    eval_batch_size: int = 2048
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=list)  # live tracking


@dataclass
class OptimSpec:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: NonNegativeInt = 0


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
        for k in ("device", "strategy", "eval_batch_size", "checkpoint_every", "memory_budget_mb", "loggers"):
            d["train"].pop(k, None)
        if not self.train.snapshots:  # runs without snapshots keep the fingerprint they had before snapshots
            d["train"].pop("snapshots"), d["train"].pop("snapshot_dtype")
        for k in self.analysis:
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"model": ModelSpec, "param": ParamSpec, "data": DataSpec, "train": TrainSpec, "optim": OptimSpec}


def _validate(r: Recipe) -> None:
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
    grid.check(r.train.eval_every, "train.eval_every")
    grid.check(r.train.snapshots, "train.snapshots")
    if r.train.epochs <= 0 and r.train.steps <= 0:
        raise WidthkitError(f"recipe key 'train.steps' is {r.train.steps}; it must be positive "
                            "(or set train.epochs)")
    st, _, mode = r.train.strategy.partition("+")
    if not (st in ("auto", "vectorized", "loop") or (st.startswith("chunk:") and st[6:].isdigit() and int(st[6:]) > 0)) \
            or mode not in ("", "auto", "compile", "eager"):
        raise WidthkitError(f"recipe key 'train.strategy' is '{r.train.strategy}'; choose auto, vectorized, loop or "
                            "chunk:N, optionally with +compile or +eager")
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
    known = set(top) | set(_SECTIONS)
    analysis = {}
    for key in list(raw):
        if key in top:
            continue
        if isinstance(raw[key], dict) and not difflib.get_close_matches(key, _SECTIONS, n=1, cutoff=0.8):
            analysis[key] = raw.pop(key)  # an analysis table
        else:
            raise WidthkitError(f"unknown recipe section or key '{key}'{did_you_mean(key, known)}; "
                                f"valid: {', '.join(sorted(known))} and the analysis tables")
    if isinstance(raw.get("train"), dict) and "seeds" in raw["train"]:
        raw["train"]["seeds"] = _seeds(raw["train"]["seeds"])
    r = build_dataclass(Recipe, {**raw, "analysis": analysis}, "")
    _validate(r)
    return r


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
    """Fields whose declared type is a scalar: a list there means a sweep (a union with a list is no scalar)."""
    def takes_list(tp) -> bool:
        origin = typing.get_origin(tp)
        return origin in (list, dict) or (origin in (typing.Union, types.UnionType)
                                           and any(map(takes_list, typing.get_args(tp))))
    out = {}
    for sec, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out[sec] = {k for k, tp in hints.items() if not takes_list(tp)}
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


def as_recipe_dict(recipe, overrides: list[str] | None = None) -> tuple[str, dict]:
    """(TOML text or "", raw dict with ``overrides`` applied) of anything recipe-like.

    ``recipe`` is a :class:`Recipe`, a raw dict (TOML layout), TOML text (a string with a
    newline or ``=``, or blank) or a recipe file path.  Sweeps stay unexpanded
    (see :func:`expand_grid`); the text is kept so a run can store the recipe as written.
    """
    if isinstance(recipe, Recipe):
        text, raw = "", recipe.to_dict()
    elif isinstance(recipe, dict):
        text, raw = "", recipe
    elif isinstance(recipe, str) and ("\n" in recipe or "=" in recipe or not recipe.strip()):
        try:
            text, raw = recipe, tomllib.loads(recipe)
        except tomllib.TOMLDecodeError as e:
            raise WidthkitError(f"recipe is not valid TOML: {e}") from None
    elif isinstance(recipe, (str, Path)):
        text, raw = read_recipe_file(recipe)
    else:
        raise WidthkitError(f"expected a recipe (Recipe, dict, TOML path or TOML text), got {type(recipe).__name__}")
    return text, apply_overrides(raw, overrides)


def resolve_recipe(recipe, overrides: list[str] | None = None) -> Recipe:
    """The one :class:`Recipe` (no sweeps) of anything :func:`as_recipe_dict` accepts, with ``overrides``."""
    if isinstance(recipe, Recipe) and not overrides:
        return recipe
    _, raw = as_recipe_dict(recipe, overrides)
    points = expand_grid(raw)
    if len(points) > 1:
        raise WidthkitError(f"recipe '{raw.get('name', 'ladder')}' sweeps {len(points)} grid points; this takes "
                            "one: fix the swept field, e.g. overrides=['optim.lr=0.1']")
    return from_dict(points[0][1])


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load one recipe (no sweeps) from a TOML file, with ``--set`` overrides."""
    return resolve_recipe(Path(path), overrides)


def parse_recipe(text: str, overrides: list[str] | None = None) -> Recipe:
    """Like :func:`load_recipe` for TOML text."""
    return resolve_recipe(text, overrides)


T = typing.TypeVar("T")


def section(recipe: Recipe, name: str, cls: type[T], overrides: dict | None = None) -> T:
    """Validate the free-form analysis table ``[name]`` (updated by ``overrides``) against dataclass ``cls``."""
    return build_dataclass(cls, {**recipe.analysis.get(name, {}), **(overrides or {})}, name)
