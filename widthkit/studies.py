"""One-command study: train a ladder, run every analysis that applies, write one HTML report.

``study(recipe, out)`` trains (or resumes) the ladder with :func:`widthkit.ladder.train_ladder`, then, per
grid point, loops over the registered analyses (:func:`widthkit.analyses.list_analyses`): each one that
applies runs into its folder of the point (``RUN/<table>/``, or ``RUN/points/pNN/<table>/`` in a sweep),
the same folders its own command uses, so ``widthkit report`` finds both.  Analyses with
``in_study = False`` (the recipe-driven dynamics ones, atlas-width) run only when ``[study] run`` names
them; ``[study] skip`` leaves any out.

An analysis whose inputs (shards, its recipe table) are unchanged since the last study is kept, not
recomputed.  A failure in one analysis (a :class:`WidthkitError`, or any unexpected exception) is
recorded as a one-line warning naming its cause, and the study goes on: the report is always written.  The :class:`StudyResult` is saved as ``RUN/study.json``, the report as
``RUN/report.html``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .analyses.base import Subject, check_recipe_tables, get_analysis, list_analyses, opt
from .errors import WidthkitError, unknown
from .ladder import train_ladder
from .progress import info, is_quiet, quiet as quiet_mode, warn
from .recipe import Recipe, as_recipe_dict, expand_grid, from_dict, section
from .report import run_warnings, write_report
from .rundir import claim_run_dir, run_lock
from .results import Result, ResultFileError
from .store import point_folder


@dataclass
class StudyOptions:
    """The recipe's ``[study]`` table."""

    skip: list[str] = opt([], "analyses not to run")
    run: list[str] = opt([], "analyses to run although they are off by default (lr-phase, atlas-width, ...)")
    report: bool = opt(True, "write report.html")


@dataclass
class AnalysisRecord(Result):
    """What one analysis of one grid point did."""

    name: str
    point: str                  # grid point key ('' for a run without sweeps)
    status: str                 # done | kept | failed | skipped
    seconds: float
    out_dir: str                # relative to the run directory
    files: list[str] = field(default_factory=list)     # files written, relative to the run directory
    summary: list[str] = field(default_factory=list)   # headline readings (the first block's lines)
    message: str = ""           # why it failed or was skipped
    key: str = ""               # hash of its inputs; an unchanged key keeps the previous outputs


@dataclass
class StudyResult(Result):
    """Everything one ``study`` call did (saved as RUN/study.json)."""

    run: str
    name: str
    points: list[str]
    widths: list[int]
    unfinished: list[int]
    seeds: list[int]
    jobs: int
    jobs_trained: int
    seconds: dict[str, float]   # stage -> seconds
    analyses: list[AnalysisRecord]
    warnings: list[str] = field(default_factory=list)
    report: str = ""

    @property
    def failed(self) -> list[AnalysisRecord]:
        return [a for a in self.analyses if a.status == "failed"]


def plan(rp: Recipe) -> list[tuple[str, str]]:
    """``[(analysis, '' or why it does not run)]`` for one grid point, in running order; validates every
    planned analysis's options so a typo shows before training."""
    o = section(rp, "study", StudyOptions)
    names = list_analyses()
    for key in ("skip", "run"):
        for n in getattr(o, key):
            if n not in names:
                raise WidthkitError(f"recipe key 'study.{key}': {unknown('analysis', n, names)}")
    check_recipe_tables(rp)
    out = []
    for n in names:
        a = get_analysis(n)
        if n in o.skip:
            why = "skipped by [study] skip"
        elif not a.in_study and n not in o.run:
            why = "off by default: add it to [study] run"
        else:
            why = a.applies(Subject(rp), a.options(rp))
        out.append((n, why))
    return out


def _stamps(run_dir: Path) -> dict[str, list[int]]:
    """Size and mtime of every shard: a changed stamp means the job was (re)trained."""
    d = Path(run_dir) / "shards"
    if not d.is_dir():
        return {}
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(d.glob("*.h5"))}


def _key(name: str, rp: Recipe, point: int, stamps: dict, widths: list[int]) -> str:
    a = get_analysis(name)
    parts = {"analysis": name, "options": json.dumps(a.options(rp).__dict__, sort_keys=True, default=str)}
    if a.needs == "run":
        prefix = "" if a.per_run else f"p{point:02d}-"
        parts.update(widths=widths, shards={k: v for k, v in stamps.items() if k.startswith(prefix)})
    else:
        parts["recipe"] = rp.fingerprint()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _previous(run_dir: Path) -> dict[tuple[str, str], AnalysisRecord]:
    """Records of the last study in this run directory, by (analysis, point)."""
    path = Path(run_dir) / "study.json"
    if not path.exists():
        return {}
    try:
        prev = StudyResult.load(path)
    except ResultFileError as e:
        warn(f"{e}; every analysis is recomputed")
        return {}
    return {(a.name, a.point): a for a in prev.analyses}


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def _cause(e: BaseException) -> str:
    """One line for an unexpected exception: its type, its message's first line, and where it came from."""
    import traceback
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}{where}: {first} (a bug: please report it)"


def _analyse(name: str, subject: Subject, key_point: str, run_dir: Path, key: str,
             prev: AnalysisRecord | None, redo: bool) -> AnalysisRecord:
    a = get_analysis(name)
    rec = AnalysisRecord(name, key_point, "done", 0.0, _rel(subject.out, run_dir), key=key)
    if not redo and prev and prev.key == key and prev.status in ("done", "kept") and prev.files \
            and all((run_dir / f).exists() for f in prev.files):
        info(f"{name}: inputs unchanged since the last study; keeping {rec.out_dir} (--redo recomputes)")
        rec.status, rec.files, rec.summary = "kept", list(prev.files), list(prev.summary)
        return rec
    info(f"{name}{f' [{key_point}]' if key_point else ''}: running into {subject.out}")
    t0 = time.perf_counter()
    try:
        res, files = a.run(subject, a.options(subject.recipe))
    except Exception as e:  # noqa: BLE001 - one analysis never costs the others or the report
        rec.status, rec.message = "failed", str(e) if isinstance(e, WidthkitError) else _cause(e)
        warn(f"{name} failed: {rec.message}")
    else:
        rec.files = sorted({_rel(f, run_dir) for f in files})
        blocks = a.blocks(res, subject.out)
        rec.summary = list(blocks[0].lines) if blocks else []
    rec.seconds = round(time.perf_counter() - t0, 2)
    return rec


def study(recipe, out, *, overrides: list[str] | None = None, resume: bool = True, executor=None,
          quiet: bool = False, redo: bool = False) -> StudyResult:
    """Train ``recipe`` into ``out`` (resuming), run every analysis that applies, write report.html.

    ``recipe``: a TOML path, a shipped recipe's name, a raw dict or a :class:`Recipe`; ``overrides``:
    ``section.key=value`` strings.  ``executor``: as for :func:`widthkit.train_ladder`.  ``quiet``: no
    progress bars, info lines or summary table (warnings still show).  ``redo``: recompute analyses even
    when their inputs are unchanged.
    """
    out = claim_run_dir(out)
    with quiet_mode(quiet or is_quiet()):
        return _study(recipe, out, overrides, resume, executor, redo, quiet)


def _study(recipe, out: Path, overrides, resume, executor, redo, quiet) -> StudyResult:
    _, raw = as_recipe_dict(recipe, overrides)
    points = [(key, from_dict(praw)) for key, praw in expand_grid(raw)]
    plans = [plan(rp) for _, rp in points]  # validate [study] and the analysis tables before the (long) training
    with run_lock(out):  # the ladder, the analyses and the report: one driver at a time
        r0 = points[0][1]
        seconds = {}
        before = _stamps(out)
        info(f"study '{r0.name}': {r0.model.family} widths {r0.model.widths} x {len(r0.train.seeds)} seeds"
             f"{f' x {len(points)} grid points' if len(points) > 1 else ''} into {out}")
        for (_, rp), todo in zip(points, plans):
            for name, why in todo:
                if not why:
                    a = get_analysis(name)
                    a.prepare(a.options(rp))
        t0 = time.perf_counter()
        run = train_ladder(recipe, out, overrides=overrides, resume=resume, executor=executor)
        seconds["train"] = round(time.perf_counter() - t0, 2)
        after = _stamps(out)
        trained = sum(1 for k, v in after.items() if before.get(k) != v)
        prev = _previous(out)
        records, warnings = [], []
        views = [run.select(i) for i in range(len(run.points))]
        for i, ((key, rp), view, todo) in enumerate(zip(points, views, plans)):
            warnings += [(f"[{key}] " if key else "") + w for w in run_warnings(view)]
            root = point_folder(view)
            for name, why in todo:
                a = get_analysis(name)
                if a.per_run and i:
                    continue  # ran on the first point, over every point
                subject = Subject(rp, view if a.needs == "run" else None, root / a.folder)
                if why:
                    records.append(AnalysisRecord(name, key, "skipped", 0.0, _rel(subject.out, out), message=why))
                    continue
                t1 = time.perf_counter()
                rec = _analyse(name, subject, key, out, _key(name, rp, i, after, view.widths), prev.get((name, key)),
                               redo)
                seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t1, 2)
                if rec.status == "failed":
                    warnings.append(f"{name}{f' [{key}]' if key else ''} failed: {rec.message}")
                records.append(rec)
        res = StudyResult(str(out), r0.name, [k for k, _ in points], list(views[0].all_widths),
                          sorted({w for v in views for w in v.unfinished}), list(r0.train.seeds),
                          len(run.index["jobs"]), trained, seconds, records, warnings)
        res.save(out / "study.json")  # the report reads failed analyses from it
        if section(r0, "study", StudyOptions).report:
            info(f"writing the report {out / 'report.html'}")
            t1 = time.perf_counter()
            res.report = str(write_report(run))
            seconds["report"] = round(time.perf_counter() - t1, 2)
        seconds["total"] = round(sum(seconds.values()), 2)
        res.save(out / "study.json")
        if not quiet:
            print_summary(res, views)
        return res


def print_summary(res: StudyResult, views) -> None:
    """The ladder table of every point, then one row per analysis and its headline readings."""
    from .table import print_ladder, print_table
    for v in views:
        if v.widths:
            print_ladder(v)
    print_table(f"study '{res.name}': {res.jobs_trained} of {res.jobs} jobs trained this time",
                ["analysis", "point", "status", "seconds", "output"],
                [[a.name, a.point or "-", a.status, a.seconds, a.out_dir] for a in res.analyses])
    for a in res.analyses:
        name = a.name + (f" [{a.point}]" if a.point else "")
        for line in a.summary[:2]:
            print(f"  {name}: {line}")
        if a.status == "skipped":
            print(f"  {name}: not run ({a.message})")
    for w in res.warnings:
        print(f"  warning: {w}")
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in res.seconds.items()))
    if res.report:
        print(f"report: {res.report}")
