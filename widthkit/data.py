"""Tasks: the data a width ladder is trained and evaluated on.

``load_task(spec, root=..., online=..., seed=..., n_train=..., n_test=..., **options) -> Task``

Spec syntax (one string, as written in a recipe's ``data.task``)::

    NAME[:CLASSES][?KEY=VALUE&KEY=VALUE...]

* ``NAME`` is one of :func:`list_tasks`.
* ``CLASSES`` keeps only some classes and relabels them ``0..k-1`` in the order given:
  ``digits:0-4``, ``digits:5-9``, ``cifar10:3,5`` (``0-2,7`` mixes both forms).  The kept original ids are
  in ``task.classes``.
* ``?KEY=VALUE`` sets options, exactly like keyword arguments (``teacher?perturb=0.5&teacher_seed=1``).
  Values are converted to the option's type.  Options in the spec win over keyword arguments, so a transfer
  target string can fully describe its task.  ``seed``, ``n_train``, ``n_test`` and ``online`` may also be set
  this way.  Recipes pass ``data.task``, ``data.root``, ``data.online`` and other ``[data]`` keys as kwargs.

Tasks (options with defaults):

* ``digits``: sklearn's 8x8 digits (bundled, offline), ``(1, 8, 8)``, fixed stratified 75/25 split.
* ``mnist1d``: MNIST-1D generated locally with the ``mnist1d`` package (its standard 4000/1000 set, seed 42,
  never downloaded), ``(1, 40)``.  Online: fresh samples from the same generative process.
* ``teacher``: Gaussian inputs ``x ~ N(0, I_dim)`` labelled by a random two-layer tanh teacher
  ``f(x) = W2 tanh(W1 x / sqrt(dim)) / sqrt(teacher_width)``.  Options ``dim=32, teacher_width=64, classes=0``
  (0: regression with ``outputs=1`` targets; K: classification by argmax of K outputs), ``outputs=1``,
  ``teacher_seed=0``, ``noise=0.0`` (Gaussian noise added to the outputs, before the argmax for
  classification), ``perturb=0.0`` and ``perturb_seed=1``: a related teacher with weights
  ``((1-p) W + p W') / sqrt((1-p)^2 + p^2)`` where ``W`` comes from ``teacher_seed`` and ``W'`` from
  ``(teacher_seed, perturb_seed)``; the rescaling keeps unit weight variance, so only the direction changes and
  the weight correlation with the base teacher is ``(1-p)/sqrt((1-p)^2+p^2)``.  ``seed`` draws the fixed
  train/test inputs.  Defaults ``n_train=4096, n_test=2048``.
* ``cifar10``, ``cifar100`` (option ``label="fine"|"coarse"``): the python pickle batches from
  https://www.cs.toronto.edu/~kriz/cifar.html, extracted under ``root``; ``(3, 32, 32)``.
* ``cifar5m``: shards ``cifar5m_part*.npz`` (arrays ``X`` uint8 ``[N,32,32,3]``, ``Y`` ``[N]``) in ``root`` (or
  ``root/cifar5m``), memory-mapped.  The last ``n_test`` samples (default 10000) are the test set; ``x_train`` is
  the first ``n_train`` (default 50000); online mode samples uniformly from everything before the test set.
* ``imagefolder``: ``root`` holds one folder of images per class (or ``train/`` and ``test/`` folders of such);
  images are resized to ``size x size`` (option ``size=32``) RGB.  Without ``train/``/``test/`` each class is
  split deterministically (``test_fraction=0.2``, shuffled with ``seed``).

``root=""`` means ``data/`` (relative to the working directory).  Nothing is ever downloaded: a missing dataset
raises a one-line :class:`WidthkitError` saying which file to put where.

Normalization: image inputs (digits, CIFAR, CIFAR-5m, image folders) are standardized per channel with the mean
and std of the task's full training split (all classes, before class selection and ``n_train`` truncation, so
``digits:0-4`` and ``digits:5-9`` see the same pixel scale).  MNIST-1D keeps its package's own standardization
(one mean/std over the generated set), applied to online samples too.  Teacher inputs are already standard.

Finite tasks truncate to the first ``n_train``/``n_test`` samples of a fixed shuffled order.  Online tasks keep a
fixed train-eval set and a fixed test set (drawn with fixed seeds), so test outputs are comparable across steps
and widths; ``task.sample(n, generator)`` draws fresh training samples reproducibly from the generator.

Besides the contract fields, a Task carries ``spec`` (canonical spec string, e.g. ``teacher?perturb=0.5``) and
``class_names``; it pickles as a small "load this again" recipe, so it can be sent to worker processes.

Tasks are cached per process (many widths load the same task): the returned tensors are shared, so callers must
not modify them in place.  :func:`clear_cache` frees them.
"""
from __future__ import annotations

import contextlib
import functools
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from widthkit.errors import WidthkitError, unknown

Sampler = Callable[[int, torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_STAT_SAMPLES = 50_000  # images used for CIFAR-5m normalization statistics


# --------------------------------------------------------------------------------------------------- Task

@dataclass(eq=False)
class Task:
    """A supervised task: fixed train/test tensors and, for online tasks, a sampler of fresh training data.

    Inputs are float32 ``[N, *in_shape]``; targets are int64 labels ``[N]`` (classification) or float32
    ``[N, num_classes]`` (regression).  Tensors are shared through the per-process cache: do not mutate them.
    """

    name: str
    kind: str
    in_shape: tuple
    num_classes: int
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    online: bool = False
    classes: list[int] = field(default_factory=list)
    spec: str = ""
    class_names: list[str] = field(default_factory=list, repr=False)
    sampler: Sampler | None = field(default=None, repr=False)
    cache_key: tuple | None = field(default=None, repr=False)

    def __reduce__(self):
        """Pickle as 'load this task again' (small, and works for online samplers, e.g. for worker processes)."""
        if self.cache_key is None:
            return super().__reduce__()
        return _load_cached, (self.cache_key,)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh training samples ``(x, y)``; the same generator state gives the same samples."""
        if not self.online or self.sampler is None:
            raise WidthkitError(
                f"task '{self.spec or self.name}' is a fixed dataset and cannot draw fresh samples; "
                f"load it with online=True (data.online = true); online tasks: {', '.join(_online_tasks())}")
        return self.sampler(int(n), generator)


# ------------------------------------------------------------------------------------ registry & options

@dataclass(frozen=True)
class _Spec:
    name: str
    online_ok: bool
    options: dict  # option name -> default
    defaults: dict = field(default_factory=dict)  # default n_train / n_test


_TASKS: dict[str, _Spec] = {
    "digits": _Spec("digits", False, {}),
    "mnist1d": _Spec("mnist1d", True, {}),
    "teacher": _Spec("teacher", True, dict(dim=32, teacher_width=64, classes=0, outputs=1, teacher_seed=0,
                                           noise=0.0, perturb=0.0, perturb_seed=1),
                     dict(n_train=4096, n_test=2048)),
    "cifar10": _Spec("cifar10", False, {}),
    "cifar100": _Spec("cifar100", False, dict(label="fine")),
    "cifar5m": _Spec("cifar5m", True, {}, dict(n_train=50_000, n_test=10_000)),
    "imagefolder": _Spec("imagefolder", False, dict(size=32, test_fraction=0.2)),
}
_LOAD_KEYS = dict(seed=0, n_train=None, n_test=None, online=False)


def list_tasks() -> list[str]:
    """Names accepted by :func:`load_task` (before ``:CLASSES`` / ``?options``)."""
    return sorted(_TASKS)


def _online_tasks() -> list[str]:
    return sorted(n for n, s in _TASKS.items() if s.online_ok)


def _parse_classes(text: str, spec: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise WidthkitError(
                f"bad class list '{text}' in task '{spec}'; write classes like '0-4' or '0,2,4', "
                f"and options after '?', e.g. 'teacher?perturb=0.5'")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise WidthkitError(f"bad class range '{part.strip()}' in task '{spec}'; write low-high, e.g. '0-4'")
        out.extend(range(lo, hi + 1))
    if len(set(out)) != len(out):
        raise WidthkitError(f"class list '{text}' in task '{spec}' repeats a class; list each class once")
    return tuple(out)


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def _parse_spec(spec: str) -> tuple[str, tuple[int, ...] | None, dict]:
    if not isinstance(spec, str) or not spec.strip():
        raise WidthkitError(f"data.task must be a task name like 'digits'; valid: {', '.join(list_tasks())}")
    head, _, query = spec.strip().partition("?")
    name, colon, cls = head.partition(":")
    name = name.strip()
    classes = _parse_classes(cls, spec) if colon else None
    opts: dict = {}
    for item in filter(None, query.split("&")):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise WidthkitError(f"bad option '{item}' in task '{spec}'; write KEY=VALUE pairs joined by '&'")
        opts[key.strip()] = _parse_value(val)
    return name, classes, opts


def _coerce(task: str, key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default`` (int accepted for float)."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if default is None:  # n_train / n_test
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise WidthkitError(f"{task}: {key} must be a positive integer, got {value!r}")
    typ = type(default)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, typ) and (typ is bool or not isinstance(value, bool)):
        return value
    raise WidthkitError(f"{task}: option {key} must be {typ.__name__}, got {value!r}")


# ------------------------------------------------------------------------------------------ public loader

def load_task(spec: str, *, root: str = "", online: bool = False, seed: int = 0, n_train: int | None = None,
              n_test: int | None = None, **options) -> Task:
    """Load (or fetch from the per-process cache) the task described by ``spec``; see the module docstring."""
    name, classes, spec_opts = _parse_spec(spec)
    if name not in _TASKS:
        raise unknown("task", name, list_tasks())
    info = _TASKS[name]
    merged = dict(options, seed=seed, n_train=n_train, n_test=n_test, online=online)
    merged.update(spec_opts)  # the spec string is the more specific source
    valid = {**_LOAD_KEYS, **info.options}
    resolved = {}
    for key, value in merged.items():
        if key not in valid:
            raise unknown(f"option for task '{name}'", key, valid)
        resolved[key] = _coerce(name, key, value, valid[key])
    for key, default in info.options.items():
        resolved.setdefault(key, default)
    for key, default in info.defaults.items():
        if resolved[key] is None:
            resolved[key] = default
    if resolved["online"] and not info.online_ok:
        raise WidthkitError(f"task '{name}' has no online mode; set data.online = false, "
                            f"or use an online task: {', '.join(_online_tasks())}")
    root_path = str(Path(root or "data").expanduser().resolve())
    key = (name, classes, root_path, tuple(sorted(resolved.items())))
    return _load_cached(key)


@functools.lru_cache(maxsize=6)
def _load_cached(key) -> Task:
    name, classes, root, items = key
    opts = dict(items)
    req = _Request(root=root, classes=classes, seed=opts.pop("seed"), n_train=opts.pop("n_train"),
                   n_test=opts.pop("n_test"), online=opts.pop("online"), options=opts)
    task = _finish(name, req, _BUILDERS[name](req))
    task.cache_key = key
    return task


def clear_cache() -> None:
    """Forget cached tasks and raw datasets (frees memory; the next load rereads files)."""
    _load_cached.cache_clear()
    _digits_raw.cache_clear()
    _mnist1d_fixed_default.cache_clear()
    _cifar_raw.cache_clear()


@dataclass
class _Request:
    root: str
    classes: tuple[int, ...] | None
    seed: int
    n_train: int | None
    n_test: int | None
    online: bool
    options: dict


@dataclass
class _Base:
    """What a builder returns: tensors already filtered to ``req.classes`` but with original labels."""
    kind: str
    in_shape: tuple
    num_classes: int  # before class selection
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    sampler: Sampler | None = None
    class_names: list[str] = field(default_factory=list)


def _canonical_spec(name: str, req: _Request) -> str:
    spec = name
    if req.classes is not None:
        spec += ":" + ",".join(map(str, req.classes))
    opts = {k: v for k, v in req.options.items() if v != _TASKS[name].options.get(k)}
    if opts:
        spec += "?" + "&".join(f"{k}={v}" for k, v in sorted(opts.items()))
    return spec


def _finish(name: str, req: _Request, base: _Base) -> Task:
    """Relabel kept classes to 0..k-1 (sampler too) and wrap everything into a Task."""
    spec = _canonical_spec(name, req)
    if base.kind == "regression":
        if req.classes is not None:
            raise WidthkitError(f"task '{spec}' is a regression task: class lists need a classification task "
                                f"(for teacher set classes=K)")
        return Task(name, "regression", base.in_shape, base.num_classes, base.x_train, base.y_train,
                    base.x_test, base.y_test, req.online, [], spec, [], base.sampler if req.online else None)
    keep = list(req.classes) if req.classes is not None else list(range(base.num_classes))
    lut = torch.full((base.num_classes,), -1, dtype=torch.long)
    lut[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
    sampler = None
    if req.online and base.sampler is not None:
        inner = base.sampler

        def sampler(n: int, generator: torch.Generator, _inner=inner, _lut=lut):
            x, y = _inner(n, generator)
            return x, _lut[y]
    names = [base.class_names[c] for c in keep] if base.class_names else []
    return Task(name, "classification", base.in_shape, len(keep), base.x_train, lut[base.y_train],
                base.x_test, lut[base.y_test], req.online, keep, spec, names, sampler)


# ------------------------------------------------------------------------------------------------ helpers

def _check_classes(name: str, req: _Request, num_classes: int) -> None:
    if req.classes is not None:
        bad = [c for c in req.classes if c >= num_classes]
        if bad:
            raise WidthkitError(f"task '{name}' has classes 0-{num_classes - 1}; class {bad[0]} does not exist")


def _select(name: str, split: str, x, y: np.ndarray, classes, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Indices-first selection: keep ``classes`` (None = all), then the first ``n``. Returns (x[idx], y[idx])."""
    idx = np.arange(len(y)) if classes is None else np.flatnonzero(np.isin(y, classes))
    if n is not None:
        if n > len(idx):
            raise WidthkitError(f"task '{name}' has only {len(idx)} {split} samples in the chosen classes; "
                                f"lower n_{split} (asked {n})")
        idx = idx[:n]
    return x[idx], y[idx]


def _channel_stats(x: np.ndarray, scale: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x / scale`` for ``x`` [N, C, ...], in float64 chunks (no full copy)."""
    c = x.shape[1]
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), chunk):
        part = np.asarray(x[i:i + chunk], dtype=np.float64).reshape(-1, c, int(np.prod(x.shape[2:]))) / scale
        s1 += part.sum(axis=(0, 2))
        s2 += (part ** 2).sum(axis=(0, 2))
        count += part.shape[0] * part.shape[2]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float,
                 chunk: int = 4096) -> torch.Tensor:
    """float32 tensor of ``(x/scale - mean[c]) / std[c]`` for ``x`` [N, C, ...], filled chunk by chunk."""
    out = torch.empty(x.shape, dtype=torch.float32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(shape)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(shape)
    for i in range(0, len(x), chunk):
        part = torch.from_numpy(np.asarray(x[i:i + chunk], dtype=np.float32)) / scale
        out[i:i + chunk] = (part - m) / s
    return out


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y, dtype=np.int64))


def _seed_from(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (independent streams for train/test/perturbation)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def _draw(sampler: Sampler, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return sampler(n, torch.Generator().manual_seed(seed))


def _keep_sampler(draw: Sampler, classes) -> Sampler:
    """Restrict a sampler to ``classes`` by rejection (original labels kept)."""
    if classes is None:
        return draw
    keep = torch.tensor(classes, dtype=torch.long)

    def sampler(n: int, generator: torch.Generator):
        xs, ys, have = [], [], 0
        for _ in range(10_000):
            x, y = draw(max(n, 64), generator)
            mask = torch.isin(y, keep)
            xs.append(x[mask])
            ys.append(y[mask])
            have += int(mask.sum())
            if have >= n:
                return torch.cat(xs)[:n], torch.cat(ys)[:n]
        raise WidthkitError(f"classes {list(classes)} almost never occur in this task; choose other classes")
    return sampler


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (which mnist1d uses) and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        np.random.set_state(state)


# ----------------------------------------------------------------------------------------------- digits

@functools.lru_cache(maxsize=1)
def _digits_raw():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = d.images.reshape(-1, 1, 8, 8)
    # fixed split (seed 0), identical in every run
    return train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)


def _build_digits(req: _Request) -> _Base:
    _check_classes("digits", req, 10)
    xtr, xte, ytr, yte = _digits_raw()
    mean, std = _channel_stats(xtr, 16.0)
    xtr, ytr = _select("digits", "train", xtr, ytr, req.classes, req.n_train)
    xte, yte = _select("digits", "test", xte, yte, req.classes, req.n_test)
    return _Base("classification", (1, 8, 8), 10, _standardize(xtr, mean, std, 16.0), _labels(ytr),
                 _standardize(xte, mean, std, 16.0), _labels(yte), class_names=[str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------- mnist1d

def _mnist1d_raw(labels: np.ndarray, args) -> np.ndarray:
    """Unnormalized MNIST-1D signals for ``labels``: mnist1d's own per-sample transform of its templates,
    drawing from numpy's global RNG in the same order as ``mnist1d.data.make_dataset``."""
    from mnist1d.data import get_templates
    from mnist1d.transform import transform
    t = get_templates()
    if len(labels) == 0:
        return np.zeros((0, args.final_seq_length))
    return np.stack([transform(t["x"][y], t["t"], args)[0] for y in labels])


def _mnist1d_fixed(args) -> dict:
    """Exactly ``mnist1d.data.make_dataset(args)`` (tests check equality), plus the normalization constants
    ``mean``/``std`` that make_dataset applies, so online samples can be normalized identically.
    Unlike make_dataset it leaves numpy's global RNG as it was."""
    if args.shuffle_seq:
        raise WidthkitError("mnist1d: shuffle_seq is not supported")
    with _numpy_seed(args.seed):
        labels = np.repeat(np.arange(10), args.num_samples // 10)
        raw = _mnist1d_raw(labels, args)
        perm = np.random.permutation(len(labels))
    raw, labels = raw[perm], labels[perm]
    mean, std = raw.mean(), raw.std()
    x = (raw - mean) / std
    split = int(len(labels) * args.train_split)
    return dict(x=x[:split], y=labels[:split], x_test=x[split:], y_test=labels[split:], mean=mean, std=std)


@functools.lru_cache(maxsize=1)
def _mnist1d_fixed_default() -> dict:
    from mnist1d.data import get_dataset_args
    return _mnist1d_fixed(get_dataset_args())


def _build_mnist1d(req: _Request) -> _Base:
    from mnist1d.data import get_dataset_args
    _check_classes("mnist1d", req, 10)
    d = _mnist1d_fixed_default()
    xtr, ytr = _select("mnist1d", "train", d["x"], d["y"], req.classes, req.n_train)
    xte, yte = _select("mnist1d", "test", d["x_test"], d["y_test"], req.classes, req.n_test)
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32).reshape(-1, 1, a.shape[-1])  # noqa: E731
    args, mean, std = get_dataset_args(), d["mean"], d["std"]
    keep = torch.tensor(req.classes if req.classes is not None else range(10), dtype=torch.long)

    def sampler(n: int, generator: torch.Generator):
        y = keep[torch.randint(len(keep), (n,), generator=generator)]
        with _numpy_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=generator))):
            raw = _mnist1d_raw(y.numpy(), args)
        return as_x((raw - mean) / std), y
    return _Base("classification", (1, 40), 10, as_x(xtr), _labels(ytr), as_x(xte), _labels(yte), sampler,
                 [str(i) for i in range(10)])


# ---------------------------------------------------------------------------------------------- teacher

def _teacher_weights(dim: int, width: int, outputs: int, teacher_seed: int, perturb: float,
                     perturb_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(width, dim, generator=g), torch.randn(outputs, width, generator=g)
    w1, w2 = draw(_seed_from(teacher_seed, 0x7EAC))
    if perturb:
        p1, p2 = draw(_seed_from(teacher_seed, perturb_seed, 0x9E27))
        c = 1.0 / math.sqrt((1 - perturb) ** 2 + perturb ** 2)
        w1 = c * ((1 - perturb) * w1 + perturb * p1)
        w2 = c * ((1 - perturb) * w2 + perturb * p2)
    return w1, w2


def _build_teacher(req: _Request) -> _Base:
    o = req.options
    dim, width, classes, outputs = o["dim"], o["teacher_width"], o["classes"], o["outputs"]
    for key in ("dim", "teacher_width", "outputs"):
        if o[key] < 1:
            raise WidthkitError(f"teacher: {key} must be >= 1, got {o[key]}")
    if classes == 1 or classes < 0:
        raise WidthkitError(f"teacher: classes must be 0 (regression) or >= 2, got {classes}")
    if classes and outputs != 1:
        raise WidthkitError("teacher: set outputs only for regression (classes=0); with classes=K the teacher "
                            "has K outputs")
    if not 0.0 <= o["perturb"] <= 1.0:
        raise WidthkitError(f"teacher: perturb must be in [0, 1], got {o['perturb']}")
    if o["noise"] < 0:
        raise WidthkitError(f"teacher: noise must be >= 0, got {o['noise']}")
    k = classes or outputs
    w1, w2 = _teacher_weights(dim, width, k, o["teacher_seed"], o["perturb"], o["perturb_seed"])
    noise = o["noise"]

    def teacher(n: int, generator: torch.Generator):
        x = torch.randn(n, dim, generator=generator)
        out = torch.tanh(x @ w1.T / math.sqrt(dim)) @ w2.T / math.sqrt(width)
        if noise:
            out = out + noise * torch.randn(out.shape, generator=generator)
        return x, (out.argmax(1) if classes else out)

    if classes:
        _check_classes("teacher", req, classes)
        sampler = _keep_sampler(teacher, req.classes)
    else:
        sampler = teacher
    xtr, ytr = _draw(sampler, req.n_train, _seed_from(req.seed, 1))
    xte, yte = _draw(sampler, req.n_test, _seed_from(req.seed, 2))
    return _Base("classification" if classes else "regression", (dim,), k, xtr, ytr, xte, yte, sampler)


# ------------------------------------------------------------------------------------------------ CIFAR

def _missing_cifar(name: str, root: str, folder: str) -> WidthkitError:
    return WidthkitError(f"{name} not found under '{root}': put the extracted '{folder}' folder there "
                         f"(from {CIFAR_URL}), or set data.root")


def _read_pickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise WidthkitError(f"{name}: cannot read '{path}' ({exc}); re-extract the archive from {CIFAR_URL}")


# On-disk layout of the python versions, as in torchvision.datasets.CIFAR10/CIFAR100 (tests check they agree;
# spelled out here so loading does not import torchvision).
_CIFAR_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", key="label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     key="fine_label_names"),
}


@functools.lru_cache(maxsize=2)
def _cifar_raw(name: str, root: str) -> dict:
    """Raw uint8 CIFAR arrays [N,3,32,32] and labels, read from the python pickle batches.

    Same files, keys and parsing as torchvision's CIFAR10/CIFAR100.  We read the pickles ourselves instead of
    instantiating those classes because (a) torchvision only exposes fine labels, and the coarse CIFAR-100
    labels live in the same pickles, and (b) torchvision insists on the md5 of the official archive; we never
    download, so we trust the files the user placed (a truncated or foreign file still fails loudly when
    unpickled or reshaped below).
    """
    lay = _CIFAR_LAYOUT[name]
    folder = Path(root) / lay["folder"]
    if not folder.is_dir():
        raise _missing_cifar(name, root, lay["folder"])
    out: dict = {}
    for split in ("train", "test"):
        data, fine, coarse = [], [], []
        for fname in lay[split]:
            path = folder / fname
            if not path.is_file():
                raise WidthkitError(f"{name}: missing '{fname}' in '{folder}'; extract the full archive from "
                                    f"{CIFAR_URL} there")
            entry = _read_pickle(path, name)
            try:
                data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                fine.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
                coarse.extend(entry.get("coarse_labels", []))
            except (KeyError, ValueError) as exc:
                raise WidthkitError(f"{name}: '{path}' is not a CIFAR batch ({exc}); re-extract it from {CIFAR_URL}")
        out[split] = (np.concatenate(data), np.asarray(fine, dtype=np.int64), np.asarray(coarse, dtype=np.int64))
    meta_path = folder / lay["meta"]
    if not meta_path.is_file():
        raise WidthkitError(f"{name}: missing '{lay['meta']}' in '{folder}'; extract the full archive "
                            f"from {CIFAR_URL} there")
    meta = _read_pickle(meta_path, name)
    try:
        out["fine_names"] = list(meta[lay["key"]])
    except KeyError:
        raise WidthkitError(f"{name}: '{meta_path}' has no '{lay['key']}'; re-extract it from {CIFAR_URL}")
    out["coarse_names"] = list(meta.get("coarse_label_names", []))
    return out


def _build_cifar(name: str, req: _Request) -> _Base:
    label = req.options.get("label", "fine")
    if label not in ("fine", "coarse"):
        raise unknown("cifar100 label", label, ["fine", "coarse"])
    raw = _cifar_raw(name, req.root)
    (xtr, ytr, ctr), (xte, yte, cte) = raw["train"], raw["test"]
    names = raw["fine_names"]
    if label == "coarse":
        ytr, yte, names = ctr, cte, raw["coarse_names"]
    k = len(names)
    _check_classes(name, req, k)
    mean, std = _channel_stats(xtr, 255.0)
    xtr, ytr = _select(name, "train", xtr, ytr, req.classes, req.n_train)
    xte, yte = _select(name, "test", xte, yte, req.classes, req.n_test)
    return _Base("classification", (3, 32, 32), k, _standardize(xtr, mean, std, 255.0), _labels(ytr),
                 _standardize(xte, mean, std, 255.0), _labels(yte), class_names=names)


# ---------------------------------------------------------------------------------------------- CIFAR-5m

def _npz_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz``: memory-mapped when stored uncompressed (np.savez), else read fully."""
    member = key + ".npy"
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
        stored = info.compress_type == zipfile.ZIP_STORED
    if stored:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version in readers:
                shape, fortran, dtype = readers[version](f)
                offset = f.tell()
            else:
                stored = False
        if stored and not dtype.hasobject:
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                             order="F" if fortran else "C")
    with np.load(path) as z:
        return z[key]


class _Shards:
    """CIFAR-5m shards as one indexable dataset of uint8 [N,32,32,3] images (memory-mapped)."""

    def __init__(self, paths: list[Path]):
        self.xs, ys = [], []
        for p in paths:
            try:
                x, y = _npz_array(p, "X"), _npz_array(p, "Y")
            except (KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
                raise WidthkitError(f"cifar5m: cannot read '{p}' ({exc}); each shard needs arrays X uint8 "
                                    f"[N,32,32,3] and Y [N]")
            if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(y) != len(x):
                raise WidthkitError(f"cifar5m: '{p}' has X {x.shape} and Y {y.shape}; expected X uint8 "
                                    f"[N,32,32,3] and Y [N]")
            self.xs.append(x)
            ys.append(np.asarray(y, dtype=np.int64))
        self.y = np.concatenate(ys)
        self.starts = np.cumsum([0] + [len(x) for x in self.xs])

    def images(self, idx: np.ndarray) -> np.ndarray:
        """Images at global indices ``idx`` as uint8 [n,3,32,32] (read shard by shard in sorted order)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
        order = np.argsort(idx, kind="stable")
        shard = np.searchsorted(self.starts, idx[order], side="right") - 1
        for s in np.unique(shard):
            sel = order[shard == s]
            out[sel] = self.xs[s][idx[sel] - self.starts[s]]
        return out.transpose(0, 3, 1, 2)


def _cifar5m_paths(root: str) -> list[Path]:
    for folder in (Path(root), Path(root) / "cifar5m"):
        found = list(folder.glob("cifar5m_part*.npz")) if folder.is_dir() else []
        if found:
            num = lambda p: int(m.group(1)) if (m := re.search(r"part(\d+)", p.stem)) else 0  # noqa: E731
            return sorted(found, key=lambda p: (num(p), p.name))
    raise WidthkitError(f"cifar5m not found under '{root}': put its shards 'cifar5m_part0.npz', "
                        f"'cifar5m_part1.npz', ... (arrays X uint8 [N,32,32,3], Y [N]) there, or set data.root")


def _build_cifar5m(req: _Request) -> _Base:
    data = _Shards(_cifar5m_paths(req.root))
    if len(data.y) and not 0 <= data.y.min() <= data.y.max() < 10:
        raise WidthkitError(f"cifar5m: labels Y must be CIFAR-10 classes 0-9, found {data.y.min()}..{data.y.max()}")
    _check_classes("cifar5m", req, 10)
    eligible = np.arange(len(data.y)) if req.classes is None else np.flatnonzero(np.isin(data.y, req.classes))
    if len(eligible) <= req.n_test:
        raise WidthkitError(f"cifar5m has {len(eligible)} samples in the chosen classes, not more than "
                            f"n_test={req.n_test}; lower n_test or add shards")
    test_idx, pool = eligible[-req.n_test:], eligible[:-req.n_test]
    if req.n_train > len(pool):
        raise WidthkitError(f"cifar5m has only {len(pool)} training samples in the chosen classes; lower n_train "
                            f"(asked {req.n_train})")
    n_all = len(data.y) - req.n_test  # stats from the first images, the same for every class selection
    stat_idx = np.arange(min(_STAT_SAMPLES, max(n_all, 1)))
    mean, std = _channel_stats(data.images(stat_idx), 255.0)
    train_idx = pool[:req.n_train]
    xtr = _standardize(data.images(train_idx), mean, std, 255.0)
    xte = _standardize(data.images(test_idx), mean, std, 255.0)
    pool_t = torch.from_numpy(pool)

    def sampler(n: int, generator: torch.Generator):
        idx = pool_t[torch.randint(len(pool_t), (n,), generator=generator)].numpy()
        return _standardize(data.images(idx), mean, std, 255.0), _labels(data.y[idx])
    return _Base("classification", (3, 32, 32), 10, xtr, _labels(data.y[train_idx]), xte,
                 _labels(data.y[test_idx]), sampler)


# -------------------------------------------------------------------------------------------- imagefolder

def _read_folder(path: Path, size: int):
    """All images of an ImageFolder as uint8 [N,3,size,size], labels, class names."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    from widthkit.progress import track
    try:
        ds = ImageFolder(str(path), transform=transforms.Compose(
            [transforms.Resize((size, size)), transforms.PILToTensor()]))
    except (FileNotFoundError, OSError) as exc:
        raise WidthkitError(f"imagefolder: no images under '{path}' ({exc}); set data.root to a folder with one "
                            f"subfolder of images per class")
    x = np.empty((len(ds), 3, size, size), dtype=np.uint8)
    for i in track(range(len(ds)), f"reading {path.name}"):
        x[i] = ds[i][0].numpy()
    return x, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def _build_imagefolder(req: _Request) -> _Base:
    root, size, frac = Path(req.root), req.options["size"], req.options["test_fraction"]
    if size < 1 or not 0.0 < frac < 1.0:
        raise WidthkitError(f"imagefolder: need size >= 1 and 0 < test_fraction < 1, got size={size}, "
                            f"test_fraction={frac}")
    if not root.is_dir():
        raise WidthkitError(f"imagefolder not found: '{root}' does not exist; set data.root to a folder with one "
                            f"subfolder of images per class (or train/ and test/ folders of such)")
    rng = np.random.default_rng(_seed_from(req.seed, 3))
    if (root / "train").is_dir() and (root / "test").is_dir():
        xtr, ytr, names = _read_folder(root / "train", size)
        xte, yte, names_te = _read_folder(root / "test", size)
        if names_te != names:
            raise WidthkitError(f"imagefolder: '{root / 'train'}' and '{root / 'test'}' have different class "
                                f"folders; give both the same classes")
        ptr, pte = rng.permutation(len(ytr)), rng.permutation(len(yte))
        xtr, ytr, xte, yte = xtr[ptr], ytr[ptr], xte[pte], yte[pte]
    else:
        x, y, names = _read_folder(root, size)
        test_mask = np.zeros(len(y), dtype=bool)
        for c in range(len(names)):  # stratified: the same fraction of every class goes to test
            idx = rng.permutation(np.flatnonzero(y == c))
            test_mask[idx[:int(round(frac * len(idx)))]] = True
        itr, ite = rng.permutation(np.flatnonzero(~test_mask)), rng.permutation(np.flatnonzero(test_mask))
        xtr, ytr, xte, yte = x[itr], y[itr], x[ite], y[ite]
    if len(ytr) == 0 or len(yte) == 0:
        raise WidthkitError(f"imagefolder: '{root}' gives {len(ytr)} train and {len(yte)} test images; "
                            f"add images or change test_fraction")
    _check_classes("imagefolder", req, len(names))
    mean, std = _channel_stats(xtr, 255.0)
    xtr, ytr = _select("imagefolder", "train", xtr, ytr, req.classes, req.n_train)
    xte, yte = _select("imagefolder", "test", xte, yte, req.classes, req.n_test)
    return _Base("classification", (3, size, size), len(names), _standardize(xtr, mean, std, 255.0),
                 _labels(ytr), _standardize(xte, mean, std, 255.0), _labels(yte), class_names=names)


_BUILDERS: dict[str, Callable[[_Request], _Base]] = {
    "digits": _build_digits,
    "mnist1d": _build_mnist1d,
    "teacher": _build_teacher,
    "cifar10": functools.partial(_build_cifar, "cifar10"),
    "cifar100": functools.partial(_build_cifar, "cifar100"),
    "cifar5m": _build_cifar5m,
    "imagefolder": _build_imagefolder,
}
