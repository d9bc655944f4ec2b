"""Width ladders: expand a recipe into jobs, run them on an executor, keep the index.

A job is one (grid point, width, group of seeds).  Workers train a job and write its
shard atomically; the driver alone writes ``index.json``, so HDF5 files never have
two writers.  Rerunning with ``resume=True`` keeps every finished shard (also those a
worker wrote after the driver died), recomputes missing or corrupt ones, and resumes
unfinished jobs from their checkpoints in ``RUN/ckpt``.  A job that fails is marked
``failed`` in the index with its error; the others go on, and the driver then raises
one :class:`JobsFailedError` naming every failed job.  The run directory is claimed and locked first
(:mod:`widthkit.rundir`), and every shard is checked against its job before it counts as finished.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .build import build_member, count_params, load_recipe_task, member_params
from .engine import PER_MEMBER_OPTIM
from .errors import JobsFailedError, RecipeError, RunStoreError
from .executors import get_executor
from .progress import info, warn
from .recipe import as_recipe_dict, check_strategy, expand_grid, from_dict
from .rundir import claim_run_dir, run_lock
from .store import (FORMAT, FORMAT_VERSION, DamagedIndexError, Run, different_recipe, foreign_fingerprint, job_id,
                    now, read_index, shard_problem, versions, write_index, write_shard)
from .tracking import JobInfo, JobLogger
from .trainer import check_fits, check_recipe_task, load_checkpoint, train_points

# recipe keys whose grid points train packed into one group (seeds x values): the optimizer keys the
# engine takes per member, and the init/output scales each member is built with
PACKABLE = tuple(f"optim.{k}" for k in PER_MEMBER_OPTIM) + ("param.output_mult", "param.gain")


# ---------------------------------------------------------------------- jobs
@dataclass
class Job:
    """One unit of work: train ``seeds`` at ``width`` for grid point ``point``.

    ``member_params`` (parameters of one member) travels with the job, so executors can
    size it (:attr:`params`) without rebuilding its model.  ``packed`` holds further grid
    points (each a job of its own in the index, with its own shard) that differ from this
    one only in :data:`PACKABLE` keys and train in the same stacked group.
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
    pack: str = ""        # grid points with the same pack key, width and seeds can be packed
    packed: list["Job"] = field(default_factory=list)

    @property
    def parts(self) -> list["Job"]:
        """The grid-point jobs this job trains: itself, then the packed ones."""
        return [self, *self.packed]

    @property
    def params(self) -> int:
        """Parameters per member times members: the job's size (executors use it to share GPUs)."""
        return self.member_params * len(self.seeds) * len(self.parts)

    @property
    def shard(self) -> Path:
        return Path(self.run_dir) / "shards" / f"{self.id}.h5"

    @property
    def ckpt(self) -> Path:
        """Its checkpoint; a packed job's name says which points it packs (a resume may pack fewer)."""
        if not self.packed:
            return Path(self.run_dir) / "ckpt" / f"{self.id}.pt"
        digest = hashlib.sha256(" ".join(j.id for j in self.parts).encode()).hexdigest()[:8]
        return Path(self.run_dir) / "ckpt" / f"{self.id}-pack{len(self.parts)}-{digest}.pt"


def checkpoint_progress(path: Path) -> dict | None:
    """Where a job's checkpoint left off: ``{"members_done", "step"}``, or None without a usable one
    (see :func:`widthkit.trainer.load_checkpoint`: never unpickles code, moves a bad file aside)."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return None
    cur = ckpt["current"]
    return {"members_done": sum(len(r["seeds"]) for r in ckpt["done"]), "step": int(cur["step"]) if cur else 0}


def run_job(job: Job) -> dict:
    """Train one job and write its shard (runs in a worker); returns its index record.

    A job whose worker died resumes from its checkpoint; the record's ``resumed_from``
    says from where.
    """
    recipes = [from_dict(j.recipe) for j in job.parts]
    task = load_recipe_task(recipes[0])
    t0 = time.perf_counter()
    job.ckpt.parent.mkdir(parents=True, exist_ok=True)
    resumed = checkpoint_progress(job.ckpt)
    label = f"width {job.width}" + (f" [{job.point_key}]" if job.point_key and not job.packed else
                                    f" [{len(job.parts)} grid points packed]" if job.packed else "")
    targets = task.y_test.cpu().numpy()
    tracked = JobInfo(job.id, recipes[0], job.width, job.seeds, Path(job.run_dir), job.point_key)
    with JobLogger(recipes[0].train.loggers, tracked, targets) as log:  # live tracking: never packed (plan_jobs)
        results, record, tables = train_points(recipes, job.width, job.seeds, task, build_member=build_member,
                                               ckpt_path=job.ckpt, strategy=job.strategy, label=label,
                                               on_eval=log.eval if log.backends else None)
    seconds = time.perf_counter() - t0
    n_div, reasons = 0, set()
    for part, recipe, res, table in zip(job.parts, recipes, results, tables):
        write_shard(part.shard, job=part.id, point=part.point, point_key=part.point_key, recipe=recipe,
                    width=job.width, results=res, strategy=record, param_table=table, targets=targets,
                    seconds=seconds)
        n_div += int((res.diverged_step >= 0).sum())
        reasons |= {r for r in res.diverged_reason if r}
    job.ckpt.unlink(missing_ok=True)
    if n_div:
        warn(f"width {job.width}: {n_div} of {len(job.seeds) * len(job.parts)} members diverged "
             f"({', '.join(sorted(reasons))}); "
             "they are marked diverged in the store")
    out = {"status": "done", "seconds": round(seconds, 3), "strategy": record, "params": count_params(tables[0]),
           "diverged": n_div}
    if job.packed:
        out["packed"] = [j.id for j in job.parts]
    if resumed is not None:
        out["resumed_from"] = resumed
    return out


# -------------------------------------------------------------------- driver
def pack_key(recipe_dict: dict) -> str:
    """What a grid point's training shares with the points it can be packed with: all but :data:`PACKABLE`."""
    d = json.loads(json.dumps(recipe_dict))
    for key in PACKABLE:
        sec, name = key.split(".")
        d[sec].pop(name, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def pack_jobs(jobs: list[Job]) -> list[Job]:
    """Group jobs of grid points that differ only in :data:`PACKABLE` keys (same width and seeds) into one
    job each, the first carrying the others in ``packed``; order is kept (by each group's first job)."""
    groups: dict[tuple, Job] = {}
    for j in jobs:
        key = (j.pack, j.width, tuple(j.seeds))
        if key in groups:
            groups[key].packed.append(j)
        else:
            groups[key] = Job(**{**j.__dict__, "packed": []})
    return list(groups.values())


def plan_jobs(raw: dict, run_dir: Path, seeds_per_job: int | None = None) -> tuple[list[dict], list[Job]]:
    """Expand sweeps and widths into jobs (narrow widths first), one per grid point, width and seed group.

    Loads every grid point's task (for the jobs' sizes), so missing data fails here,
    before anything is written.  :func:`pack_jobs` then packs those that can train together.
    """
    points, jobs = [], []
    for pi, (key, praw) in enumerate(expand_grid(raw)):
        r = from_dict(praw)
        points.append({"key": key, "recipe": r.to_dict(), "fingerprint": r.fingerprint()})
        pack = pack_key(r.to_dict()) if not r.train.loggers else f"point {pi}"  # a tracked point logs alone
        task = load_recipe_task(r)
        check_recipe_task(r, task)
        seeds = r.train.seeds
        k = seeds_per_job or len(seeds)
        for w in sorted(r.model.widths):
            size = member_params(r, w, task)
            check_fits(r, w, size)
            for i in range(0, len(seeds), k):
                group = seeds[i:i + k]
                jobs.append(Job(job_id(pi, w, group), pi, key, r.to_dict(), w, group, str(run_dir), size, pack=pack))
    jobs.sort(key=lambda j: (j.width, j.point, j.seeds[0]))
    return points, jobs


def train_ladder(recipe, out: str | Path, *, overrides: list[str] | None = None, resume: bool = False,
                 executor=None, strategy: str | None = None, seeds_per_job: int | None = None,
                 pack: bool = True) -> Run:
    """Train every width (and grid point) of ``recipe`` into the run directory ``out``.

    ``recipe`` is anything :func:`widthkit.recipe.as_recipe_dict` accepts (a :class:`Recipe`,
    a raw dict, TOML text or a path).  ``executor`` is
    ``"local"`` (default), ``"ray"`` or an executor object (see :mod:`widthkit.executors`).
    ``out`` must be new, empty or a widthkit run (:func:`widthkit.rundir.claim_run_dir`); one driver
    at a time holds it (:func:`widthkit.rundir.run_lock`).  A run whose jobs were split differently
    (another ``seeds_per_job``) keeps its own split, so no member is stored twice.
    Returns the :class:`Run`; if jobs failed, the others are kept and a one-line
    :class:`WidthkitError` names the failed ones (rerun with ``resume=True``).  With ``pack``
    (default) grid points that differ only in :data:`PACKABLE` keys train as one stacked group
    per width and seed group; each point still gets its own shard and index entry.
    """
    if seeds_per_job is not None and seeds_per_job <= 0:
        raise RecipeError(f"`seeds_per_job={seeds_per_job}` must be a positive number of seeds per job")
    if strategy is not None:
        check_strategy(strategy, "`strategy`")
    text, raw = as_recipe_dict(recipe, overrides)
    out = claim_run_dir(out)
    points, jobs = plan_jobs(raw, out, seeds_per_job)
    if strategy:
        for j in jobs:
            j.strategy = strategy
    with run_lock(out):
        return _train_locked(text, raw, out, points, jobs, overrides, resume, executor, pack)


def _train_locked(text, raw, out: Path, points, jobs, overrides, resume, executor, pack: bool) -> Run:
    index_path = out / "index.json"
    index = _existing_index(out, resume) if index_path.exists() else None
    same = index is not None and [p["fingerprint"] for p in index["points"]] == [p["fingerprint"] for p in points]
    if index is not None and not same and not any(j.get("status") == "done" for j in index["jobs"].values()):
        info(f"run directory '{out}' holds no finished job of another recipe; starting it afresh")
        _remove_checkpoints(out, index)  # a corrected recipe is never blocked by a run that produced nothing
        index = None
    if index is not None and not resume:
        raise RunStoreError(f"run directory '{out}' already holds a run; pass `resume=True` to continue it, "
                            "or another `out`")
    if index is not None:
        if not same:
            raise RunStoreError(f"run directory '{out}' holds a run of a different recipe; refusing to mix "
                                "results: use the same recipe and --set values, or another `out`")
        jobs = _keep_layout(index, jobs)
    else:
        index = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": raw.get("name", "ladder"),
                 "created": now(), "versions": versions(), "recipe_toml": text, "overrides": overrides or [],
                 "points": points, "jobs": {}}
        out.mkdir(parents=True, exist_ok=True)
        if text:
            atomic_write_text(out / "recipe.toml", text)
    for j in jobs:
        index["jobs"].setdefault(j.id, {"point": j.point, "width": j.width, "seeds": j.seeds,
                                        "shard": str(j.shard.relative_to(out)), "status": "pending"})
    pending = []
    for j in jobs:
        rec = index["jobs"][j.id]
        fp = points[j.point]["fingerprint"]
        problem = shard_problem(j.shard, fp, rec) if j.shard.exists() else f"shard '{j.shard}' is missing"
        if problem is None:
            if rec["status"] != "done":
                rec["status"] = "done"  # the worker finished; the driver died before recording it
            continue
        other = foreign_fingerprint(j.shard, fp)
        if other:
            raise different_recipe(j.shard, other, fp)
        if rec["status"] == "done" or j.shard.exists():
            warn(f"{problem}; recomputing it")
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
        for part in job.parts:
            index["jobs"][part.id].update(record)
        index["updated"] = now()
        write_index(out, index)

    get_executor(executor).run(pack_jobs(pending) if pack else pending, run_job, on_done)
    failed = [j.id for j in pending if index["jobs"][j.id]["status"] == "failed"]
    if failed:
        raise JobsFailedError(failure_summary(index, failed, len(jobs), out))
    if all(rec["status"] == "done" for rec in index["jobs"].values()):
        _remove_checkpoints(out, index)
    return Run(out)


def _existing_index(out: Path, resume: bool) -> dict | None:
    """The run's index; a damaged one is rebuilt on resume (None here: every intact shard is found again)."""
    try:
        return read_index(out)
    except DamagedIndexError as e:
        if not resume:
            raise
        warn(f"{e}; rebuilding the index from the shards")
        return None


def _keep_layout(index: dict, jobs: list[Job]) -> list[Job]:
    """The planned jobs, re-split as the existing run split them (its ``seeds_per_job``).

    Resuming with another ``seeds_per_job`` must not train a member again beside its shard: the
    index's jobs of each (point, width) cover the same seeds (same recipe fingerprint), so they are kept.
    """
    if {j.id for j in jobs} == set(index["jobs"]):
        return jobs
    warn("this run splits its seeds into jobs differently from `seeds_per_job`; keeping the run's own split "
         "(results do not depend on it)")
    planned = {(j.point, j.width): j for j in jobs}
    kept = []
    for key, rec in index["jobs"].items():
        like = planned[(rec["point"], rec["width"])]
        kept.append(dataclasses.replace(like, id=key, seeds=list(rec["seeds"])))
    kept.sort(key=lambda j: (j.width, j.point, j.seeds[0]))
    return kept


def _remove_checkpoints(out: Path, index: dict) -> None:
    """Delete the checkpoints of ``index``'s jobs (files widthkit wrote), then ``ckpt/`` if it is empty."""
    ckpt = out / "ckpt"
    for key in index["jobs"]:
        for path in [ckpt / f"{key}.pt", *ckpt.glob(f"{key}-pack*.pt")]:  # packed jobs: see Job.ckpt
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        ckpt.rmdir()  # only when nothing else (a refused checkpoint, a user's file) is left in it


def failure_summary(index: dict, failed: list[str], n_jobs: int, out: Path) -> str:
    """One line naming every failed job and its error, and how to continue."""
    errors = "; ".join(f"{k}: {index['jobs'][k].get('error', '?')}" for k in failed)
    return (f"{len(failed)} of {n_jobs} jobs failed ({errors}); finished jobs are saved in '{out}' "
            f"(tracebacks in its index.json). Fix the cause and rerun the same command with --resume")

