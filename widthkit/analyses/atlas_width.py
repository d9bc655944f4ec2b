"""Neuron vs group across width (Gilboa & Gur-Ari 2019), and one activation atlas per width.

:func:`measure_neuron_group` is the fast measure that ``widthkit study`` runs inside the ``atlas``
stage: for every finished width and every seed, three linear probes of ``layer``'s class information
(:func:`atlases.neuron_vs_group`: the most class-selective single neuron, the top-``k`` neurons, the
top-``k`` PCA directions), fitted on at most ``examples`` training inputs and scored on the test split
(conv and token layers averaged over positions).  If single neurons lose class information with width
while groups keep it, the information is carried by groups of neurons, not by single ones.  When the
run kept weight snapshots (``train.snapshots``) every width is read at matched source accuracy, as in
``transfer`` (Gilboa & Gur-Ari's protocol): the snapshot whose mean test accuracy is closest to the
highest level every width reaches; otherwise the final members.

The ``atlas-width`` analysis adds one atlas per width (minutes, so off in the study by default).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from atlases.data import is_signal
from atlases.hooks import PENULTIMATE, extract_features, resolve_layer

from .. import fmt
from ..build import load_recipe_task
from ..errors import WidthkitError
from ..plots import figure, save
from ..progress import bar, info
from ..recipe import Recipe
from ..results import Result
from ..validate import PositiveInt
from .base import Analysis, Block, Figure, Link, Subject, Table, opt, register_analysis

IMAGE_TASKS = ("digits", "cifar10", "cifar100", "cifar5m", "imagefolder")
KINDS = ("best single neuron", "top-k neurons", "k PCA directions")


def atlas_applies(recipe: Recipe) -> str:
    """Why atlases do not apply to ``recipe``'s task (``""`` if they do): it must classify images or
    1-D signals (mnist1d)."""
    task = load_recipe_task(recipe)
    if (task.name not in IMAGE_TASKS and not is_signal(task.in_shape)) or task.kind != "classification":
        return (f"task '{task.name}' does not classify images ({', '.join(IMAGE_TASKS)}) or 1-D signals "
                "(mnist1d)")
    return ""


@dataclass
class NeuronGroupWidths(Result):
    """Per width (rows) and seed (columns): test accuracy of the three probes of :mod:`atlases.probe`."""

    layer: str
    k: int
    examples: int                       # training inputs per probe
    widths: list[int]
    seeds: list[int]
    n_neurons: list[int]
    best_neuron_acc: list[float]        # per width, mean over seeds
    topk_acc: list[float]
    group_acc: list[float]
    per_seed: dict[str, list[list[float]]]   # kind -> [width][seed]
    seconds: float
    steps: list[int]                    # per width, the training step the members were read at
    level: float                        # the matched source accuracy (NaN: final members, no snapshots)

    def sd(self, kind: str) -> np.ndarray:
        """Standard deviation over seeds per width (0 with one seed)."""
        return np.asarray(self.per_seed[kind]).std(1)


def matched_steps(view, widths: list[int]) -> tuple[dict[int, int], float]:
    """Per width, the step at matched source accuracy and that accuracy (the last steps and NaN when the run
    kept no snapshots); see :func:`widthkit.analyses.transfer.match_steps`."""
    from .transfer import match_steps, source_acc
    curves = {w: (view.snapshot_steps(w), [float(np.nanmean(source_acc(view, w, s))) for s in view.snapshot_steps(w)])
              for w in widths}
    if all(len(steps) == 1 for steps, _ in curves.values()):
        return {w: steps[-1] for w, (steps, _) in curves.items()}, float("nan")
    level, steps = match_steps(curves)
    return steps, level


def measure_neuron_group(view, layer: str = PENULTIMATE, *, k: int = 10, examples: int = 1000,
                         widths: list[int] | None = None, seeds: list[int] | None = None,
                         matched: bool = True) -> NeuronGroupWidths:
    """The neuron-vs-group probes of every (width, seed) member of a run-store view, at matched source
    accuracy when the run kept snapshots and ``matched`` (else the final members).  Diverged members are
    never probed: a fully diverged width is left out, and by default so is a seed that diverged at any width
    (so every width has the same seeds)."""
    import atlases
    task = view.task()
    widths = [w for w in (widths or view.widths) if view.trained_seeds(w)]
    seeds = list(seeds or [s for s in view.seeds if all(s in view.trained_seeds(w) for w in widths)])
    if not widths or not seeds:
        raise WidthkitError("neuron-vs-group probes: no width has members that all trained (every one diverged "
                            "somewhere); lower optim.lr and retrain")
    at, level = matched_steps(view, widths) if matched else ({}, float("nan"))
    n = min(int(examples), len(task.x_train))
    x_tr, y_tr = task.x_train[:n], task.y_train[:n].numpy()
    x_te, y_te = task.x_test[:n], task.y_test[:n].numpy()
    t0 = time.perf_counter()
    rows, name = {kind: [] for kind in KINDS}, layer
    n_neurons = []
    with bar("neuron vs group probes", len(widths) * len(seeds)) as pb:
        for w in widths:
            got = []
            for s in seeds:
                model = view.load_member(w, s, step=at.get(w))
                name = resolve_layer(model, layer)
                got.append(atlases.neuron_vs_group(extract_features(model, x_tr, name, pool="mean"), y_tr,
                                                   extract_features(model, x_te, name, pool="mean"), y_te,
                                                   k=k, seed=s))
                pb.advance()
            n_neurons.append(got[0].n_neurons)
            for kind, attr in zip(KINDS, ("best_neuron_acc", "topk_acc", "group_acc")):
                rows[kind].append([getattr(g, attr) for g in got])
            info(f"width {w}: best neuron {np.mean(rows[KINDS[0]][-1]):.3f}, top-{got[0].k} neurons "
                 f"{np.mean(rows[KINDS[1]][-1]):.3f}, top-{got[0].k} PCA directions {np.mean(rows[KINDS[2]][-1]):.3f}")
    mean = {kind: [float(np.mean(r)) for r in rows[kind]] for kind in KINDS}
    last = {w: view.snapshot_steps(w)[-1] for w in widths}
    return NeuronGroupWidths(name, int(min(k, min(n_neurons))), n, widths, seeds, n_neurons, mean[KINDS[0]],
                             mean[KINDS[1]], mean[KINDS[2]], rows, time.perf_counter() - t0,
                             [int(at.get(w, last[w])) for w in widths], level)


def plot_neuron_group(res: NeuronGroupWidths, ax) -> None:
    """Probe test accuracy against width, one line per kind, error bars = sd over seeds."""
    for kind, mean, mk in zip(KINDS, (res.best_neuron_acc, res.topk_acc, res.group_acc), "os^"):
        ax.errorbar(res.widths, mean, yerr=res.sd(kind), marker=mk, capsize=3,
                    label=kind.replace("k ", f"{res.k} ").replace("-k", f"-{res.k}"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("linear-probe test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"neuron vs group: {res.layer} ({len(res.seeds)} seeds)", fontsize=10)


def width_change(res: NeuronGroupWidths, kind: str) -> tuple[float, float, str]:
    """How ``kind``'s probe accuracy changes from the narrowest to the widest width: (change, its standard
    error, "lose" / "gain" / "keep").  The change is the least-squares line through every (log2 width, seed)
    probe, evaluated across the width range (all widths count, not just the two ends); the standard error is
    the line's, from its residuals.  A change beyond 2 standard errors plus one point is a loss or a gain."""
    acc = np.asarray(res.per_seed[kind], float)                         # [width, seed]
    x = np.repeat(np.log2(np.asarray(res.widths, float)), acc.shape[1])
    X = np.stack([np.ones_like(x), x - x.mean()], 1)
    beta, *_ = np.linalg.lstsq(X, acc.ravel(), rcond=None)
    dof = len(x) - 2
    resid = acc.ravel() - X @ beta
    span = float(x.max() - x.min())
    se = float(np.sqrt(resid @ resid / dof / np.sum(X[:, 1] ** 2))) * span if dof > 0 and span > 0 else 0.0
    d = float(beta[1]) * span
    tol = 0.01 + 2 * se
    return d, se, "lose" if d < -tol else "gain" if d > tol else "keep"


def neuron_group_reading(res: NeuronGroupWidths) -> str:
    """One sentence: do single neurons (the best one, the top-k) lose class information with width while k
    PCA directions (groups) keep it?  Changes (:func:`width_change`) are in points, ± 2 standard errors."""
    when = (f"at matched source accuracy {fmt.pct(res.level)}, " if np.isfinite(res.level)
            else "at the end of training (no snapshots to match source accuracy), ")
    names = dict(zip(KINDS, ("the best single neuron", f"the top-{res.k} neurons", f"{res.k} PCA directions")))
    parts, verdict = [], {}
    for kind, mean in zip(KINDS, (res.best_neuron_acc, res.topk_acc, res.group_acc)):
        d, se, verdict[kind] = width_change(res, kind)
        sd = res.sd(kind)
        parts.append(f"{names[kind]} {fmt.pct(mean[0])} ± {100 * sd[0]:.1f} → {fmt.pct(mean[-1])} ± "
                     f"{100 * sd[-1]:.1f} ({100 * d:+.1f} ± {200 * se:.1f} points: {verdict[kind]}s)")
    group = verdict[KINDS[2]]
    lost = [names[k] for k in KINDS[:2] if verdict[k] == "lose"]
    if lost and group != "lose":
        claim = (f"{' and '.join(lost)} lose class information with width while {res.k} directions {group} it, "
                 "as Gilboa & Gur-Ari report")
    else:
        claim = (f"single neurons do not lose class information with width relative to {res.k} directions here "
                 f"(directions {group} it): not the loss Gilboa & Gur-Ari report for wide networks")
    return (f"{when}from N={res.widths[0]} to N={res.widths[-1]} (linear-probe test accuracy, mean ± sd over "
            f"{len(res.seeds)} seeds; in brackets the change along a line fitted through every width, ± 2 "
            "standard errors): " + "; ".join(parts) + f". So {claim}")


def neuron_group_table(res: NeuronGroupWidths) -> Table:
    return Table(f"layer {res.layer}: linear-probe test accuracy (mean ± sd over {len(res.seeds)} seeds, "
                 f"{res.examples} training inputs) of one neuron, the top-{res.k} neurons and {res.k} PCA directions",
                 ["width", "neurons", "step", "best neuron", f"top-{res.k} neurons", f"{res.k} PCA directions"],
                 [[str(w), str(n), str(res.steps[i])] + [fmt.pm(m[i], res.sd(kind)[i]) for kind, m in
                                      zip(KINDS, (res.best_neuron_acc, res.topk_acc, res.group_acc))]
                  for i, (w, n) in enumerate(zip(res.widths, res.n_neurons))])


@dataclass
class AtlasWidthOptions:
    """Options of ``atlas-width`` (recipe table ``[atlas_width]``)."""

    layer: str = opt(PENULTIMATE, "module to atlas and probe (penultimate: the classifier's input)")
    seed: int = opt(-1, "member seed of the atlases (-1: the first); the probes use every seed")
    widths: list[int] = opt([], "widths (default: every finished width)")
    k: PositiveInt = opt(10, "neurons and PCA directions of the group probes")
    examples: PositiveInt = opt(1000, "training inputs per probe")
    max_vectors: PositiveInt = opt(5000, "activation vectors collected per atlas")
    grid: PositiveInt = opt(10, "cells per side of the layout grid")
    size: PositiveInt = opt(32, "icon size in pixels")
    steps: PositiveInt = opt(64, "optimization steps per icon")


@dataclass
class AtlasWidthResult(NeuronGroupWidths):
    """The neuron-vs-group measure, plus one atlas per width (folders relative to the analysis folder)."""

    schema_version = 2          # 2: three probes over every seed, at matched source accuracy
    run: str
    seed: int
    folders: list[str]


def plot_atlas_width(res: AtlasWidthResult, folder: Path, path: Path) -> Path:
    """One atlas per width (left to right) and the neuron-vs-group probe accuracies per width."""
    n = len(res.widths)
    fig, axes = figure(ncols=n + 1, nrows=1, size=(3.2, 3.2))
    for ax, w, sub in zip(axes[0], res.widths, res.folders):
        ax.imshow(mpimg.imread(Path(folder) / sub / "atlas.png"))
        ax.set_title(f"width {w}")
        ax.axis("off")
    plot_neuron_group(res, axes[0][n])
    return save(fig, path)


@register_analysis
class AtlasWidth(Analysis):
    name = "atlas-width"
    order = 35
    help = "activation atlases of one layer across widths, with the per-width neuron-vs-group probe"
    Options = AtlasWidthOptions
    Result = AtlasWidthResult
    smoke = {"max_vectors": 200, "grid": 3, "size": 8, "steps": 2, "k": 3, "examples": 200}
    in_study = False    # one atlas per width: minutes; the study's `atlas` stage runs the probes

    def applies(self, subject: Subject, o: AtlasWidthOptions) -> str:
        return atlas_applies(subject.recipe)

    def compute(self, subject: Subject, o: AtlasWidthOptions) -> AtlasWidthResult:
        import atlases
        view = subject.require_point(self.name)
        task = view.task()
        widths = o.widths or view.widths
        bad = [w for w in widths if w not in view.widths]
        if bad or not widths:
            raise WidthkitError(f"widths {bad or widths} are not finished; finished: {view.widths}")
        seed = view.seeds[0] if o.seed < 0 else o.seed
        if seed not in view.seeds:
            raise WidthkitError(f"seed {seed} is not a member seed; seeds: {view.seeds}")
        m = measure_neuron_group(view, o.layer, k=o.k, examples=o.examples, widths=widths)
        for w in widths:
            model = view.load_member(w, seed)
            atlases.make_atlas(model, resolve_layer(model, o.layer), (task.x_train, task.y_train),
                               subject.out / f"w{w}", max_vectors=o.max_vectors, grid=o.grid, size=o.size,
                               steps=o.steps, seed=seed)
        return AtlasWidthResult(**vars(m), run=str(view.path), seed=seed, folders=[f"w{w}" for w in widths])

    def plot(self, res: AtlasWidthResult, folder: Path) -> list[Path]:
        return [plot_atlas_width(res, folder, Path(folder) / "atlas_width.png")]

    def blocks(self, res: AtlasWidthResult, folder: Path) -> list[Block]:
        folder = Path(folder)
        b = Block(self.name, "Atlases across widths: single neurons vs groups")
        b.tables.append(neuron_group_table(res))
        b.tables.append(Table(f"one atlas per width (seed {res.seed})", ["width", "viewer"],
                              [[str(w), Link("open", folder / sub / "atlas.html")]
                               for w, sub in zip(res.widths, res.folders)]))
        line = neuron_group_reading(res)
        b.lines.append(line)
        b.figures.append(Figure(folder / "atlas_width.png", line))
        return [b]
