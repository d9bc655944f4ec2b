"""atlases: activation atlases (Carter et al. 2019) for any PyTorch module, timm models included.

Pipeline, one small module per step::

    acts = atlases.collect(model, "layer3", data, max_vectors=100_000, out="acts.h5")   # hooks -> HDF5
    lay = atlases.layout(acts, grid=12, n_neighbors=20, pca=50, seed=0)                # UMAP -> grid cells
    icons = atlases.render_icons(model, "layer3", lay, size=64, steps=128)             # one batched lucent run
    atlases.compose_png(lay, icons, "atlas.png"); atlases.write_html(lay, icons, "atlas.html", acts=acts)

or everything at once with :func:`make_atlas` (and :func:`class_atlas` for one class).
"""
from .collect import Activations, collect, load_activations
from .compose import compose, compose_png
from .hooks import PENULTIMATE, extract_features, get_layer, layer_names, penultimate_layer
from .layout import Layout, bin_cells, cell_stats, embed, layout, load_layout, normalize
from .probe import NeuronGroup, neuron_vs_group, probe_accuracy
from .pipeline import AtlasResult, class_atlas, make_atlas, rerender, top_attributed, write_atlas
from .render import render_directions, render_icons, standard_transforms, whiten_directions
from .viewer import write_html

__all__ = [
    "PENULTIMATE", "extract_features", "penultimate_layer",
    "Activations", "AtlasResult", "Layout", "bin_cells", "cell_stats", "class_atlas", "collect", "compose",
    "compose_png", "embed", "get_layer", "layer_names", "layout", "load_activations", "load_layout",
    "make_atlas", "NeuronGroup", "neuron_vs_group", "normalize", "probe_accuracy", "render_directions", "render_icons", "rerender", "standard_transforms",
    "top_attributed", "whiten_directions", "write_atlas", "write_html",
]
