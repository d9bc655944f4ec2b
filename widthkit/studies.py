"""One-command study: train a ladder, run every analysis that applies, write one HTML report.

``study(recipe, out)`` trains (or resumes) the ladder with :func:`widthkit.ladder.train_ladder`, then runs,
per grid point, each analysis into its own folder of the run directory -- the same folders the single
commands use, so ``widthkit report`` finds both:

* ``ensemble_bias/``   always (:func:`widthkit.analysis.ensemble_bias`; options from ``[ensemble_bias]``);
* ``transfer/``        when the recipe has ``[transfer] target``;
* ``atlas/w<W>-s<S>-<layer>/``  activation atlases of the narrowest and widest member when the data are
  images (options from ``[atlas]``, quick defaults);
* ``lr_phase/``, ``subspace/``, ``ntk_scaling/``  the dynamics analyses named in ``[study] dynamics``.
  They train their own small models from the recipe (full-batch GD, one member): they do not read the
  run store, so they take the recipe of the point and its ``[dynamics]`` table.  The choice lives in
  ``[study]`` because ``[dynamics]`` is validated strictly by the dynamics commands that share it.

Sweeps put each point's analyses under ``points/pNN/``.  An analysis whose inputs (shards, options)
are unchanged since the last study is kept, not recomputed, so rerunning a finished study is cheap.
A user error in one analysis (a :class:`WidthkitError`) is recorded as a one-line warning and the study
goes on.  The :class:`StudyResult` is saved as ``RUN/study.json`` and the report as ``RUN/report.html``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import WidthkitError, unknown
from .progress import info, is_quiet, set_quiet, warn
from .recipe import Recipe, as_recipe_dict, expand_grid, from_dict, section
from .results import Result

IMAGE_TASKS = ("digits", "cifar10", "cifar100", "cifar5m", "imagefolder")
DYNAMICS = ("lr-phase", "subspace", "ntk-scaling")
ANALYSES = ("ensemble-bias", "transfer", "atlas") + DYNAMICS


# ------------------------------------------------------------------------------------ options
@dataclass
class StudyOptions:
    """The recipe's ``[study]`` table.

    skip: analyses not to run (of ensemble-bias, transfer, atlas).  dynamics: dynamics analyses to run
    (lr-phase, subspace, ntk-scaling; default none).  dynamics_widths: their widths (default: the
    recipe's; subspace takes the narrowest).  report: write report.html.
    """

    skip: list[str] = field(default_factory=list)
    dynamics: list[str] = field(default_factory=list)
    dynamics_widths: list[int] = field(default_factory=list)
    report: bool = True


@dataclass
class EnsembleBiasOptions:
    """The ``[ensemble_bias]`` table: arguments of :func:`widthkit.analysis.ensemble_bias.ensemble_bias`.

    step: evaluation step to analyse (-1: final).  subsets: K-subsets per ensemble size.
    average: outputs | probs.  over_training: agreement with the widest width at every stored step.
    """

    step: int = -1
    subsets: int = 64
    average: str = "outputs"
    over_training: bool = True


@dataclass
class AtlasOptions:
    """The ``[atlas]`` table: which members get an atlas and how (arguments of ``atlases.make_atlas``).

    widths: default the narrowest and widest finished width.  seed: member seed (-1: the first).
    layer: module name ('' = penultimate).  The defaults are quick (a few tens of seconds per atlas on a
    CPU); ``widthkit atlas`` defaults (max_vectors=10000, grid=12, size=48, steps=128) give finer atlases.
    """

    widths: list[int] = field(default_factory=list)
    seed: int = -1
    layer: str = ""
    max_vectors: int = 2000
    positions: int = 1
    grid: int = 10
    min_count: int = 3
    neighbors: int = 15
    size: int = 32
    steps: int = 64
    whiten: bool = False


# ------------------------------------------------------------------------------------ results
@dataclass
class AnalysisRecord(Result):
    """What one analysis of one grid point did."""

    name: str
    point: str                  # grid point key ('' for a run without sweeps)
    status: str                 # done | kept | failed | skipped
    seconds: float
    out_dir: str                # relative to the run directory
    files: list = field(default_factory=list)     # JSON and PNG files written, relative to the run directory
    summary: list = field(default_factory=list)   # headline readings
    message: str = ""           # why it failed or was skipped
    key: str = ""               # hash of its inputs; an unchanged key keeps the previous outputs


@dataclass
class StudyResult(Result):
    """Everything one ``study`` call did (saved as RUN/study.json)."""

    run: str
    name: str
    points: list
    widths: list
    unfinished: list
    seeds: list
    jobs: int
    jobs_trained: int
    seconds: dict               # stage -> seconds
    analyses: list              # [AnalysisRecord]
    warnings: list = field(default_factory=list)
    report: str = ""

    @property
    def failed(self) -> list:
        return [a for a in self.analyses if a.status == "failed"]


# ------------------------------------------------------------------------------------ the analyses
def _run_ensemble_bias(view, rp: Recipe, out: Path) -> list[Path]:
    from .analysis.ensemble_bias import ensemble_bias
    from .plots.ensemble_bias import plot_all
    o = section(rp, "ensemble_bias", EnsembleBiasOptions)
    res = ensemble_bias(view, step=None if o.step < 0 else o.step, n_subsets=o.subsets, average=o.average,
                        over_training=o.over_training)
    return [res.save(out / "ensemble_bias.json"), *plot_all(res, out)]


def _run_transfer(view, rp: Recipe, out: Path) -> list[Path]:
    from .analysis.transfer import transfer
    from .plots.transfer import plot_transfer
    o = section(rp, "transfer", _transfer_options())
    res = transfer(view, target=o.target, layer=o.layer, probe=o.probe, shots=o.shots, draws=o.draws,
                   val_frac=o.val_frac, information=o.information, n_info=o.n_info)
    return [res.save(out / "transfer.json"), plot_transfer(res, out / "transfer.png")]


def _atlas_plan(view, rp: Recipe) -> tuple[AtlasOptions, list[int], int]:
    o = section(rp, "atlas", AtlasOptions)
    done = view.widths
    widths = sorted(set(o.widths)) if o.widths else sorted({done[0], done[-1]}) if done else []
    bad = [w for w in widths if w not in done]
    if bad or not widths:
        raise WidthkitError(f"atlas widths {bad or widths} are not finished; finished: {done} "
                            "(set [atlas] widths to some of them)")
    seed = view.seeds[0] if o.seed < 0 else o.seed
    if seed not in view.seeds:
        raise WidthkitError(f"[atlas] seed {seed} is not a member seed; seeds: {view.seeds}")
    return o, widths, seed


def _run_atlas(view, rp: Recipe, out: Path) -> list[Path]:
    """Atlases of the chosen members, in the folders (and with the files) of ``widthkit atlas``."""
    import atlases

    from .commands.atlas import atlas_folder, default_layer
    o, widths, seed = _atlas_plan(view, rp)
    task = view.task()
    files = []
    for w in widths:
        model = view.load_member(w, seed)
        layer = o.layer or default_layer(model)
        atlases.get_layer(model, layer)
        info(f"atlas of width {w} (seed {seed}), layer {layer}")
        d = out / atlas_folder(f"w{w}-s{seed}", layer)
        res = atlases.make_atlas(model, layer, (task.x_train, task.y_train), d, max_vectors=o.max_vectors,
                                 positions_per_image=o.positions, grid=o.grid, min_count=o.min_count,
                                 n_neighbors=o.neighbors, size=o.size, steps=o.steps, whiten=o.whiten, seed=seed)
        files += [res.save(d / "result.json"), Path(res.png), Path(res.html), Path(res.layout_json)]
    return files


def _dyn_widths(rp: Recipe) -> list[int] | None:
    return section(rp, "study", StudyOptions).dynamics_widths or None


def _run_lr_phase(view, rp: Recipe, out: Path) -> list[Path]:
    from .dynamics import lr_phase
    from .plots.dynamics import plot_lr_phase
    res = lr_phase(rp, widths=_dyn_widths(rp))
    return [res.save(out / "lr_phase.json"), *plot_lr_phase(res, out)]


def _run_subspace(view, rp: Recipe, out: Path) -> list[Path]:
    from .dynamics import track_subspace
    from .plots.dynamics import plot_subspace
    widths = _dyn_widths(rp)
    res = track_subspace(rp, width=min(widths) if widths else None)
    return [res.save(out / "subspace.json"), plot_subspace(res, out / "subspace.png")]


def _run_ntk_scaling(view, rp: Recipe, out: Path) -> list[Path]:
    from .dynamics import ntk_scaling
    from .plots.dynamics import plot_ntk_scaling
    res = ntk_scaling(rp, widths=_dyn_widths(rp))
    return [res.save(out / "ntk_scaling.json"), plot_ntk_scaling(res, out / "ntk_scaling.png")]


@dataclass(frozen=True)
class _Analysis:
    name: str
    folder: str                 # relative to the point's analysis root
    run: Callable
    reads_run: bool             # depends on the shards (else only on the recipe)
    options: tuple              # recipe tables whose content is part of its cache key


_TABLE = {a.name: a for a in (
    _Analysis("ensemble-bias", "ensemble_bias", _run_ensemble_bias, True, ("ensemble_bias",)),
    _Analysis("transfer", "transfer", _run_transfer, True, ("transfer",)),
    _Analysis("atlas", "atlas", _run_atlas, True, ("atlas",)),
    _Analysis("lr-phase", "lr_phase", _run_lr_phase, False, ("dynamics", "study")),
    _Analysis("subspace", "subspace", _run_subspace, False, ("dynamics", "study")),
    _Analysis("ntk-scaling", "ntk_scaling", _run_ntk_scaling, False, ("dynamics", "study")),
)}


def _transfer_options():
    from .analysis.transfer import TransferOptions
    return TransferOptions


# analysis -> () -> (recipe table, options class): checked before training so a typo shows at once
_OPTIONS = {"ensemble-bias": lambda: ("ensemble_bias", EnsembleBiasOptions),
            "transfer": lambda: ("transfer", _transfer_options()),
            "atlas": lambda: ("atlas", AtlasOptions)}


def _check_names(key: str, names: list[str], valid: tuple) -> None:
    for n in names:
        if n not in valid:
            raise WidthkitError(f"recipe key '{key}': {unknown('analysis', n, valid)}")


def plan(rp: Recipe, task_name: str, task_kind: str) -> list[tuple[str, str]]:
    """``[(analysis, '' or why it is skipped)]`` for one grid point, in running order."""
    o = section(rp, "study", StudyOptions)
    _check_names("study.skip", o.skip, ANALYSES)
    _check_names("study.dynamics", o.dynamics, DYNAMICS)
    why = {}
    if not rp.analysis.get("transfer", {}).get("target"):
        why["transfer"] = "the recipe has no [transfer] target"
    if task_name not in IMAGE_TASKS or task_kind != "classification":
        why["atlas"] = f"task '{task_name}' is not an image classification task ({', '.join(IMAGE_TASKS)})"
    for name in o.skip:
        why[name] = "skipped by [study] skip"
    out = [(n, why.get(n, "")) for n in ("ensemble-bias", "transfer", "atlas")]
    return out + [(n, why.get(n, "")) for n in DYNAMICS if n in o.dynamics]


# ------------------------------------------------------------------------------------ bookkeeping
def _stamps(run_dir: Path) -> dict[str, list[int]]:
    """Size and mtime of every shard: a changed stamp means the job was (re)trained."""
    d = Path(run_dir) / "shards"
    if not d.is_dir():
        return {}
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(d.glob("*.h5"))}


def _key(a: _Analysis, rp: Recipe, point: int, stamps: dict, widths: list[int]) -> str:
    parts = {"analysis": a.name, "tables": {t: rp.analysis.get(t, {}) for t in a.options}}
    if a.reads_run:
        prefix = f"p{point:02d}-"
        parts.update(widths=widths, shards={k: v for k, v in stamps.items() if k.startswith(prefix)})
    else:
        parts["recipe"] = rp.fingerprint()
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _previous(run_dir: Path) -> dict[tuple[str, str], dict]:
    """Records of the last study in this run directory, by (analysis, point)."""
    try:
        d = json.loads((Path(run_dir) / "study.json").read_text())
        return {(a["name"], a["point"]): a for a in d.get("analyses", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def _analyse(a: _Analysis, view, rp: Recipe, key_point: str, run_dir: Path, root: Path, key: str,
             prev: dict | None, redo: bool) -> AnalysisRecord:
    from .report import headline
    out = root / a.folder
    rec = AnalysisRecord(a.name, key_point, "done", 0.0, _rel(out, run_dir), key=key)
    if not redo and prev and prev.get("key") == key and prev.get("status") in ("done", "kept") \
            and prev.get("files") and all((run_dir / f).exists() for f in prev["files"]):
        info(f"{a.name}: inputs unchanged since the last study; keeping {rec.out_dir} (--redo recomputes)")
        rec.status, rec.files, rec.summary = "kept", list(prev["files"]), list(prev.get("summary", []))
        return rec
    info(f"{a.name}{f' [{key_point}]' if key_point else ''}: running into {out}")
    t0 = time.perf_counter()
    try:
        files = a.run(view, rp, out)
    except WidthkitError as e:
        rec.status, rec.message = "failed", str(e)
        warn(f"{a.name} failed: {e}")
    else:
        rec.files = sorted({_rel(f, run_dir) for f in files})
        rec.summary = headline(a.name, [run_dir / f for f in rec.files if f.endswith(".json")])
    rec.seconds = round(time.perf_counter() - t0, 2)
    return rec


# ------------------------------------------------------------------------------------ study
def study(recipe, out, *, overrides: list[str] | None = None, resume: bool = True, executor=None,
          quiet: bool = False, redo: bool = False) -> StudyResult:
    """Train ``recipe`` into ``out`` (resuming), run every analysis that applies, write report.html.

    ``recipe``: a TOML path, a raw dict or a :class:`Recipe`; ``overrides``: ``--set`` strings.
    ``executor``: as for :func:`widthkit.train_ladder`.  ``quiet``: no progress bars, info lines or
    summary table (warnings still show on stderr).  ``redo``: recompute analyses even when their inputs are unchanged.
    """
    was_quiet = is_quiet()
    set_quiet(quiet or was_quiet)
    try:
        return _study(recipe, Path(out), overrides, resume, executor, redo, quiet)
    finally:
        set_quiet(was_quiet)


def _study(recipe, out: Path, overrides, resume, executor, redo, quiet) -> StudyResult:
    from .ladder import load_recipe_task, train_ladder
    from .report import analysis_root, run_warnings, write_report
    _, raw = as_recipe_dict(recipe, overrides)
    points = [(key, from_dict(praw)) for key, praw in expand_grid(raw)]
    plans = []
    for key, rp in points:  # validate [study] and the analysis tables before the (long) training
        task = load_recipe_task(rp)
        plans.append(plan(rp, task.name, task.kind))
        for name, why in plans[-1]:
            try:
                if not why and name in _OPTIONS:
                    section(rp, *_OPTIONS[name]())
            except WidthkitError as e:
                warn(f"{name} will fail after training: {e}")
    r0 = points[0][1]
    seconds = {}
    before = _stamps(out)
    info(f"study '{r0.name}': {r0.model.family} widths {r0.model.widths} x {len(r0.train.seeds)} seeds"
         f"{f' x {len(points)} grid points' if len(points) > 1 else ''} into {out}")
    t0 = time.perf_counter()
    run = train_ladder(recipe, out, overrides=overrides, resume=resume, executor=executor)
    seconds["train"] = round(time.perf_counter() - t0, 2)
    after = _stamps(out)
    trained = sum(1 for k, v in after.items() if before.get(k) != v)
    prev = _previous(out)
    records, warnings = [], []
    views = [run.select(i) for i in range(len(run.points))]
    for i, ((key, rp), view, todo) in enumerate(zip(points, views, plans)):
        tag = f"[{key}] " if key else ""
        warnings += [tag + w for w in run_warnings(view)]
        root = analysis_root(view)
        for name, why in todo:
            a = _TABLE[name]
            if why:
                records.append(AnalysisRecord(name, key, "skipped", 0.0, _rel(root / a.folder, out), message=why))
                continue
            k = _key(a, rp, i, after, view.widths)
            t1 = time.perf_counter()
            rec = _analyse(a, view, rp, key, out, root, k, prev.get((name, key)), redo)
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - t1, 2)
            if rec.status == "failed":
                warnings.append(f"{name}{f' [{key}]' if key else ''} failed: {rec.message}")
            records.append(rec)
    res = StudyResult(str(out), r0.name, [k for k, _ in points], list(run.select(0).all_widths),
                      sorted({w for v in views for w in v.unfinished}), list(r0.train.seeds),
                      len(run.index["jobs"]), trained, seconds, records, warnings)
    res.save(out / "study.json")  # the report reads failed analyses from it
    if section(r0, "study", StudyOptions).report:
        info(f"writing the report {out / 'report.html'}")
        t1 = time.perf_counter()
        res.report = str(write_report(run))
        seconds["report"] = round(time.perf_counter() - t1, 2)
    seconds["total"] = round(sum(v for k, v in seconds.items()), 2)
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
