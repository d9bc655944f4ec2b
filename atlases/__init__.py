"""atlases: activation atlases (Carter et al. 2019) for any PyTorch module, timm models included.

Pipeline, one small module per step::

    acts = atlases.collect(model, "layer3", data, max_vectors=100_000, out="acts.h5")   # hooks -> HDF5
    lay = atlases.layout(acts, grid=12, n_neighbors=20, pca=50, seed=0)                # UMAP -> grid cells
    lay.effect, _ = atlases.logit_effects(model, "layer3", data, acts, lay)            # lucid's cell labels
    icons = atlases.render_icons(model, "layer3", lay, size=64, steps=128, acts=acts)  # one batched lucent run
    atlases.compose_png(lay, icons, "atlas.png"); atlases.write_html(lay, icons, "atlas.html", acts=acts)

or everything at once with :func:`make_atlas` (and :func:`class_atlas` for one class).
"""
from .collect import Activations, collect, load_activations
from .compose import compose, compose_png
from .hooks import PENULTIMATE, extract_features, get_layer, layer_names, penultimate_layer
from .layout import Layout, bin_cells, cell_stats, embed, layout, load_layout, normalize
from .labels import logit_effects
from .probe import NeuronGroup, neuron_vs_group, probe_accuracy, selectivity
from .pipeline import AtlasResult, class_atlas, make_atlas, neuron_atlas, rerender, top_attributed, write_atlas
from .render import (example_icons, input_prior, render_directions, render_icons, render_neurons,
                     standard_transforms, whiten_directions)
from .viewer import write_html, write_layers_html

__all__ = [
    "PENULTIMATE", "extract_features", "penultimate_layer",
    "Activations", "AtlasResult", "Layout", "bin_cells", "cell_stats", "class_atlas", "collect", "compose",
    "compose_png", "embed", "example_icons", "get_layer", "input_prior", "layer_names", "layout",
    "load_activations", "load_layout", "logit_effects", "make_atlas", "NeuronGroup", "neuron_atlas",
    "neuron_vs_group", "normalize", "probe_accuracy", "render_directions", "render_icons", "render_neurons",
    "rerender", "selectivity", "standard_transforms", "top_attributed", "whiten_directions", "write_atlas",
    "write_html", "write_layers_html",
]
