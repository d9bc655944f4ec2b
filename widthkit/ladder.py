"""Width ladders: expand a recipe into jobs, run them on an executor, keep the index.

A job is one (grid point, width, group of seeds).  Workers train a job and write its
shard atomically; the driver alone writes ``index.json``, so HDF5 files never have
two writers.  Rerunning with ``resume=True`` keeps every finished shard (also those a
worker wrote after the driver died), recomputes missing or corrupt ones, and resumes
unfinished jobs from their checkpoints in ``RUN/ckpt``.  A job that fails is marked
``failed`` in the index with its error; the others go on, and the driver then raises
one :class:`WidthkitError` naming every failed job.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Task, load_task
from .errors import WidthkitError
from .models import create_model
from .param import ParamTable, mup_architecture, parameterize
from .progress import info, warn
from .recipe import Recipe, apply_overrides, expand_grid, from_dict, read_recipe_file
from .store import (FORMAT, FORMAT_VERSION, Run, different_recipe, foreign_fingerprint, job_id, now, read_index,
                    shard_ok, versions, write_index, write_shard)
from .trainer import derive_seed, train_members


# ------------------------------------------------------------ model building
def load_recipe_task(recipe: Recipe) -> Task:
    """The task a recipe trains on."""
    return load_task(recipe.data.task, root=recipe.data.root, online=recipe.data.online, **recipe.data.options)


def _model_kwargs(recipe: Recipe, task: Task) -> dict:
    return dict(in_shape=tuple(task.in_shape), num_classes=task.num_classes, **recipe.model.kwargs)


def build_architecture(recipe: Recipe, width: int, task: Task) -> nn.Module:
    """The recipe's model at ``width`` with its parameterization's architecture changes
    (muP's 1/d attention) but default weights: the shell that stored weights load into."""
    model = create_model(recipe.model.family, width=width, **_model_kwargs(recipe, task))
    return mup_architecture(model) if recipe.param.kind == "mup" else model


@lru_cache(maxsize=8)
def _shape_models(family: str, kwargs_json: str, base_width: int) -> tuple[nn.Module, nn.Module]:
    """The architecture at the base width and at twice it, on the meta device (for muP)."""
    kw = json.loads(kwargs_json)
    kw["in_shape"] = tuple(kw["in_shape"])
    with torch.device("meta"):
        return (create_model(family, width=base_width, **kw), create_model(family, width=2 * base_width, **kw))


def build_member(recipe: Recipe, width: int, seed: int, task: Task) -> tuple[nn.Module, ParamTable]:
    """One initialized member: the model at ``width`` for member ``seed``, and its param table.

    The init depends only on (recipe seed, member seed, width), so a member is the same
    whether it is trained alone, in a chunk or in the full ensemble.
    """
    kw = _model_kwargs(recipe, task)
    init_seed = derive_seed(recipe.seed, seed, "init", width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = create_model(recipe.model.family, width=width, **kw)
    base = delta = None
    if recipe.param.kind == "mup":
        base, delta = _shape_models(recipe.model.family, json.dumps(kw, sort_keys=True), recipe.base_width)
    table = parameterize(model, kind=recipe.param.kind, width=width, base_width=recipe.base_width,
                         base_model=base, delta_model=delta, optimizer=recipe.optim.name, gain=recipe.param.gain,
                         activation=kw.get("activation"), output_mult=recipe.param.output_mult,
                         readout_zero=recipe.param.readout_zero,
                         generator=torch.Generator().manual_seed(init_seed))
    return model, table


def count_params(table: dict | ParamTable) -> int:
    rules = table["rules"] if isinstance(table, dict) else [r.__dict__ for r in table.rules]
    return int(sum(np.prod(r["shape"]) for r in rules))


# ---------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One unit of work: train ``seeds`` at ``width`` for grid point ``point``."""

    id: str
    point: int
    point_key: str
    recipe: dict          # the resolved recipe of this grid point
    width: int
    seeds: list[int]
    run_dir: str
    strategy: str | None = None

    @property
    def shard(self) -> Path:
        return Path(self.run_dir) / "shards" / f"{self.id}.h5"

    @property
    def ckpt(self) -> Path:
        return Path(self.run_dir) / "ckpt" / f"{self.id}.pt"


def job_params(job: Job) -> int:
    """Parameters per member times members: a job's size (executors use it to share GPUs)."""
    recipe = from_dict(job.recipe)
    task = load_recipe_task(recipe)
    with torch.device("meta"):
        model = create_model(recipe.model.family, width=job.width, **_model_kwargs(recipe, task))
    return sum(p.numel() for p in model.parameters()) * len(job.seeds)


def checkpoint_progress(path: Path) -> dict | None:
    """Where a job's checkpoint left off: ``{"members_done", "step"}``, or None without one.

    An unreadable checkpoint (a disk fault; writes are atomic) is removed with a
    warning, so the job restarts from step 0 instead of failing on every attempt.
    """
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, weights_only=False, map_location="cpu", mmap=True)
        cur = ckpt["current"]
        return {"members_done": sum(len(r.seeds) for r in ckpt["done"]), "step": int(cur["step"]) if cur else 0}
    except Exception as e:  # noqa: BLE001 - any unpickling error means the same thing here
        warn(f"checkpoint '{path}' is unreadable ({type(e).__name__}); restarting its job from step 0")
        path.unlink(missing_ok=True)
        return None


def run_job(job: Job) -> dict:
    """Train one job and write its shard (runs in a worker); returns its index record.

    A job whose worker died resumes from its checkpoint; the record's ``resumed_from``
    says from where.
    """
    recipe = from_dict(job.recipe)
    task = load_recipe_task(recipe)
    t0 = time.perf_counter()
    job.ckpt.parent.mkdir(parents=True, exist_ok=True)
    resumed = checkpoint_progress(job.ckpt)
    label = f"width {job.width}" + (f" [{job.point_key}]" if job.point_key else "")
    results, record, table = train_members(recipe, job.width, job.seeds, task, build_member=build_member,
                                           ckpt_path=job.ckpt, strategy=job.strategy, label=label)
    seconds = time.perf_counter() - t0
    targets = task.y_test.cpu().numpy()
    write_shard(job.shard, job=job.id, point=job.point, point_key=job.point_key, recipe=recipe, width=job.width,
                results=results, strategy=record, param_table=table, targets=targets, seconds=seconds)
    job.ckpt.unlink(missing_ok=True)
    n_div = int((results.diverged_step >= 0).sum())
    if n_div:
        warn(f"width {job.width}: {n_div} of {len(job.seeds)} members diverged (NaN/inf loss); "
             "they are marked diverged in the store")
    out = {"status": "done", "seconds": round(seconds, 3), "strategy": record, "params": count_params(table),
           "diverged": n_div}
    if resumed is not None:
        out["resumed_from"] = resumed
    return out


# -------------------------------------------------------------------- driver
def raw_recipe(recipe) -> tuple[str, dict]:
    """(TOML text or "", raw dict) of a recipe given as a TOML path, a raw dict or a :class:`Recipe`."""
    if isinstance(recipe, Recipe):
        return "", recipe.to_dict()
    if isinstance(recipe, dict):
        return "", recipe
    return read_recipe_file(recipe)


def plan_jobs(raw: dict, run_dir: Path, seeds_per_job: int | None = None) -> tuple[list[dict], list[Job]]:
    """Expand sweeps and widths into jobs (narrow widths first)."""
    points, jobs = [], []
    for pi, (key, praw) in enumerate(expand_grid(raw)):
        r = from_dict(praw)
        points.append({"key": key, "recipe": r.to_dict(), "fingerprint": r.fingerprint()})
        seeds = r.train.seeds
        k = seeds_per_job or len(seeds)
        for w in sorted(r.model.widths):
            for i in range(0, len(seeds), k):
                group = seeds[i:i + k]
                jobs.append(Job(job_id(pi, w, group), pi, key, r.to_dict(), w, group, str(run_dir)))
    jobs.sort(key=lambda j: (j.width, j.point, j.seeds[0]))
    return points, jobs


def train_ladder(recipe, out: str | Path, *, overrides: list[str] | None = None, resume: bool = False,
                 executor=None, strategy: str | None = None, seeds_per_job: int | None = None) -> Run:
    """Train every width (and grid point) of ``recipe`` into the run directory ``out``.

    ``recipe`` is a TOML path, a raw dict or a :class:`Recipe`.  ``executor`` is
    ``"local"`` (default), ``"ray"`` or an executor object (see :mod:`widthkit.executors`).
    Returns the :class:`Run`; if jobs failed, the others are kept and a one-line
    :class:`WidthkitError` names the failed ones (rerun with ``resume=True``).
    """
    from .executors import get_executor
    text, raw = raw_recipe(recipe)
    raw = apply_overrides(raw, overrides)
    out = Path(out)
    points, jobs = plan_jobs(raw, out, seeds_per_job)
    if strategy:
        for j in jobs:
            j.strategy = strategy
    for p in points:  # fail on missing data before anything is written
        load_recipe_task(from_dict(p["recipe"]))
    index_path = out / "index.json"
    if index_path.exists() and not resume:
        raise WidthkitError(f"run directory '{out}' already holds a run; add --resume to continue it, "
                            "or choose another --out")
    if index_path.exists():
        index = read_index(out)
        old = [p["fingerprint"] for p in index["points"]]
        if old != [p["fingerprint"] for p in points]:
            raise WidthkitError(f"run directory '{out}' holds a run of a different recipe; refusing to mix "
                                "results: use the same recipe and --set values, or another --out")
    else:
        index = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": raw.get("name", "ladder"),
                 "created": now(), "versions": versions(), "recipe_toml": text, "overrides": overrides or [],
                 "points": points, "jobs": {}}
        out.mkdir(parents=True, exist_ok=True)
        if text:
            (out / "recipe.toml").write_text(text)
    for j in jobs:
        index["jobs"].setdefault(j.id, {"point": j.point, "width": j.width, "seeds": j.seeds,
                                        "shard": str(j.shard.relative_to(out)), "status": "pending"})
    pending = []
    for j in jobs:
        rec = index["jobs"][j.id]
        fp = points[j.point]["fingerprint"]
        if j.shard.exists() and shard_ok(j.shard, fp):
            if rec["status"] != "done":
                rec["status"] = "done"  # the worker finished; the driver died before recording it
            continue
        other = foreign_fingerprint(j.shard, fp)
        if other:
            raise different_recipe(j.shard, other, fp)
        if rec["status"] == "done" or j.shard.exists():
            warn(f"shard '{j.shard}' is missing or corrupt; recomputing it")
            j.shard.unlink(missing_ok=True)
        for stale in ("error", "traceback", "resumed_from"):
            rec.pop(stale, None)
        rec["status"] = "pending"
        pending.append(j)
    index["updated"] = now()
    write_index(out, index)
    if not pending:
        info(f"all {len(jobs)} jobs of '{out}' are finished; nothing to train")
        return Run(out)

    def on_done(job: Job, record: dict) -> None:
        index["jobs"][job.id].update(record)
        index["updated"] = now()
        write_index(out, index)

    get_executor(executor).run(pending, run_job, on_done)
    failed = [j.id for j in pending if index["jobs"][j.id]["status"] == "failed"]
    if failed:
        raise WidthkitError(failure_summary(index, failed, len(jobs), out))
    if all(rec["status"] == "done" for rec in index["jobs"].values()):
        shutil.rmtree(out / "ckpt", ignore_errors=True)
    return Run(out)


def failure_summary(index: dict, failed: list[str], n_jobs: int, out: Path) -> str:
    """One line naming every failed job and its error, and how to continue."""
    errors = "; ".join(f"{k}: {index['jobs'][k].get('error', '?')}" for k in failed)
    return (f"{len(failed)} of {n_jobs} jobs failed ({errors}); finished jobs are saved in '{out}' "
            f"(tracebacks in its index.json). Fix the cause and rerun the same command with --resume")

