"""One-call atlases: collect -> layout -> render -> compose, and class atlases."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from torch import nn

from widthkit.errors import WidthkitError
from widthkit.progress import info
from widthkit.results import Result

from .collect import Activations, collect
from .compose import compose_png, compose_row
from .labels import logit_effects
from .layout import Layout, layout as make_layout, load_layout
from .probe import selectivity
from .render import render_icons, render_neurons
from .viewer import write_html


@dataclasses.dataclass
class AtlasResult(Result):
    """What :func:`make_atlas` wrote, plus sizes and timings (seconds)."""

    layer: str
    grid: int
    n_vectors: int
    n_cells: int
    out_dir: str
    png: str
    html: str
    layout_h5: str
    layout_json: str
    activations: str
    seconds: dict
    class_index: int | None = None
    neurons: list[int] = dataclasses.field(default_factory=list)           # most class-selective first
    neuron_selectivity: list[float] = dataclasses.field(default_factory=list)
    neuron_labels: list[int] = dataclasses.field(default_factory=list)     # class each neuron pushes up most
    neurons_png: str = ""

    def __str__(self) -> str:
        t = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        return (f"atlas of {self.layer}: {self.n_cells} cells from {self.n_vectors} activations -> "
                f"{self.png}, {self.html} ({t})")


def write_atlas(model: nn.Module, lay: Layout, out_dir: str | Path, *, acts: Activations | None = None,
                layer: str | None = None, size: int = 64, steps: int = 128, batch: int | None = None,
                memory_mb: float = 1024, whiten: bool = False, cossim_pow: float = 1.0, seed: int = 0,
                density_alpha: bool = False, class_names=None, title: str | None = None,
                image_shape=None, icons: str = "optimize", index: np.ndarray | None = None, neurons=None
                ) -> tuple[np.ndarray, dict]:
    """Render icons for ``lay`` and write atlas.png, atlas.html, layout.h5, layout.json into ``out_dir``
    (``neurons = (pictures, captions)``: single neurons shown beside the cells in atlas.html)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pics = render_icons(model, layer, lay, size=size, steps=steps, batch=batch, memory_mb=memory_mb,
                        whiten=whiten, cossim_pow=cossim_pow, seed=seed, image_shape=image_shape, acts=acts,
                        icons=icons, index=index)
    t1 = time.perf_counter()
    lay.save(out / "layout.h5")
    lay.save(out / "layout.json")
    compose_png(lay, pics, out / "atlas.png", density_alpha=density_alpha, class_names=class_names)
    write_html(lay, pics, out / "atlas.html", acts=acts, title=title, class_names=class_names,
               density_alpha=density_alpha, neurons=neurons)
    return pics, {"render": t1 - t0, "compose": time.perf_counter() - t1}


def rerender(model: nn.Module, layout_path: str | Path, out_dir: str | Path, **render_opts) -> AtlasResult:
    """Re-render an atlas from a saved ``layout.h5`` without recollecting activations."""
    lay = load_layout(layout_path)
    _, secs = write_atlas(model, lay, out_dir, **render_opts)
    return _result(lay, out_dir, secs, str(lay.meta.get("activations", "")))


def _result(lay: Layout, out_dir, secs, acts_path, class_index=None, **neurons) -> AtlasResult:
    out = Path(out_dir)
    return AtlasResult(layer=lay.meta.get("layer", ""), grid=lay.grid, n_vectors=int(lay.meta.get("n_vectors", 0)),
                       n_cells=lay.n_cells, out_dir=str(out), png=str(out / "atlas.png"),
                       html=str(out / "atlas.html"), layout_h5=str(out / "layout.h5"),
                       layout_json=str(out / "layout.json"), activations=acts_path, seconds=secs,
                       class_index=class_index, **neurons)


def most_selective(acts: Activations, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the ``k`` most class-selective neurons, best first; every neuron's selectivity) of the collected
    vectors (:func:`atlases.probe.selectivity`)."""
    if acts.labels is None:
        raise WidthkitError("neuron atlases rank neurons by class selectivity; collect with labels")
    sel = selectivity(acts.vectors(), acts.labels)
    return np.argsort(-sel, kind="stable")[:k], sel


def neuron_atlas(model: nn.Module, layer: str, lay: Layout, acts: Activations, k: int, out_dir: str | Path, *,
                 effects: np.ndarray | None = None, size: int = 64, steps: int = 128, seed: int = 0,
                 image_shape=None, class_names=None) -> tuple[dict, tuple[np.ndarray, list[str]]]:
    """The ``k`` most class-selective single neurons of ``layer`` (:func:`most_selective`), feature-visualized
    like the cells, in ``neurons.png`` captioned ``n<index>:<class it pushes up most>`` (from ``effects [k, C]``,
    their effects on the logits from :func:`atlases.labels.logit_effects`).  Returns the
    :class:`AtlasResult` fields and (pictures ``[k, size, size, C]``, captions) for the viewer's panel."""
    top, sel = most_selective(acts, k)
    pics = render_neurons(model, layer, top, lay, acts=acts, size=size, steps=steps, seed=seed,
                          image_shape=image_shape)
    push = [] if effects is None else [int(c) for c in effects.argmax(1)]
    name = (lambda c: class_names[c] if class_names else str(c))  # noqa: E731
    caps = [f"n{j}" + (f":{name(push[i])}" if push else "") for i, j in enumerate(top)]
    png = compose_row(pics, caps, Path(out_dir) / "neurons.png")
    return dict(neurons=[int(j) for j in top], neuron_selectivity=[float(sel[j]) for j in top],
                neuron_labels=push, neurons_png=str(png)), (pics, caps)


def make_atlas(model: nn.Module, layer: str, data, out_dir: str | Path, *, max_vectors: int = 10_000,
               positions_per_image: int = 1, grid: int = 12, min_count: int = 3, n_neighbors: int = 20,
               pca: int | None = 50, fit_max: int = 20_000, size: int = 64, steps: int = 128,
               batch: int | None = None, memory_mb: float = 1024, whiten: bool = False,
               cossim_pow: float = 1.0, seed: int = 0, image_shape=None, density_alpha: bool = False,
               class_names=None, batch_size: int = 256, acts: Activations | None = None,
               labels: bool = True, neurons: int = 0, icons: str = "optimize") -> AtlasResult:
    """Collect ``layer`` over ``data``, lay it out, render one icon per cell, write the atlas files.

    Writes ``activations.h5``, ``layout.h5`` (full record, reloadable with
    :func:`atlases.load_layout`), ``layout.json``, ``atlas.png`` and ``atlas.html`` into ``out_dir``.
    Pass ``acts`` to reuse collected activations.  ``labels`` labels each cell with the class its mean
    activation pushes up most (:func:`atlases.labels.logit_effects`; the model must output logits);
    ``neurons=k`` also renders the k most class-selective single neurons (:func:`neuron_atlas`), in
    neurons.png and beside the cells in atlas.html;
    ``icons="examples"`` shows each cell's average input instead of a feature visualization.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    if acts is None:
        acts = collect(model, layer, data, max_vectors=max_vectors, positions_per_image=positions_per_image,
                       out=out / "activations.h5", seed=seed, batch_size=batch_size, image_shape=image_shape)
    t1 = time.perf_counter()
    lay = make_layout(acts, grid, min_count=min_count, n_neighbors=n_neighbors, pca=pca, fit_max=fit_max,
                      seed=seed)
    t2 = time.perf_counter()
    effects = None
    if labels:
        top = most_selective(acts, neurons)[0] if neurons > 0 else []
        lay.effect, effects = logit_effects(model, layer, data, acts, lay,
                                            directions=np.eye(acts.dim)[top] if len(top) else None)
    t3 = time.perf_counter()
    extra, strip = neuron_atlas(model, layer, lay, acts, neurons, out, effects=effects, size=size, steps=steps,
                                seed=seed, image_shape=image_shape, class_names=class_names) if neurons > 0 \
        else ({}, None)
    t4 = time.perf_counter()
    info(f"atlas {layer}: {acts.n} activations -> {lay.n_cells} cells; rendering icons")
    _, secs = write_atlas(model, lay, out, acts=acts, layer=layer, size=size, steps=steps, batch=batch,
                          memory_mb=memory_mb, whiten=whiten, cossim_pow=cossim_pow, seed=seed,
                          density_alpha=density_alpha, class_names=class_names, image_shape=image_shape,
                          icons=icons, neurons=strip)
    secs = {"collect": t1 - t0, "layout": t2 - t1, "labels": t3 - t2, "neurons": t4 - t3, **secs}
    return _result(lay, out, secs, str(acts.path), **extra)


def top_attributed(acts: Activations, keep: float | int) -> np.ndarray:
    """Indices of the vectors with the highest stored attribution (a fraction or a count)."""
    attr = acts.read("attribution")
    if attr is None:
        raise WidthkitError("these activations have no attribution; collect with attribute_class=C")
    k = int(round(keep * len(attr))) if isinstance(keep, float) and keep <= 1 else int(keep)
    k = max(3, min(len(attr), k))
    return np.sort(np.argsort(-attr, kind="stable")[:k])


def class_atlas(model: nn.Module, layer: str, data, class_index: int, out_dir: str | Path, *,
                keep: float | int = 0.1, max_vectors: int = 10_000, positions_per_image: int = 1,
                grid: int = 8, min_count: int = 2, n_neighbors: int = 20, pca: int | None = 50,
                fit_max: int = 20_000, size: int = 64, steps: int = 128, batch: int | None = None,
                memory_mb: float = 1024, whiten: bool = False, cossim_pow: float = 1.0, seed: int = 0,
                image_shape=None, class_names=None, batch_size: int = 256, labels: bool = True,
                icons: str = "optimize") -> AtlasResult:
    """lucid's class activation atlas: keep the activations whose attribution toward
    ``class_index`` (gradient x activation of that logit, summed over channels) is highest
    (``keep``: fraction or count), then lay out and render only those."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    acts = collect(model, layer, data, max_vectors=max_vectors, positions_per_image=positions_per_image,
                   out=out / "activations.h5", seed=seed, batch_size=batch_size, image_shape=image_shape,
                   attribute_class=class_index)
    idx = top_attributed(acts, keep)
    t1 = time.perf_counter()
    lay = make_layout(acts, grid, min_count=min_count, n_neighbors=n_neighbors, pca=pca, fit_max=fit_max,
                      seed=seed, index=idx)
    lay.meta["class_index"] = int(class_index)
    if labels:
        lay.effect, _ = logit_effects(model, layer, data, acts, lay, index=idx)
    t2 = time.perf_counter()
    name = class_names[class_index] if class_names else class_index
    _, secs = write_atlas(model, lay, out, acts=acts, layer=layer, size=size, steps=steps, batch=batch,
                          memory_mb=memory_mb, whiten=whiten, cossim_pow=cossim_pow, seed=seed,
                          class_names=class_names, title=f"class atlas '{name}': {layer}",
                          image_shape=image_shape, icons=icons, index=idx)
    return _result(lay, out, {"collect": t1 - t0, "layout": t2 - t1, **secs}, str(acts.path), class_index)
