"""Activation atlases of ladder members (Carter et al. 2019) and neuron vs group across width.

The study's atlas stage.  First the neuron-vs-group probes of every finished width and seed
(:func:`~widthkit.analyses.atlas_width.measure_neuron_group`, seconds): do single neurons lose class
information with width while groups keep it (Gilboa & Gur-Ari 2019)?  Then, for each chosen width
(default: the narrowest and the widest finished one), the member ``seed`` gets an atlas of each layer
(default: the penultimate layer) on the training inputs of the run's task, in
``<folder>/w<W>-s<S>-<layer>/`` (atlas.png with lucid's cell labels, the pan-and-zoom atlas.html,
layout.json, activations.h5), and the feature visualizations of its ``k`` most class-selective single
neurons beside it (neurons.png, and a panel beside the cells in atlas.html); ``layers.html`` switches
between all the atlases (e.g. the narrowest and the widest width) in one page.  The result records, per
atlas, its cell purity: the count-weighted mean share of a cell's dominant class, and how many classes
dominate at least one cell.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from atlases.hooks import PENULTIMATE, resolve_layer

from .. import fmt
from ..errors import WidthkitError
from ..plots import figure, save
from ..progress import info, warn
from ..results import Result
from ..validate import PositiveInt, UnitFraction
from .atlas_width import (NeuronGroupWidths, atlas_applies, measure_neuron_group, neuron_group_reading,
                          neuron_group_table, plot_neuron_group)
from .base import Analysis, Block, Figure, Link, Subject, Table, opt, register_analysis


@dataclass
class AtlasOptions:
    """Options of ``atlas`` (recipe table ``[atlas]``); quick by default (tens of seconds per atlas on a CPU)."""

    widths: list[int] = opt([], "widths to atlas (default: the narrowest and the widest finished)")
    seed: int = opt(-1, "member seed (-1: the first)")
    step: int = opt(-1, "snapshot step to read the members at (-1: the end of training)")
    layer: str = opt(PENULTIMATE, "module to atlas and probe (penultimate: the classifier's input)")
    layers: list[str] = opt([], "several modules, one atlas each (comma- or space-separated; overrides layer)")
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
    icons: Literal["optimize", "examples"] = opt("optimize", "icons: optimize (feature visualization) or examples "
                                                 "(each cell's average input)")
    k: PositiveInt = opt(10, "single neurons shown beside each atlas; neurons and PCA directions of the group probes")
    probes: bool = opt(True, "run the neuron-vs-group probes over every width and seed")
    examples: PositiveInt = opt(1000, "training inputs per neuron-vs-group probe")


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
    neurons: list[int]                 # the k most class-selective neurons, shown in <folder>/neurons.png
    neuron_labels: list[int]           # the class each pushes up most
    neuron_selectivity: list[float]    # train accuracy of each one's one-neuron linear discriminant
    labels_dominant: float             # share of cells whose label is their dominant member class


@dataclass
class AtlasRunResult(Result):
    schema_version = 2          # 2: the neuron-vs-group probes, cell labels and neuron atlases
    run: str
    atlases: list[MemberAtlas]
    probes: NeuronGroupWidths | None = None


def atlas_folder(label: str, layer: str) -> str:
    """The folder name of an atlas, e.g. ``w256-s0-act1``."""
    return f"{label}-{layer.replace('.', '_')}"


def cell_purity(layout_json: Path) -> tuple[float, int, int, float]:
    """(count-weighted dominant-class share per cell, classes dominating a cell, classes, share of cells
    whose label is their dominant class) of a saved layout."""
    d = json.loads(Path(layout_json).read_text())
    mix = np.asarray(d.get("class_mix") or [], float)
    if mix.ndim != 2 or not len(mix) or mix.sum() <= 0:
        return float("nan"), 0, 0, float("nan")
    tot = mix.sum(1)
    ok = tot > 0
    effect = np.asarray(d.get("effect") or [], float)
    agree = float(np.mean(effect.argmax(1) == mix.argmax(1))) if effect.shape == mix.shape else float("nan")
    return (float(mix[ok].max(1).sum() / tot[ok].sum()), len(set(mix[ok].argmax(1).tolist())), int(mix.shape[1]),
            agree)


def atlas_layers(o: AtlasOptions) -> list[str]:
    """The layers to atlas: ``layers`` (commas split) or else ``layer``."""
    return [n for item in o.layers for n in item.split(",") if n] or [o.layer]


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
        alive = view.trained_seeds(w)
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


def plot_neurons_vs_groups(shown: list[MemberAtlas], folder: Path, path: Path) -> Path:
    """Per member (columns): its k most class-selective single neurons above its atlas of groups."""
    fig, axes = figure(ncols=len(shown), nrows=2, size=(5.2, 3.0), gridspec_kw={"height_ratios": [1, 5]})
    for j, m in enumerate(shown):
        top, bottom = axes[0][j], axes[1][j]
        top.imshow(mpimg.imread(Path(folder) / m.folder / "neurons.png"), interpolation="nearest")
        top.set_title(f"width {m.width}, {m.layer}: the {len(m.neurons)} most class-selective single neurons\n"
                      "(caption n<index>:<class it pushes up most>)", fontsize=9)
        bottom.imshow(mpimg.imread(Path(folder) / m.folder / "atlas.png"), interpolation="nearest")
        bottom.set_title(f"atlas of groups: {m.n_cells} cells (corner: class pushed up most)", fontsize=9)
        top.axis("off")
        bottom.axis("off")
    return save(fig, path)


def neurons_reading(members: list[MemberAtlas]) -> str:
    """One sentence: how many classes the most selective single neurons cover vs the atlas cells."""
    parts = [f"N={m.width}: its {len(m.neurons)} most class-selective neurons push up "
             f"{len(set(m.neuron_labels))} distinct classes (one-neuron selectivity "
             f"{fmt.pct(min(m.neuron_selectivity))}-{fmt.pct(max(m.neuron_selectivity))}) while its atlas cells "
             f"are dominated by {m.classes_dominating} of {m.classes} classes" for m in members if m.neurons]
    return "; ".join(parts)


@register_analysis
class Atlas(Analysis):
    name = "atlas"
    order = 30
    help = "activation atlases (UMAP grid of feature-visualized cell directions) of ladder members"
    Options = AtlasOptions
    Result = AtlasRunResult
    smoke = {"max_vectors": 200, "grid": 3, "min_count": 1, "size": 8, "steps": 2, "k": 3, "examples": 200}

    def applies(self, subject: Subject, o: AtlasOptions) -> str:
        return atlas_applies(subject.recipe)

    def prepare(self, o: AtlasOptions) -> None:
        from atlases.layout import warm_numba_cache_in_background
        warm_numba_cache_in_background()  # UMAP's first compile (~20 s) overlaps the training

    def compute(self, subject: Subject, o: AtlasOptions) -> AtlasRunResult:
        import atlases
        view = subject.require_point(self.name)
        layers = atlas_layers(o)
        task = view.task()
        probes = measure_neuron_group(view, layers[0], k=o.k, examples=o.examples) if o.probes else None
        out = []
        for w, seed in _members(view, o):
            model = view.load_member(w, seed, step=None if o.step < 0 else o.step)
            for layer in [resolve_layer(model, n) for n in layers]:
                folder = atlas_folder(f"w{w}-s{seed}", layer)
                info(f"atlas of width {w} (seed {seed}), layer {layer}")
                common = dict(max_vectors=o.max_vectors, positions_per_image=o.positions, grid=o.grid,
                              min_count=o.min_count, n_neighbors=o.neighbors, size=o.size, steps=o.steps,
                              whiten=o.whiten, seed=seed, icons=o.icons)
                data = (task.x_train, task.y_train)
                if o.class_index >= 0:
                    a = atlases.class_atlas(model, layer, data, o.class_index, subject.out / folder, keep=o.keep,
                                            **common)
                else:
                    a = atlases.make_atlas(model, layer, data, subject.out / folder, neurons=o.k, **common)
                pur, dom, classes, agree = cell_purity(Path(a.layout_json))
                out.append(MemberAtlas(w, seed, layer, folder, a.grid, a.n_vectors, a.n_cells, pur, dom, classes,
                                       dict(a.seconds), a.neurons, a.neuron_labels, a.neuron_selectivity,
                                       agree))
        if len(out) > 1:
            atlases.write_layers_html([subject.out / m.folder for m in out], subject.out / "layers.html",
                                      [f"width {m.width}, {m.layer}" for m in out])
        return AtlasRunResult(str(view.path), out, probes)

    def plot(self, res: AtlasRunResult, folder: Path) -> list[Path]:
        files = []
        if res.probes is not None:
            fig, axes = figure()
            plot_neuron_group(res.probes, axes[0][0])
            files.append(save(fig, Path(folder) / "neuron_vs_group.png"))
        shown = [m for m in res.atlases if m.neurons]
        if shown:
            files.append(plot_neurons_vs_groups(shown, folder, Path(folder) / "neurons_vs_groups.png"))
        return files

    def blocks(self, res: AtlasRunResult, folder: Path) -> list[Block]:
        folder = Path(folder)
        b = Block(self.name, "Activation atlases")
        if res.probes is not None:
            line = neuron_group_reading(res.probes)
            b.lines.append(line)
            b.tables.append(neuron_group_table(res.probes))
            b.figures.append(Figure(folder / "neuron_vs_group.png", line))
        if any(m.neurons for m in res.atlases):
            b.figures.append(Figure(folder / "neurons_vs_groups.png", neurons_reading(res.atlases)))
        if (folder / "layers.html").is_file():
            b.links.append(Link("one viewer page for every atlas (width, layer; single neurons beside the cells)",
                                folder / "layers.html"))
        rows = []
        for m in res.atlases:
            d = folder / m.folder
            label = f"width {m.width} (seed {m.seed})"
            b.figures.append(Figure(d / "atlas.png", f"{label}, layer {m.layer}: {m.n_cells} cells from "
                                    f"{m.n_vectors} activations; a cell is {fmt.pct(m.purity)} one class on average, "
                                    f"{m.classes_dominating} of {m.classes} classes dominate at least one cell, and "
                                    f"{fmt.pct(m.labels_dominant)} of the cells push up their dominant class most "
                                    "(the label in each cell's corner)"))
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
