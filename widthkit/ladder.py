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

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import build_member, count_params, load_recipe_task, member_params
from .errors import WidthkitError
from .executors import get_executor
from .progress import info, warn
from .recipe import as_recipe_dict, expand_grid, from_dict
from .store import (FORMAT, FORMAT_VERSION, Run, different_recipe, foreign_fingerprint, job_id, now, read_index,
                    shard_ok, versions, write_index, write_shard)
from .tracking import JobInfo, JobLogger
from .trainer import train_members


# ---------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One unit of work: train ``seeds`` at ``width`` for grid point ``point``.

    ``member_params`` (parameters of one member) travels with the job, so executors can
    size it (:attr:`params`) without rebuilding its model.
    """

    id: str
    point: int
    point_key: str
    recipe: dict          # the resolved recipe of this grid point
    width: int
    seeds: list[int]
    run_dir: str
    member_params: int
    strategy: str | None = None

    @property
    def params(self) -> int:
        """Parameters per member times members: the job's size (executors use it to share GPUs)."""
        return self.member_params * len(self.seeds)

    @property
    def shard(self) -> Path:
        return Path(self.run_dir) / "shards" / f"{self.id}.h5"

    @property
    def ckpt(self) -> Path:
        return Path(self.run_dir) / "ckpt" / f"{self.id}.pt"


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
    targets = task.y_test.cpu().numpy()
    tracked = JobInfo(job.id, recipe, job.width, job.seeds, Path(job.run_dir), job.point_key)
    with JobLogger(recipe.train.loggers, tracked, targets) as log:
        results, record, table = train_members(recipe, job.width, job.seeds, task, build_member=build_member,
                                               ckpt_path=job.ckpt, strategy=job.strategy, label=label,
                                               on_eval=log.eval if log.backends else None)
    seconds = time.perf_counter() - t0
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
def plan_jobs(raw: dict, run_dir: Path, seeds_per_job: int | None = None) -> tuple[list[dict], list[Job]]:
    """Expand sweeps and widths into jobs (narrow widths first).

    Loads every grid point's task (for the jobs' sizes), so missing data fails here,
    before anything is written.
    """
    points, jobs = [], []
    for pi, (key, praw) in enumerate(expand_grid(raw)):
        r = from_dict(praw)
        points.append({"key": key, "recipe": r.to_dict(), "fingerprint": r.fingerprint()})
        task = load_recipe_task(r)
        seeds = r.train.seeds
        k = seeds_per_job or len(seeds)
        for w in sorted(r.model.widths):
            size = member_params(r, w, task)
            for i in range(0, len(seeds), k):
                group = seeds[i:i + k]
                jobs.append(Job(job_id(pi, w, group), pi, key, r.to_dict(), w, group, str(run_dir), size))
    jobs.sort(key=lambda j: (j.width, j.point, j.seeds[0]))
    return points, jobs


def train_ladder(recipe, out: str | Path, *, overrides: list[str] | None = None, resume: bool = False,
                 executor=None, strategy: str | None = None, seeds_per_job: int | None = None) -> Run:
    """Train every width (and grid point) of ``recipe`` into the run directory ``out``.

    ``recipe`` is anything :func:`widthkit.recipe.as_recipe_dict` accepts (a :class:`Recipe`,
    a raw dict, TOML text or a path).  ``executor`` is
    ``"local"`` (default), ``"ray"`` or an executor object (see :mod:`widthkit.executors`).
    Returns the :class:`Run`; if jobs failed, the others are kept and a one-line
    :class:`WidthkitError` names the failed ones (rerun with ``resume=True``).
    """
    text, raw = as_recipe_dict(recipe, overrides)
    out = Path(out)
    points, jobs = plan_jobs(raw, out, seeds_per_job)
    if strategy:
        for j in jobs:
            j.strategy = strategy
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

