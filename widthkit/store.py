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

``open_run(path)`` returns a :class:`Run`; a foreign or corrupt file raises a
one-line :class:`WidthkitError` that names it and the fix.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from .atomic import atomic_path, atomic_write_text
from .errors import WidthkitError
from .recipe import Recipe, from_dict

FORMAT = "widthkit-run"
SHARD_FORMAT = "widthkit-shard"
FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of everything that changes results, recorded in every output."""
    import timm

    from . import __version__
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


# ---------------------------------------------------------------------- Run
@dataclass
class _Job:
    id: str
    point: int
    width: int
    seeds: list[int]
    shard: Path
    done: bool


class Run:
    """A trained width ladder (read-only view of a run directory).

    For a recipe with sweeps, ``run.points`` lists the grid points and
    ``run.select(i_or_key)`` gives the view of one; a single-point run is its own view.
    """

    def __init__(self, path: str | Path, point: int | None = None):
        self.path = Path(path)
        self.index = read_index(self.path)
        self._point = point
        if point is None and len(self.index["points"]) == 1:
            self._point = 0

    # --------------------------------------------------------------- grid
    @property
    def points(self) -> list[str]:
        return [p["key"] for p in self.index["points"]]

    def select(self, point: int | str) -> "Run":
        keys = self.points
        if isinstance(point, str):
            if point not in keys:
                from .errors import unknown
                raise unknown("grid point", point, keys)
            point = keys.index(point)
        if not 0 <= point < len(keys):
            raise WidthkitError(f"grid point {point} out of range; this run has {len(keys)} points")
        return Run(self.path, point)

    def _pt(self) -> int:
        if self._point is None:
            raise WidthkitError(f"run '{self.path}' has {len(self.points)} grid points; choose one with "
                                f"run.select(...) or --point (points: {', '.join(self.points)})")
        return self._point

    # ------------------------------------------------------------- recipe
    @cached_property
    def recipe(self) -> Recipe:
        return from_dict(self.index["points"][self._pt()]["recipe"])

    @property
    def recipe_text(self) -> str:
        return self.index["recipe_toml"]

    @property
    def point_key(self) -> str:
        return self.index["points"][self._pt()]["key"]

    @property
    def versions(self) -> dict:
        return self.index["versions"]

    @property
    def loss_name(self) -> str:
        return self.recipe.train.loss

    @property
    def cache_dir(self) -> Path:
        d = self.path / "cache" / f"p{self._pt():02d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # --------------------------------------------------------------- jobs
    def _jobs(self) -> list[_Job]:
        p = self._pt()
        return [_Job(k, j["point"], j["width"], j["seeds"], self.path / j["shard"], j["status"] == "done")
                for k, j in self.index["jobs"].items() if j["point"] == p]

    def _width_jobs(self, width: int) -> list[_Job]:
        jobs = sorted((j for j in self._jobs() if j.width == width), key=lambda j: j.seeds[0])
        if not jobs:
            raise WidthkitError(f"width {width} is not in run '{self.path}'; widths: {self.all_widths}")
        if not all(j.done for j in jobs):
            raise WidthkitError(f"width {width} of run '{self.path}' is not finished; "
                                "finish it with `widthkit train RECIPE --out RUN --resume`")
        return jobs

    @property
    def all_widths(self) -> list[int]:
        return sorted({j.width for j in self._jobs()})

    @property
    def widths(self) -> list[int]:
        """Widths whose every job is finished."""
        by = {}
        for j in self._jobs():
            by.setdefault(j.width, []).append(j.done)
        return sorted(w for w, d in by.items() if all(d))

    @property
    def unfinished(self) -> list[int]:
        return [w for w in self.all_widths if w not in self.widths]

    @property
    def seeds(self) -> list[int]:
        return list(self.recipe.train.seeds)

    def _read(self, width: int, fn):
        parts = []
        for j in self._width_jobs(width):
            with _open_shard(j.shard, self.index["points"][self._pt()]["fingerprint"]) as f:
                parts.append(fn(f))
        return parts

    # ------------------------------------------------------------ results
    def metrics(self, width: int) -> dict[str, np.ndarray]:
        """``step`` [T], ``lr`` [T] and ``train_loss``/``train_acc``/``test_loss``/``test_acc`` [E, T]."""
        parts = self._read(width, lambda f: {k: f["metrics"][k][()] for k in f["metrics"]})
        out = {k: parts[0][k] for k in ("step", "lr")}
        for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
            out[k] = np.concatenate([p[k] for p in parts])
        return out

    def logit_steps(self, width: int) -> np.ndarray:
        return self._read(width, lambda f: f["logits/step"][()])[0]

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
        return np.concatenate(self._read(width, lambda f: f["logits/values"][:, i]))

    def all_logits(self, width: int) -> np.ndarray:
        """Test outputs at every eval step, [E, S, N, K]."""
        return np.concatenate(self._read(width, lambda f: f["logits/values"][()]))

    def diverged(self, width: int) -> np.ndarray:
        return np.concatenate(self._read(width, lambda f: f["members/diverged"][()]))

    def targets(self) -> np.ndarray:
        return self._read(self.widths[0], lambda f: f["targets"][()])[0] if self.widths else \
            self._no_widths()

    def _no_widths(self):
        raise WidthkitError(f"run '{self.path}' has no finished width yet; finish it with `widthkit train "
                            "RECIPE --out RUN --resume`")

    def strategy(self, width: int) -> dict:
        return self._read(width, lambda f: json.loads(f.attrs["strategy"]))[0]

    def param_table(self, width: int) -> dict:
        return self._read(width, lambda f: json.loads(f.attrs["param_table"]))[0]

    def task(self):
        """The task the ladder was trained on, rebuilt from the recipe."""
        from .ladder import load_recipe_task
        return load_recipe_task(self.recipe)

    def member_state(self, width: int, seed: int) -> dict[str, torch.Tensor]:
        for j in self._width_jobs(width):
            if seed in j.seeds:
                i = j.seeds.index(seed)
                with _open_shard(j.shard) as f:
                    return {k: torch.from_numpy(np.asarray(f["state"][k][i])) for k in f["state"]}
        raise WidthkitError(f"seed {seed} is not in run '{self.path}'; seeds: {self.seeds}")

    def load_member(self, width: int, seed: int) -> nn.Module:
        """Member (width, seed) as a plain ``nn.Module`` in eval mode, on the CPU."""
        from .ladder import build_architecture
        state = self.member_state(width, seed)
        model = build_architecture(self.recipe, width, self.task())
        model.load_state_dict(state)
        return model.eval()

    def __repr__(self) -> str:
        pts = f", points={len(self.points)}" if len(self.points) > 1 else ""
        return f"Run('{self.path}', widths={self.widths if self._point is not None else '?'}{pts})"


def analysable_widths(run) -> list[int]:
    """A run's finished widths, for an analysis: warns naming unfinished ones, fails if none is finished."""
    from .progress import warn
    unfinished = sorted(int(w) for w in (run.unfinished or []))
    if unfinished:
        warn(f"skipping unfinished widths {unfinished}; finish them with 'widthkit train --resume'")
    if not run.widths:
        raise WidthkitError("the run has no finished width; train it first with 'widthkit train RECIPE --out RUN'")
    return sorted(int(w) for w in run.widths)


def open_run(path: str | Path) -> Run:
    """Open a run directory written by ``widthkit train``."""
    return Run(path)
