"""The run store: one directory per ladder, a JSON index and one HDF5 shard per job.

Layout::

    RUN/
      index.json             written by the driver only (atomically): recipe, versions, jobs
      recipe.toml            the recipe text as given (for people)
      shards/p00-w00064-s0-7.h5   one per job = (grid point, width, seeds); written by
                             whoever ran the job, atomically (temp file, then rename)
      ckpt/                  in-progress job checkpoints (removed when a shard lands)
      cache/                 analysis caches (e.g. transfer features)

Shard layout (HDF5)::

    attrs: format="widthkit-shard", format_version, fingerprint, job, point, point_key,
           width, seeds (JSON), strategy (JSON), recipe (JSON), versions (JSON),
           param_table (JSON), seconds, created
    metrics/{step, lr}                  [T]
    metrics/{train_loss, train_acc, test_loss, test_acc}   [E, T]
    logits/step [S], logits/values [E, S, N, K]   test outputs at every evaluation
    targets [N] or [N, K]                          test targets
    members/{seed, diverged, diverged_step} [E]
    state/<param or buffer name> [E, ...]        final weights (a state_dict, stacked)
    snapshots/...                                  weights at earlier steps (``train.snapshots``; see
                                                   :mod:`widthkit.snapshots`)

``open_run(path)`` returns a :class:`Run` (the directory); ``run.select(point)`` a
:class:`RunPoint` (one grid point, what analyses read).  A foreign or corrupt file raises
a one-line :class:`WidthkitError` that names it and the fix.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import platform
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from . import __version__, snapshots
from .atomic import atomic_path, atomic_write_text
from .build import build_architecture, load_recipe_task
from .data import Task
from .errors import WidthkitError, unknown
from .progress import warn
from .recipe import Recipe, from_dict

FORMAT = "widthkit-run"
SHARD_FORMAT = "widthkit-shard"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of everything that changes results, recorded in every output."""
    import timm

    return {"widthkit": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "python": platform.python_version()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def job_id(point: int, width: int, seeds: list[int]) -> str:
    return f"p{point:02d}-w{width:05d}-s{seeds[0]}-{seeds[-1]}"


# ------------------------------------------------------------------- shards
def write_shard(path: Path, *, job: str, point: int, point_key: str, recipe: Recipe, width: int,
                results, strategy: dict, param_table, targets: np.ndarray, seconds: float) -> None:
    """Write one job's results as an HDF5 shard, atomically."""
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a["format"], a["format_version"] = SHARD_FORMAT, FORMAT_VERSION
            a["fingerprint"], a["job"], a["point"], a["point_key"] = recipe.fingerprint(), job, point, point_key
            a["width"], a["seeds"] = width, json.dumps(results.seeds)
            a["strategy"], a["recipe"] = json.dumps(strategy), recipe.to_json()
            a["versions"], a["param_table"] = json.dumps(versions()), param_table.to_json(indent=None)
            a["seconds"], a["created"] = seconds, now()
            m = f.create_group("metrics")
            m["step"] = np.asarray(results.steps, np.int64)
            m["lr"] = np.asarray(results.lr, np.float64)
            for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
                m[name] = np.stack(getattr(results, name), axis=1).astype(np.float64)
            lg = f.create_group("logits")
            lg["step"] = np.asarray(results.steps, np.int64)
            lg.create_dataset("values", data=np.stack(results.logits, axis=1), compression="gzip",
                              compression_opts=1, shuffle=True)
            f["targets"] = targets
            mem = f.create_group("members")
            mem["seed"] = np.asarray(results.seeds, np.int64)
            mem["diverged_step"] = np.asarray(results.diverged_step, np.int64)
            mem["diverged"] = np.asarray(results.diverged_step) >= 0
            st = f.create_group("state")
            for k, v in results.state.items():
                st[k] = v
            snapshots.write(f, results.snapshot_steps, results.snapshots, recipe.train.snapshot_dtype)


def different_recipe(path: Path, theirs, fingerprint: str) -> WidthkitError:
    """The error for a shard written by another recipe: results are never mixed."""
    return WidthkitError(f"shard '{path}' comes from a different recipe (fingerprint {theirs} != {fingerprint}); "
                         "refusing to mix runs: use a fresh --out directory")


def foreign_fingerprint(path: Path, fingerprint: str) -> str | None:
    """The fingerprint of a readable shard of *another* recipe at ``path``, else None."""
    try:
        with h5py.File(path, "r") as f:
            other = f.attrs.get("fingerprint") if f.attrs.get("format") == SHARD_FORMAT else None
    except OSError:  # missing or unreadable: recomputed, not refused
        return None
    return str(other) if other is not None and other != fingerprint else None


def _open_shard(path: Path, fingerprint: str | None = None) -> h5py.File:
    """Open a shard read-only, checking it is ours, complete, and of this recipe."""
    fix = "rerun the same `widthkit train ... --resume` to recompute it"
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise WidthkitError(f"shard '{path}' is missing; {fix}") from None
    except OSError as e:
        raise WidthkitError(f"shard '{path}' is corrupt or truncated ({str(e).split('(')[0].strip()}); {fix}") \
            from None
    if f.attrs.get("format") != SHARD_FORMAT:
        f.close()
        raise WidthkitError(f"'{path}' is not a widthkit shard; remove it or point to a widthkit run directory")
    theirs = f.attrs.get("fingerprint")
    if fingerprint is not None and theirs != fingerprint:
        f.close()
        raise different_recipe(path, theirs, fingerprint)
    try:
        for key in ("metrics/step", "logits/values", "members/seed", "targets", "state"):
            f[key]
        f["logits/values"][-1:]  # touch the last chunk: truncation shows here
    except (KeyError, OSError) as e:
        f.close()
        raise WidthkitError(f"shard '{path}' is incomplete or corrupt ({e}); {fix}") from None
    return f


def shard_ok(path: Path, fingerprint: str) -> bool:
    """Whether ``path`` is a complete shard of the recipe with ``fingerprint``."""
    try:
        _open_shard(path, fingerprint).close()
        return True
    except WidthkitError:
        return False


# -------------------------------------------------------------------- index
def read_index(run_dir: Path) -> dict:
    path = Path(run_dir) / "index.json"
    if not Path(run_dir).exists():
        raise WidthkitError(f"run directory '{run_dir}' does not exist; train one with "
                            "`widthkit train RECIPE --out DIR` or pass the right path")
    if not path.is_file():
        raise WidthkitError(f"'{run_dir}' is not a widthkit run (no index.json); pass the --out directory "
                            "of `widthkit train`")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WidthkitError(f"'{path}' is corrupt ({e.__class__.__name__}); rerun `widthkit train RECIPE "
                            f"--out {run_dir} --resume` to rebuild it from the shards") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise WidthkitError(f"'{path}' is not a widthkit run index; pass the --out directory of `widthkit train`")
    if index.get("format_version", 0) > FORMAT_VERSION:
        raise WidthkitError(f"run '{run_dir}' was written by a newer widthkit (format "
                            f"{index['format_version']}); upgrade widthkit to read it")
    return index


def write_index(run_dir: Path, index: dict) -> None:
    atomic_write_text(Path(run_dir) / "index.json", json.dumps(index, indent=1))


# ------------------------------------------------------------------- views
@dataclass(frozen=True)
class _Job:
    id: str
    width: int
    seeds: list[int]
    shard: Path
    done: bool


def _stamp(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime_ns) of a file, or -1s if it is gone: tells a shard replaced on disk."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return -1, -1, -1
    return st.st_ino, st.st_size, st.st_mtime_ns


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # cached and shared between calls: a caller must copy to modify
    return a


@dataclass
class _Width:
    """One width's shards (seed order), validated once: small arrays read at once, outputs on first use."""

    shards: list[Path]
    stamps: list[tuple[int, int, int]]
    metrics: dict[str, np.ndarray]
    logit_steps: np.ndarray
    diverged: np.ndarray
    targets: np.ndarray
    strategy: str                   # JSON of the first shard
    param_table: str                # JSON of the first shard
    logits: np.ndarray | None = None  # [E, S, N, K]


def _read_width(shards: list[Path], stamps: list[tuple[int, int, int]], fingerprint: str) -> _Width:
    parts = []
    for path in shards:
        with _open_shard(path, fingerprint) as f:
            parts.append(({k: f["metrics"][k][()] for k in f["metrics"]}, f["logits/step"][()],
                          f["members/diverged"][()], f["targets"][()], f.attrs["strategy"], f.attrs["param_table"]))
    m0, steps, _, targets, strategy, table = parts[0]
    metrics = {k: _frozen(m0[k]) for k in ("step", "lr")}
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        metrics[k] = _frozen(np.concatenate([p[0][k] for p in parts]))
    return _Width(shards, stamps, metrics, _frozen(steps), _frozen(np.concatenate([p[2] for p in parts])),
                  _frozen(targets), str(strategy), str(table))


class RunPoint:
    """One grid point of a run: its recipe, widths and stored results (what analyses receive).

    A width's shards are validated once and its arrays cached (returned read-only: copy to
    modify); a shard replaced on disk since (another inode, size or mtime) is read again.
    """

    def __init__(self, run: "Run", point: int):
        self._run = run
        self._point = point
        self._entry = run.index["points"][point]
        self._cache: dict[int, _Width] = {}

    # ------------------------------------------------------------ the run
    @property
    def path(self) -> Path:
        return self._run.path

    @property
    def index(self) -> dict:
        return self._run.index

    @property
    def points(self) -> list[str]:
        return self._run.points

    @property
    def versions(self) -> dict:
        return self._run.versions

    @property
    def recipe_text(self) -> str:
        return self._run.recipe_text

    # ------------------------------------------------------------- recipe
    @cached_property
    def recipe(self) -> Recipe:
        return from_dict(self._entry["recipe"])

    @property
    def point_key(self) -> str:
        return self._entry["key"]

    @property
    def loss_name(self) -> str:
        return self.recipe.train.loss

    @property
    def cache_dir(self) -> Path:
        d = self.path / "cache" / f"p{self._point:02d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --------------------------------------------------------------- jobs
    @cached_property
    def _jobs(self) -> list[_Job]:
        return [_Job(k, j["width"], j["seeds"], self.path / j["shard"], j["status"] == "done")
                for k, j in self.index["jobs"].items() if j["point"] == self._point]

    def _width_jobs(self, width: int) -> list[_Job]:
        jobs = sorted((j for j in self._jobs if j.width == width), key=lambda j: j.seeds[0])
        if not jobs:
            raise WidthkitError(f"width {width} is not in run '{self.path}'; widths: {self.all_widths}")
        if not all(j.done for j in jobs):
            raise WidthkitError(f"width {width} of run '{self.path}' is not finished; "
                                "finish it with `widthkit train RECIPE --out RUN --resume`")
        return jobs

    def _width(self, width: int) -> _Width:
        """The cached shards of ``width``, read again if a shard changed on disk."""
        shards = [j.shard for j in self._width_jobs(width)]
        stamps = [_stamp(p) for p in shards]
        cached = self._cache.get(width)
        if cached is None or cached.stamps != stamps:
            cached = self._cache[width] = _read_width(shards, stamps, self._entry["fingerprint"])
        return cached

    @property
    def all_widths(self) -> list[int]:
        return sorted({j.width for j in self._jobs})

    @property
    def widths(self) -> list[int]:
        """Widths whose every job is finished."""
        by = {}
        for j in self._jobs:
            by.setdefault(j.width, []).append(j.done)
        return sorted(w for w, d in by.items() if all(d))

    @property
    def unfinished(self) -> list[int]:
        return [w for w in self.all_widths if w not in self.widths]

    @property
    def seeds(self) -> list[int]:
        return list(self.recipe.train.seeds)

    # ------------------------------------------------------------ results
    def metrics(self, width: int) -> dict[str, np.ndarray]:
        """``step`` [T], ``lr`` [T] and ``train_loss``/``train_acc``/``test_loss``/``test_acc`` [E, T]."""
        return dict(self._width(width).metrics)

    def logit_steps(self, width: int) -> np.ndarray:
        return self._width(width).logit_steps

    def logits(self, width: int, step: int | None = None) -> np.ndarray:
        """Test outputs [E, N, K] at eval ``step`` (default: the final step)."""
        steps = self.logit_steps(width)
        if step is None:
            i = len(steps) - 1
        else:
            hits = np.nonzero(steps == step)[0]
            if not len(hits):
                raise WidthkitError(f"no stored outputs at step {step}; stored steps: {steps.tolist()}")
            i = int(hits[0])
        return self.all_logits(width)[:, i]

    def all_logits(self, width: int) -> np.ndarray:
        """Test outputs at every eval step, [E, S, N, K] (read once per width, then cached)."""
        d = self._width(width)
        if d.logits is None:
            parts = []
            for path in d.shards:
                with h5py.File(path, "r") as f:
                    parts.append(f["logits/values"][()])
            d.logits = _frozen(np.concatenate(parts))
        return d.logits

    def diverged(self, width: int) -> np.ndarray:
        return self._width(width).diverged

    def targets(self) -> np.ndarray:
        if not self.widths:
            raise WidthkitError(f"run '{self.path}' has no finished width yet; finish it with `widthkit train "
                                "RECIPE --out RUN --resume`")
        return self._width(self.widths[0]).targets

    def strategy(self, width: int) -> dict:
        return json.loads(self._width(width).strategy)

    def param_table(self, width: int) -> dict:
        return json.loads(self._width(width).param_table)

    @cached_property
    def _task(self) -> Task:
        return load_recipe_task(self.recipe)

    def task(self) -> Task:
        """The task the ladder was trained on, rebuilt from the recipe (once per view)."""
        return self._task

    def snapshot_steps(self, width: int) -> list[int]:
        """Steps at which members of ``width`` can be loaded: the stored snapshots and the last step."""
        with h5py.File(self._width(width).shards[0], "r") as f:
            return snapshots.stored_steps(f) + [int(self.logit_steps(width)[-1])]

    def member_state(self, width: int, seed: int, step: int | None = None) -> dict[str, torch.Tensor]:
        """Member (width, seed)'s ``state_dict`` after ``step`` updates (default: the end of training)."""
        d = self._width(width)
        if step is not None and step not in (steps := self.snapshot_steps(width)):
            raise WidthkitError(f"no snapshot of width {width} at step {step}; stored steps: {steps} "
                                "(set train.snapshots in the recipe to keep more)")
        for j, path in zip(self._width_jobs(width), d.shards):
            if seed in j.seeds:
                i = j.seeds.index(seed)
                with h5py.File(path, "r") as f:
                    if step is not None and step in snapshots.stored_steps(f):
                        return snapshots.read(f, i, step)
                    return {k: torch.from_numpy(np.asarray(f["state"][k][i])) for k in f["state"]}
        raise WidthkitError(f"seed {seed} is not in run '{self.path}'; seeds: {self.seeds}")

    def load_member(self, width: int, seed: int, step: int | None = None) -> nn.Module:
        """Member (width, seed) as a plain ``nn.Module`` in eval mode, on the CPU, as it was after ``step``
        updates (a step of :meth:`snapshot_steps`; default: the end of training)."""
        state = self.member_state(width, seed, step)
        model = build_architecture(self.recipe, width, self.task())
        model.load_state_dict(state)
        return model.eval()

    def __repr__(self) -> str:
        key = f", point={self.point_key!r}" if len(self.points) > 1 else ""
        return f"RunPoint('{self.path}'{key}, widths={self.widths})"


class Run:
    """A trained width ladder: a run directory, its index and its grid points (read-only).

    ``run.points`` lists the grid points and ``run.select(i_or_key)`` gives the
    :class:`RunPoint` of one.  A single-point run also answers the point's interface
    itself (``run.widths``, ``run.metrics(w)``, ``run.load_member(w, s)``, ...); a sweep
    asks to select a point first.
    """

    path: Path    # the run directory
    index: dict   # its index.json

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.index = read_index(self.path)
        self._views: dict[int, RunPoint] = {}

    @property
    def points(self) -> list[str]:
        return [p["key"] for p in self.index["points"]]

    @property
    def versions(self) -> dict:
        return self.index["versions"]

    @property
    def recipe_text(self) -> str:
        return self.index["recipe_toml"]

    def select(self, point: int | str) -> RunPoint:
        """The view of grid point ``point`` (its index in :attr:`points`, or its key)."""
        keys = self.points
        if isinstance(point, str):
            if point not in keys:
                raise unknown("grid point", point, keys)
            point = keys.index(point)
        if not 0 <= point < len(keys):
            raise WidthkitError(f"grid point {point} out of range; this run has {len(keys)} points")
        if point not in self._views:
            self._views[point] = RunPoint(self, point)
        return self._views[point]

    def _only(self) -> RunPoint:
        """The view of a single-point run; a sweep raises, naming its points."""
        if len(self.points) != 1:
            raise WidthkitError(f"run '{self.path}' has {len(self.points)} grid points; choose one with "
                                f"run.select(...) or --point (points: {', '.join(self.points)})")
        return self.select(0)

    def __repr__(self) -> str:
        if len(self.points) == 1:
            return f"Run('{self.path}', widths={self.select(0).widths})"
        return f"Run('{self.path}', points={len(self.points)})"


def _delegate(name: str):
    """Run.<name>: the same attribute of the only point (a class attribute, so it can be inspected and patched)."""
    attr = vars(RunPoint)[name]
    if isinstance(attr, (property, cached_property)):
        return property(lambda self: getattr(self._only(), name), doc=attr.__doc__)
    return functools.wraps(attr)(lambda self, *args, **kwargs: getattr(self._only(), name)(*args, **kwargs))


for _name in sorted(n for n in vars(RunPoint) if not n.startswith("_") and n not in vars(Run)
                    and n not in Run.__annotations__):
    setattr(Run, _name, _delegate(_name))


def analysable_widths(run) -> list[int]:
    """A run's finished widths, for an analysis: warns naming unfinished ones, fails if none is finished."""
    unfinished = sorted(int(w) for w in (run.unfinished or []))
    if unfinished:
        warn(f"skipping unfinished widths {unfinished}; finish them with 'widthkit train --resume'")
    if not run.widths:
        raise WidthkitError("the run has no finished width; train it first with 'widthkit train RECIPE --out RUN'")
    return sorted(int(w) for w in run.widths)


def open_run(path: str | Path) -> Run:
    """Open a run directory written by ``widthkit train``."""
    return Run(path)


def point_folder(view) -> Path:
    """Where the analyses of one grid point live: the run directory, or ``RUN/points/pNN`` in a sweep."""
    if len(view.points) <= 1:
        return Path(view.path)
    return Path(view.path) / "points" / f"p{view.points.index(view.point_key):02d}"
