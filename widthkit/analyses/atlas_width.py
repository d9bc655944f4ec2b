"""Atlases across widths and "neuron vs group" (Gilboa & Gur-Ari 2019).

For every chosen width, member ``seed`` gets an activation atlas of ``layer`` and two linear probes of
its class information (train split fit, test split accuracy; conv and token layers averaged over
positions): the best *single-neuron* probe and a probe on the top-``k`` PCA directions
(:func:`atlases.neuron_vs_group`).  If single neurons lose class information with width while the
directions keep it, the information is carried by groups of neurons, not by single ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.image as mpimg

from atlases.hooks import PENULTIMATE, extract_features, resolve_layer

from .. import fmt
from ..errors import WidthkitError
from ..plots import figure, save
from ..progress import info
from ..results import Result
from ..validate import PositiveInt
from .atlas import Atlas
from .base import Analysis, Block, Figure, Link, Subject, Table, opt, register_analysis


@dataclass
class AtlasWidthOptions:
    """Options of ``atlas-width`` (recipe table ``[atlas_width]``)."""

    layer: str = opt(PENULTIMATE, "module to atlas and probe (penultimate: the classifier's input)")
    seed: int = opt(-1, "member seed (-1: the first)")
    widths: list[int] = opt([], "widths (default: every finished width)")
    k: PositiveInt = opt(10, "PCA directions for the group probe")
    max_vectors: PositiveInt = opt(5000, "activation vectors collected per atlas")
    grid: PositiveInt = opt(10, "cells per side of the layout grid")
    size: PositiveInt = opt(32, "icon size in pixels")
    steps: PositiveInt = opt(64, "optimization steps per icon")


@dataclass
class AtlasWidthResult(Result):
    """Per width: atlas folder, best single-neuron probe accuracy, top-k PCA-direction probe accuracy."""

    run: str
    layer: str
    seed: int
    k: int
    widths: list[int]
    folders: list[str]          # per width, relative to the analysis folder
    best_neuron: list[int]
    best_neuron_acc: list[float]
    group_acc: list[float]
    n_neurons: list[int]


def plot_atlas_width(res: AtlasWidthResult, folder: Path, path: Path) -> Path:
    """One atlas per width (left to right) and the neuron-vs-group probe accuracies per width."""
    n = len(res.widths)
    fig, axes = figure(ncols=n + 1, nrows=1, size=(3.2, 3.2))
    for ax, w, sub in zip(axes[0], res.widths, res.folders):
        ax.imshow(mpimg.imread(Path(folder) / sub / "atlas.png"))
        ax.set_title(f"width {w}")
        ax.axis("off")
    ax = axes[0][n]
    ax.plot(res.widths, res.best_neuron_acc, "o-", label="best single neuron")
    ax.plot(res.widths, res.group_acc, "s-", label=f"top-{res.k} PCA directions")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("linear-probe test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"neuron vs group: {res.layer}")
    return save(fig, path)


@register_analysis
class AtlasWidth(Analysis):
    name = "atlas-width"
    order = 35
    help = "activation atlases of one layer across widths, with the per-width neuron-vs-group probe"
    Options = AtlasWidthOptions
    Result = AtlasWidthResult
    smoke = {"max_vectors": 200, "grid": 3, "size": 8, "steps": 2, "k": 3}
    in_study = False    # one atlas per width: minutes; `[study] run = ["atlas-width"]` adds it

    def applies(self, subject: Subject, o: AtlasWidthOptions) -> str:
        return Atlas().applies(subject, Atlas().options(subject.recipe))

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
        rows, layer = [], o.layer
        for w in widths:
            model = view.load_member(w, seed)
            layer = resolve_layer(model, o.layer)
            atlases.make_atlas(model, layer, (task.x_train, task.y_train), subject.out / f"w{w}",
                               max_vectors=o.max_vectors, grid=o.grid, size=o.size, steps=o.steps, seed=seed)
            ng = atlases.neuron_vs_group(extract_features(model, task.x_train, layer, pool="mean"),
                                         task.y_train.numpy(),
                                         extract_features(model, task.x_test, layer, pool="mean"),
                                         task.y_test.numpy(), k=o.k, seed=seed)
            info(f"width {w}: best neuron {ng.best_neuron_acc:.3f}, top-{ng.k} directions {ng.group_acc:.3f}")
            rows.append(ng)
        return AtlasWidthResult(str(view.path), layer, seed, rows[0].k, list(widths), [f"w{w}" for w in widths],
                                [g.best_neuron for g in rows], [g.best_neuron_acc for g in rows],
                                [g.group_acc for g in rows], [g.n_neurons for g in rows])

    def plot(self, res: AtlasWidthResult, folder: Path) -> list[Path]:
        return [plot_atlas_width(res, folder, Path(folder) / "atlas_width.png")]

    def blocks(self, res: AtlasWidthResult, folder: Path) -> list[Block]:
        folder = Path(folder)
        b = Block(self.name, "Atlases across widths: single neurons vs directions")
        b.tables.append(Table(f"layer {res.layer}, seed {res.seed}: linear-probe test accuracy on one neuron vs on "
                              f"the top-{res.k} PCA directions",
                              ["width", "neurons", "best neuron", "best neuron acc", f"top-{res.k} acc", "viewer"],
                              [[str(w), str(n), str(bn), fmt.pct(a), fmt.pct(g), Link("open", folder / sub / "atlas.html")]
                               for w, n, bn, a, g, sub in zip(res.widths, res.n_neurons, res.best_neuron,
                                                              res.best_neuron_acc, res.group_acc, res.folders)]))
        gap = [g - a for a, g in zip(res.best_neuron_acc, res.group_acc)]
        line = (f"best single neuron {fmt.pct(res.best_neuron_acc[0])} → {fmt.pct(res.best_neuron_acc[-1])}, "
                f"top-{res.k} directions {fmt.pct(res.group_acc[0])} → {fmt.pct(res.group_acc[-1])} from "
                f"N={res.widths[0]} to N={res.widths[-1]}: class information is "
                f"{'more' if gap[-1] > gap[0] else 'less'} spread over neurons at the widest width")
        b.lines.append(line)
        b.figures.append(Figure(folder / "atlas_width.png", line))
        return [b]
