"""Activation atlases of ladder members (Carter et al. 2019), through the ``atlases`` package.

For each chosen width (default: the narrowest and the widest finished one) the member ``seed`` gets an
atlas of ``layer`` (default: the penultimate layer) on the training inputs of the run's task, in
``<folder>/w<W>-s<S>-<layer>/`` (atlas.png, the pan-and-zoom atlas.html, layout.json, activations.h5).
The result records, per atlas, its cell purity: the count-weighted mean share of a cell's dominant class,
and how many classes dominate at least one cell.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlases.hooks import PENULTIMATE, resolve_layer

from .. import fmt
from ..errors import WidthkitError
from ..build import load_recipe_task
from ..progress import info, warn
from ..results import Result
from ..validate import PositiveInt, UnitFraction
from .base import Analysis, Block, Figure, Link, Subject, Table, opt, register_analysis

IMAGE_TASKS = ("digits", "cifar10", "cifar100", "cifar5m", "imagefolder")


@dataclass
class AtlasOptions:
    """Options of ``atlas`` (recipe table ``[atlas]``); quick by default (tens of seconds per atlas on a CPU)."""

    widths: list[int] = opt([], "widths to atlas (default: the narrowest and the widest finished)")
    seed: int = opt(-1, "member seed (-1: the first)")
    layer: str = opt(PENULTIMATE, "module to atlas (penultimate: the classifier's input)")
    max_vectors: PositiveInt = opt(2000, "activation vectors collected")
    positions: PositiveInt = opt(1, "random spatial positions per image (conv layers)")
    grid: PositiveInt = opt(10, "cells per side of the layout grid")
    min_count: PositiveInt = opt(3, "activations a cell needs to get an icon")
    neighbors: PositiveInt = opt(15, "UMAP n_neighbors")
    size: PositiveInt = opt(32, "icon size in pixels")
    steps: PositiveInt = opt(64, "optimization steps per icon")
    whiten: bool = opt(False, "whiten directions by the activation covariance")
    class_index: int = opt(-1, "class atlas: keep the activations most attributed to this class (-1: off)")
    keep: UnitFraction = opt(0.1, "share of activations kept for a class atlas")


@dataclass
class MemberAtlas(Result):
    """One member's atlas: where it is (relative to the analysis folder) and how class-pure its cells are."""

    width: int
    seed: int
    layer: str
    folder: str
    grid: int
    n_vectors: int
    n_cells: int
    purity: float               # count-weighted mean share of the dominant class per cell
    classes_dominating: int     # classes that dominate at least one cell
    classes: int
    seconds: dict[str, float]


@dataclass
class AtlasRunResult(Result):
    run: str
    atlases: list[MemberAtlas]


def atlas_folder(label: str, layer: str) -> str:
    """The folder name of an atlas, e.g. ``w256-s0-act1``."""
    return f"{label}-{layer.replace('.', '_')}"


def cell_purity(layout_json: Path) -> tuple[float, int, int]:
    """(count-weighted dominant-class share per cell, classes dominating a cell, classes) of a saved layout."""
    mix = np.asarray(json.loads(Path(layout_json).read_text()).get("class_mix") or [], float)
    if mix.ndim != 2 or not len(mix) or mix.sum() <= 0:
        return float("nan"), 0, 0
    tot = mix.sum(1)
    ok = tot > 0
    return float(mix[ok].max(1).sum() / tot[ok].sum()), len(set(mix[ok].argmax(1).tolist())), int(mix.shape[1])


def _members(view, o: AtlasOptions) -> list[tuple[int, int]]:
    """(width, seed) of each atlas; diverged members are skipped (with a warning), never atlased."""
    done = view.widths
    widths = sorted(set(o.widths)) if o.widths else done
    bad = [w for w in widths if w not in done]
    if bad or not widths:
        raise WidthkitError(f"atlas widths {bad or widths} are not finished; finished: {done} "
                            "(choose widths among them)")
    if o.seed >= 0 and o.seed not in view.seeds:
        raise WidthkitError(f"atlas seed {o.seed} is not a member seed; seeds: {view.seeds}")
    members = []
    for w in widths:
        alive = [s for s, d in zip(view.seeds, view.diverged(w)) if not d]
        seed = o.seed if o.seed >= 0 else (alive[0] if alive else view.seeds[0])
        if seed in alive:
            members.append((w, seed))
        else:
            warn(f"atlas: skipping width {w}: member seed {seed} diverged")
    if not o.widths:  # default: the narrowest and the widest width with a member that did not diverge
        members = sorted({members[0], members[-1]}) if members else []
    if not members:
        raise WidthkitError(f"atlas: every chosen member diverged (widths {widths}); lower optim.lr and retrain")
    return members


@register_analysis
class Atlas(Analysis):
    name = "atlas"
    order = 30
    help = "activation atlases (UMAP grid of feature-visualized cell directions) of ladder members"
    Options = AtlasOptions
    Result = AtlasRunResult
    smoke = {"max_vectors": 200, "grid": 3, "min_count": 1, "size": 8, "steps": 2}

    def applies(self, subject: Subject, o: AtlasOptions) -> str:
        task = load_recipe_task(subject.recipe)
        if task.name not in IMAGE_TASKS or task.kind != "classification":
            return f"task '{task.name}' is not an image classification task ({', '.join(IMAGE_TASKS)})"
        return ""

    def compute(self, subject: Subject, o: AtlasOptions) -> AtlasRunResult:
        import atlases
        view = subject.require_point(self.name)
        task = view.task()
        out = []
        for w, seed in _members(view, o):
            model = view.load_member(w, seed)
            layer = resolve_layer(model, o.layer)
            folder = atlas_folder(f"w{w}-s{seed}", layer)
            info(f"atlas of width {w} (seed {seed}), layer {layer}")
            common = dict(max_vectors=o.max_vectors, positions_per_image=o.positions, grid=o.grid,
                          min_count=o.min_count, n_neighbors=o.neighbors, size=o.size, steps=o.steps,
                          whiten=o.whiten, seed=seed)
            data = (task.x_train, task.y_train)
            if o.class_index >= 0:
                a = atlases.class_atlas(model, layer, data, o.class_index, subject.out / folder, keep=o.keep, **common)
            else:
                a = atlases.make_atlas(model, layer, data, subject.out / folder, **common)
            pur, dom, classes = cell_purity(Path(a.layout_json))
            out.append(MemberAtlas(w, seed, layer, folder, a.grid, a.n_vectors, a.n_cells, pur, dom, classes,
                                   dict(a.seconds)))
        return AtlasRunResult(str(view.path), out)

    def blocks(self, res: AtlasRunResult, folder: Path) -> list[Block]:
        folder = Path(folder)
        b = Block(self.name, "Activation atlases")
        rows = []
        for m in res.atlases:
            d = folder / m.folder
            label = f"width {m.width} (seed {m.seed})"
            b.figures.append(Figure(d / "atlas.png", f"{label}, layer {m.layer}: {m.n_cells} cells from "
                                    f"{m.n_vectors} activations; a cell is {fmt.pct(m.purity)} one class on average, "
                                    f"and {m.classes_dominating} of {m.classes} classes dominate at least one cell"))
            b.links.append(Link(f"interactive atlas viewer: {label}", d / "atlas.html"))
            rows.append([str(m.width), str(m.seed), m.layer, str(m.n_vectors), str(m.n_cells), fmt.pct(m.purity),
                         f"{m.classes_dominating}/{m.classes}" if m.classes else "-", Link("open", d / "atlas.html")])
        b.tables.append(Table("One atlas per member: UMAP of the layer's activations binned into cells, one "
                              "feature-visualized icon per cell",
                              ["width", "seed", "layer", "activations", "cells", "cell purity", "classes dominating",
                               "viewer"], rows))
        if len(res.atlases) > 1:
            lo, hi = res.atlases[0], res.atlases[-1]
            cmp = ("about as" if abs(hi.purity - lo.purity) < 0.01 else "more" if hi.purity > lo.purity else "less")
            b.lines.append(f"cell purity {fmt.pct(lo.purity)} at N={lo.width} vs {fmt.pct(hi.purity)} at N={hi.width} "
                           f"({lo.n_cells} vs {hi.n_cells} cells): the widest layer's activation regions are {cmp} "
                           "class-pure")
        elif b.figures:
            b.lines.append(b.figures[0].reading)
        return [b]
