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
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import grid
from .errors import DataNotFoundError, RecipeError, UnknownNameError, WidthkitError, did_you_mean
from .validate import (NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, build_dataclass, coerce,
                       describe, parse_value)


@dataclass
class ModelSpec:
    family: str = "mlp"
    widths: list[int] = field(default_factory=lambda: [64, 256])
    kwargs: dict = field(default_factory=dict, metadata={"extra": True})  # the family's hyper-parameters


@dataclass
class ParamSpec:
    kind: Literal["sp", "ntk", "mup"] = "sp"
    base_width: NonNegativeInt = 0  # muP base width; 0 means the narrowest width of the ladder
    output_mult: PositiveFloat = 1.0  # muP readout multiplier (alpha)
    readout_zero: bool = False    # muP: initialize the readout at zero
    gain: NonNegativeFloat = 0.0  # hidden-weight init gain; 0 = sqrt(2) for relu/gelu, 1 otherwise
    readout: Literal["param", "mf"] = "param"  # mf: 1/N readout, SGD lr x N (kind ntk; widthkit.centered)
    gamma0: PositiveFloat = 1.0   # richness: output / gamma0, lr x gamma0^2 (SGD) or gamma0 (Adam)
    center: bool = False          # train f(x) - f0(x), f0 a frozen copy of the member at init
    eps_scaling: Literal["unfolded", "width"] = "unfolded"  # Adam epsilon: as the unfolded model, or / width (muP)


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
    steps: NonNegativeInt = 1000
    epochs: NonNegativeFloat = 0.0  # if > 0, steps = epochs * (n_train // batch_size); give steps or epochs
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    eval_every: PositiveInt | str = 100  # every N steps, or "log:K" (K log-spaced steps); see widthkit.grid
    snapshots: list[NonNegativeInt] | str = ""  # member weights kept at: [steps], "log:K" or "every:N" (grid)
    snapshot_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # storage of the snapshots
    checkpoint_every: NonNegativeInt = 500
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"  # bfloat16: autocast on GPU
    strategy: str = "auto"        # auto | vectorized | loop | chunk:N, optionally +compile | +eager
    memory_budget_mb: NonNegativeFloat = 0.0  # auto strategy: cap a group's activation memory (0 = no cap)
    eval_batch_size: PositiveInt = 2048
    divergence_factor: NonNegativeFloat = 1e3  # a member whose loss exceeds this x its initial loss diverged (0: off)
    loggers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=list)  # live tracking


@dataclass
class OptimSpec:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.0
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: PositiveFloat = 1e-8
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
        for k in ("device", "strategy", "eval_batch_size", "checkpoint_every", "memory_budget_mb",
                  "divergence_factor", "loggers"):
            d["train"].pop(k, None)
        if not self.train.snapshots:  # runs without snapshots keep the fingerprint they had before snapshots
            d["train"].pop("snapshots"), d["train"].pop("snapshot_dtype")
        for section, keys in _ADDED_LATER.items():  # likewise for keys added later, left at their defaults
            defaults = _SECTIONS[section]()
            for k in keys:
                if d[section][k] == getattr(defaults, k):
                    d[section].pop(k)
        for k in self.analysis:
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


_SECTIONS = {"model": ModelSpec, "param": ParamSpec, "data": DataSpec, "train": TrainSpec, "optim": OptimSpec}
# keys that change results but came after the first run-store format: at their defaults they stay out of the
# fingerprint, so runs trained before them still resume and open
_ADDED_LATER = {"param": ("readout", "gamma0", "center", "eps_scaling")}


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
NAME_MAX = 100  # characters of ``name`` (a folder name under runs/, with room for suffixes)


def check_name(name: str) -> str:
    """``name`` if it is one safe path component (it becomes ``runs/<name>``), else a RecipeError."""
    bad = ("is empty" if not name.strip() else
           "is '.' or '..'" if name.strip() in (".", "..") else
           "contains a path separator" if "/" in name or "\\" in name else
           "contains a control character" if any(ord(c) < 32 or ord(c) == 127 for c in name) else
           f"is longer than {NAME_MAX} characters" if len(name) > NAME_MAX else
           "starts with '-' or '.'" if name[0] in "-." else "")
    if bad:
        raise RecipeError(f"recipe key 'name' {bad} ({name[:40]!r}); it names the run folder runs/<name>: use "
                          "letters, digits, '-' and '_', like name = \"mlp-digits\"")
    return name


def check_strategy(strategy: str, what: str = "recipe key 'train.strategy'") -> str:
    """``strategy`` if it is auto, vectorized, loop or chunk:N (N >= 1), optionally with +compile (force
    ``torch.compile``) or +eager (forbid it), else a RecipeError naming ``what``."""
    st, _, mode = strategy.partition("+")
    group_ok = st in ("auto", "vectorized", "loop") or (st.startswith("chunk:") and st[6:].isdigit() and int(st[6:]) > 0)
    if not group_ok or mode not in ("", "auto", "compile", "eager"):
        raise RecipeError(f"{what} is '{strategy}'; choose auto, vectorized, loop or chunk:N (N >= 1), "
                          "optionally with +compile or +eager")
    return strategy


def _validate(r: Recipe) -> None:
    check_name(r.name)
    if not r.model.widths:
        raise RecipeError("recipe key 'model.widths' is empty; give a list like [16, 64, 256]")
    for w in r.model.widths:
        if w <= 0:
            raise RecipeError(f"recipe key 'model.widths' has {w}; widths must be positive integers")
    if len(set(r.model.widths)) != len(r.model.widths):
        raise RecipeError("recipe key 'model.widths' has repeated widths; list each width once")
    if not r.train.seeds:
        raise RecipeError("recipe key 'train.seeds' is empty; give a count like 4 or a list like [0, 1]")
    if len(set(r.train.seeds)) != len(r.train.seeds):
        raise RecipeError("recipe key 'train.seeds' has repeated seeds; list each seed once")
    grid.check(r.train.eval_every, "train.eval_every")
    grid.check(r.train.snapshots, "train.snapshots")
    if r.train.epochs <= 0 and r.train.steps <= 0:
        raise RecipeError(f"recipe key 'train.steps' is {r.train.steps}; it must be positive "
                            "(or set train.epochs)")
    check_strategy(r.train.strategy)
    if not _DEVICE.fullmatch(r.train.device):
        raise RecipeError(f"recipe key 'train.device' is '{r.train.device}'; choose auto, cpu, cuda, cuda:N or mps")
    if len(r.optim.betas) != 2 or not all(0 <= b < 1 for b in r.optim.betas):
        raise RecipeError("recipe key 'optim.betas' must be two numbers in [0, 1), like [0.9, 0.999]")
    from .models import model_kwargs  # validates family and its hyper-parameters
    accepted = model_kwargs(r.model.family)
    for key in r.model.kwargs:
        if key not in accepted:
            raise UnknownNameError(f"unknown recipe key 'model.{key}' for family '{r.model.family}'"
                                f"{did_you_mean(key, accepted)}; valid: {', '.join(sorted(accepted)) or 'none'}")


def _check_written(raw: dict) -> None:
    """Checks on a recipe as written (TOML): it says something, and not both ``steps`` and ``epochs``
    (a resolved recipe, :meth:`Recipe.to_dict`, has both)."""
    if not raw:
        raise RecipeError("the recipe is empty; give at least [model] widths and [data] task "
                          "(see `widthkit study quickstart` or recipes/quickstart.toml)")
    train = raw.get("train")
    if isinstance(train, dict) and "steps" in train and "epochs" in train:
        raise RecipeError("recipe keys 'train.steps' and 'train.epochs' are both set; keep one of them")


def _seeds(value: Any) -> Any:
    """``seeds = 4`` means seeds 0..3; a list is taken as is."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise RecipeError(f"recipe key 'train.seeds' is {value}; give a positive count or a list of seeds")
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
            raise UnknownNameError(f"unknown recipe section or key '{key}'{did_you_mean(key, known)}; "
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
            raise RecipeError(f"--set '{item}' is not of the form section.key=value (e.g. optim.lr=0.1)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set '{key}': '{p}' is not a section")
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
                    raise RecipeError(f"recipe key '{sec}.{key}' is an empty sweep list")
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
    if not isinstance(family, str):  # a sweep over families, or a wrong type that from_dict reports
        return False
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
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8 TOML") from None
    except OSError as e:
        raise RecipeError(f"cannot read recipe file '{path}' ({e.strerror}); check its permissions") from None
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
            raise RecipeError(f"recipe is not valid TOML: {e}") from None
    elif isinstance(recipe, (str, Path)):
        text, raw = read_recipe_file(recipe)
    else:
        raise RecipeError(f"expected a recipe (Recipe, dict, TOML path or TOML text), got {type(recipe).__name__}")
    raw = apply_overrides(raw, overrides)
    if text or not raw:
        _check_written(raw)
    return text, raw


def resolve_recipe(recipe, overrides: list[str] | None = None) -> Recipe:
    """The one :class:`Recipe` (no sweeps) of anything :func:`as_recipe_dict` accepts, with ``overrides``."""
    if isinstance(recipe, Recipe) and not overrides:
        return recipe
    _, raw = as_recipe_dict(recipe, overrides)
    points = expand_grid(raw)
    if len(points) > 1:
        raise RecipeError(f"recipe '{raw.get('name', 'ladder')}' sweeps {len(points)} grid points; this takes "
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
    """Validate the free-form analysis table ``[name]`` (updated by ``overrides``) against dataclass ``cls``.

    A bad value in ``overrides`` (keyword options of an API call, or CLI flags) is named as the option
    (`` `subsets` must be ...``, which the CLI shows as ``--subsets``), not as a recipe key."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for key, value in (overrides or {}).items():
        if key in hints:
            try:
                coerce(value, hints[key], key)
            except WidthkitError:
                raise RecipeError(f"`{key}` must be {describe(hints[key])}, got {value!r}") from None
    return build_dataclass(cls, {**recipe.analysis.get(name, {}), **(overrides or {})}, name)
