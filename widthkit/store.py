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
           param_table (JSON), seconds, created, diverged_reason (JSON),
           attrs_sha256 (of the others); every dataset has a fletcher32 checksum
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
a one-line :class:`RunStoreError` that names it and the fix: a shard must be the job the index
and its file name say (:func:`check_identity`), and a checksum that fails on read is corruption.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
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
from .errors import RunStoreError, WidthkitError, unknown
from .progress import warn
from .recipe import Recipe, from_dict

FORMAT = "widthkit-run"
SHARD_FORMAT = "widthkit-shard"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of everything that changes results, recorded in every output (timm's from its metadata: importing
    it, with torchvision, takes seconds that a model without timm need not spend)."""
    from importlib.metadata import version

    return {"widthkit": __version__, "torch": torch.__version__, "timm": version("timm"),
            "numpy": np.__version__, "h5py": h5py.__version__, "python": platform.python_version()}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def job_id(point: int, width: int, seeds: list[int]) -> str:
    return f"p{point:02d}-w{width:05d}-s{seeds[0]}-{seeds[-1]}"


# ------------------------------------------------------------------- shards
def _attrs_digest(f: h5py.File) -> str:
    """SHA-256 of a shard's attributes (all but this one): HDF5 checksums datasets, not attributes."""
    items = sorted((k, str(v)) for k, v in f.attrs.items() if k != "attrs_sha256")
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def write_shard(path: Path, *, job: str, point: int, point_key: str, recipe: Recipe, width: int,
                results, strategy: dict, param_table, targets: np.ndarray, seconds: float) -> None:
    """Write one job's results as an HDF5 shard, atomically.

    Every dataset carries HDF5's fletcher32 checksum and the attributes a SHA-256 (``attrs_sha256``), so
    bytes changed in place fail on read instead of giving wrong numbers.
    """
    def put(group, name, data, **kw):
        group.create_dataset(name, data=data, fletcher32=True, **kw)

    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a["format"], a["format_version"] = SHARD_FORMAT, FORMAT_VERSION
            a["fingerprint"], a["job"], a["point"], a["point_key"] = recipe.fingerprint(), job, point, point_key
            a["width"], a["seeds"] = width, json.dumps(results.seeds)
            a["strategy"], a["recipe"] = json.dumps(strategy), recipe.to_json()
            a["versions"], a["param_table"] = json.dumps(versions()), param_table.to_json(indent=None)
            a["seconds"], a["created"] = seconds, now()
            a["diverged_reason"] = json.dumps(results.diverged_reason)
            m = f.create_group("metrics")
            put(m, "step", np.asarray(results.steps, np.int64))
            put(m, "lr", np.asarray(results.lr, np.float64))
            for name in ("train_loss", "train_acc", "test_loss", "test_acc"):
                put(m, name, np.stack(getattr(results, name), axis=1).astype(np.float64))
            lg = f.create_group("logits")
            put(lg, "step", np.asarray(results.steps, np.int64))
            put(lg, "values", np.stack(results.logits, axis=1), compression="gzip", compression_opts=1, shuffle=True)
            put(f, "targets", targets)
            mem = f.create_group("members")
            put(mem, "seed", np.asarray(results.seeds, np.int64))
            put(mem, "diverged_step", np.asarray(results.diverged_step, np.int64))
            put(mem, "diverged", np.asarray(results.diverged_step) >= 0)
            st = f.create_group("state")
            for k, v in results.state.items():
                put(st, k, v)
            snapshots.write(f, results.snapshot_steps, results.snapshots, recipe.train.snapshot_dtype)
            a["attrs_sha256"] = _attrs_digest(f)


def different_recipe(path: Path, theirs, fingerprint: str) -> RunStoreError:
    """The error for a shard written by another recipe: results are never mixed."""
    return RunStoreError(f"shard '{path}' comes from a different recipe (fingerprint {theirs} != {fingerprint}); "
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
        raise RunStoreError(f"shard '{path}' is missing; {fix}") from None
    except OSError as e:
        raise RunStoreError(f"shard '{path}' is corrupt or truncated ({str(e).split('(')[0].strip()}); {fix}") \
            from None
    if f.attrs.get("format") != SHARD_FORMAT:
        f.close()
        raise RunStoreError(f"'{path}' is not a widthkit shard; remove it or point to a widthkit run directory")
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
        raise RunStoreError(f"shard '{path}' is incomplete or corrupt ({e}); {fix}") from None
    return f


def check_identity(f: h5py.File, path: Path, expect: dict | None) -> None:
    """Raise :class:`RunStoreError` unless the open shard ``f`` is intact and is the job ``expect``.

    ``expect`` is the job's index record (``point``, ``width``, ``seeds``; its name gives the job id),
    or None to check the attributes' checksum and the member axis only.  A shard copied under another
    job's name (a width-16 shard as width 64) or with edited attributes is refused, never read as another job.
    """
    fix = "rerun the same `widthkit train ... --resume` to recompute it"
    stored = f.attrs.get("attrs_sha256")
    if stored is not None and stored != _attrs_digest(f):
        raise RunStoreError(f"shard '{path}' has corrupt attributes (checksum mismatch); {fix}")
    try:
        seeds = json.loads(f.attrs["seeds"])
        have = {"job": str(f.attrs["job"]), "point": int(f.attrs["point"]), "width": int(f.attrs["width"]),
                "seeds": seeds}
    except (KeyError, ValueError, TypeError) as e:
        raise RunStoreError(f"shard '{path}' has unreadable attributes ({e}); {fix}") from None
    n = len(seeds)
    shapes = {"members/seed": f["members/seed"].shape[:1], "members/diverged": f["members/diverged"].shape[:1],
              "metrics/test_loss": f["metrics/test_loss"].shape[:1], "logits/values": f["logits/values"].shape[:1]}
    bad = [k for k, v in shapes.items() if v != (n,)]
    if bad:
        raise RunStoreError(f"shard '{path}' is inconsistent ({bad[0]} does not have its {n} members); {fix}")
    if expect is None:
        return
    want = {"job": Path(path).stem, "point": int(expect["point"]), "width": int(expect["width"]),
            "seeds": list(expect["seeds"])}
    diff = [f"{k} {have[k]} (expected {want[k]})" for k in want if have[k] != want[k]]
    if diff:
        raise RunStoreError(f"shard '{path}' is not the shard of its job: it holds {', '.join(diff)}; {fix}")


def _read_all(f: h5py.File) -> None:
    """Read every dataset of ``f`` (each chunk's fletcher32 checksum is verified on read)."""
    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset):
            obj[()]
    f.visititems(visit)


def shard_problem(path: Path, fingerprint: str, expect: dict) -> str | None:
    """None if ``path`` is the complete, intact shard of job ``expect`` of the recipe ``fingerprint``,
    else a clause saying what is wrong with it (every dataset is read, so checksums are verified)."""
    try:
        with _open_shard(path, fingerprint) as f:
            check_identity(f, path, expect)
            _read_all(f)
    except WidthkitError as e:
        return str(e).split("; ")[0]
    except OSError as e:  # a checksum or decompression error in a dataset
        return f"shard '{path}' is corrupt ({str(e).split('(')[0].strip()})"
    return None


# -------------------------------------------------------------------- index
class DamagedIndexError(RunStoreError):
    """``index.json`` is unreadable or malformed; ``train_ladder(..., resume=True)`` rebuilds it from the shards."""


def read_index(run_dir: Path) -> dict:
    path = Path(run_dir) / "index.json"
    if not Path(run_dir).exists():
        raise RunStoreError(f"run directory '{run_dir}' does not exist; train one with "
                            "`widthkit train RECIPE --out DIR` or pass the right path")
    if not path.is_file():
        raise RunStoreError(f"'{run_dir}' is not a widthkit run (no index.json); pass the --out directory "
                            "of `widthkit train`")
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedIndexError(f"'{path}' is corrupt ({e.__class__.__name__}); rerun `widthkit train RECIPE "
                            f"--out {run_dir} --resume` to rebuild it from the shards") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise RunStoreError(f"'{path}' is not a widthkit run index; pass the --out directory of `widthkit train`")
    if not isinstance(index.get("format_version", 0), int) or index.get("format_version", 0) > FORMAT_VERSION:
        raise RunStoreError(f"run '{run_dir}' was written by a newer widthkit (format "
                            f"{index['format_version']}); upgrade widthkit to read it")
    problem = _index_problem(index)
    if problem:
        raise DamagedIndexError(f"'{path}' is damaged ({problem}); rerun `widthkit train RECIPE --out {run_dir} "
                            "--resume` to rebuild it from the shards")
    return index


_INDEX_FIELDS = {"points": {"key": str, "recipe": dict, "fingerprint": str},
                 "jobs": {"point": int, "width": int, "seeds": list, "shard": str, "status": str}}


def _index_problem(index: dict) -> str:
    """What is wrong with the shape of a run index ('' if nothing): points a list, jobs a mapping, each entry
    with its fields of the right types, jobs pointing at existing points and at files under ``shards/``."""
    points, jobs = index.get("points"), index.get("jobs")
    if not isinstance(points, list) or not points:
        return "'points' is not a non-empty list"
    if not isinstance(jobs, dict):
        return "'jobs' is not a mapping"
    for where, entries in (("points", enumerate(points)), ("jobs", jobs.items())):
        for k, e in entries:
            if not isinstance(e, dict):
                return f"{where}[{k!r}] is not a mapping"
            for field_, tp in _INDEX_FIELDS[where].items():
                if not isinstance(e.get(field_), tp) or isinstance(e.get(field_), bool):
                    return f"{where}[{k!r}].{field_} is missing or not {tp.__name__}"
    for k, j in jobs.items():
        if not 0 <= j["point"] < len(points):
            return f"jobs[{k!r}].point {j['point']} is not a grid point"
        parts = Path(j["shard"]).parts
        if parts[:1] != ("shards",) or ".." in parts:  # also refuses absolute paths
            return f"jobs[{k!r}].shard '{j['shard']}' is not a file under shards/"
    return ""


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
    diverged_reason: list[str]      # per member: "" (did not diverge), "nan", "loss-bound" or "chance"
    logits: np.ndarray | None = None  # [E, S, N, K]


@contextlib.contextmanager
def _reading(path: Path):
    """Turn a failed read of a shard's data (a fletcher32 checksum, a damaged chunk) into a RunStoreError."""
    try:
        yield
    except OSError as e:
        if isinstance(e, WidthkitError):
            raise
        raise RunStoreError(f"shard '{path}' is corrupt ({str(e).split('(')[0].strip()}); rerun the same "
                            "`widthkit train ... --resume` to recompute it") from None


def _read_width(shards: list[Path], stamps: list[tuple[int, int, int]], fingerprint: str,
                records: list[dict]) -> _Width:
    parts = []
    for path, rec in zip(shards, records):
        with _reading(path), _open_shard(path, fingerprint) as f:
            check_identity(f, path, rec)
            parts.append(({k: f["metrics"][k][()] for k in f["metrics"]}, f["logits/step"][()],
                          f["members/diverged"][()], f["targets"][()], f.attrs["strategy"], f.attrs["param_table"],
                          json.loads(f.attrs.get("diverged_reason", "null")) or [""] * len(rec["seeds"])))
    m0, steps, _, targets, strategy, table, _ = parts[0]
    metrics = {k: _frozen(m0[k]) for k in ("step", "lr")}
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        metrics[k] = _frozen(np.concatenate([p[0][k] for p in parts]))
    return _Width(shards, stamps, metrics, _frozen(steps), _frozen(np.concatenate([p[2] for p in parts])),
                  _frozen(targets), str(strategy), str(table), [r for p in parts for r in p[6]])


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

    def _record(self, job: _Job) -> dict:
        return self.index["jobs"][job.id]

    def _width_jobs(self, width: int) -> list[_Job]:
        jobs = sorted((j for j in self._jobs if j.width == width), key=lambda j: j.seeds[0])
        if not jobs:
            raise WidthkitError(f"width {width} is not in run '{self.path}'; widths: {self.all_widths}")
        if not all(j.done for j in jobs):
            raise RunStoreError(f"width {width} of run '{self.path}' is not finished; "
                                "finish it with `widthkit train RECIPE --out RUN --resume`")
        return jobs

    def _width(self, width: int) -> _Width:
        """The cached shards of ``width``, read again if a shard changed on disk."""
        jobs = self._width_jobs(width)
        shards = [j.shard for j in jobs]
        stamps = [_stamp(p) for p in shards]
        cached = self._cache.get(width)
        if cached is None or cached.stamps != stamps:
            cached = self._cache[width] = _read_width(shards, stamps, self._entry["fingerprint"],
                                                      [self._record(j) for j in jobs])
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
                with _reading(path), h5py.File(path, "r") as f:
                    parts.append(f["logits/values"][()])
            d.logits = _frozen(np.concatenate(parts))
        return d.logits

    def diverged(self, width: int) -> np.ndarray:
        """[E] bool: members that diverged (NaN/inf loss, loss above the bound, or stuck at chance)."""
        return self._width(width).diverged

    def trained_seeds(self, width: int) -> list[int]:
        """Seeds of ``width`` whose member did not diverge: the members analyses may use."""
        return [s for s, d in zip(self.seeds, np.asarray(self.diverged(width), bool).reshape(-1)) if not d]

    def diverged_reason(self, width: int) -> list[str]:
        """Per member: why it is marked diverged ("nan", "loss-bound", "chance"), or "" if it is not."""
        return list(self._width(width).diverged_reason)

    def targets(self) -> np.ndarray:
        if not self.widths:
            raise WidthkitError(f"run '{self.path}' has no finished width yet; finish it with `widthkit train "
                                "RECIPE --out RUN --resume`")
        for w in self.widths[:-1]:  # the first readable width (the same targets in every shard)
            try:
                return self._width(w).targets
            except RunStoreError:
                continue
        return self._width(self.widths[-1]).targets

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
                with _reading(path), h5py.File(path, "r") as f:
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
    """A run's finished widths that can be read, for an analysis, with a warning naming each one left out
    (unfinished widths, widths with an unreadable shard).  Fails if no width is left.  Diverged members
    (a fully diverged width too) are left to the analysis, which records them as skipped."""
    unfinished = sorted(int(w) for w in (run.unfinished or []))
    if unfinished:
        warn(f"skipping unfinished widths {unfinished}; finish them with 'widthkit train --resume'")
    if not run.widths:
        raise RunStoreError("the run has no finished width; train it first with 'widthkit train RECIPE --out RUN'")
    keep = []
    for w in sorted(int(w) for w in run.widths):
        try:
            run.diverged(w)
        except RunStoreError as e:
            warn(f"skipping width {w}: {e}")
            continue
        keep.append(w)
    if not keep:
        raise RunStoreError("no finished width of the run can be read; recompute its shards with "
                            "'widthkit train RECIPE --out RUN --resume'")
    return keep


def open_run(path: str | Path) -> Run:
    """Open a run directory written by ``widthkit train``."""
    return Run(path)


def point_folder(view) -> Path:
    """Where the analyses of one grid point live: the run directory, or ``RUN/points/pNN`` in a sweep."""
    if len(view.points) <= 1:
        return Path(view.path)
    return Path(view.path) / "points" / f"p{view.points.index(view.point_key):02d}"
