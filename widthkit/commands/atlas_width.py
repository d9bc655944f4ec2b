"""``widthkit atlas-width RUN --layer L``: one atlas per width side by side, and "neuron vs group".

For every finished width, member ``--seed`` gets an activation atlas of ``--layer`` and two
linear probes of its class information: the best *single-neuron* probe and a probe on the
top-k PCA directions (train split fit, test split accuracy; conv/token layers are averaged
over positions for the probes). Writes RUN/atlas-width/<layer>/{atlas_width.json,png}.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..results import Result

NAME = "atlas-width"
HELP = "Activation atlases of one layer across widths, with the per-width neuron-vs-group probe measure."


@dataclasses.dataclass
class AtlasWidthResult(Result):
    """Per width: atlas files, best single-neuron probe accuracy, top-k PCA-direction probe accuracy."""

    run: str
    layer: str
    seed: int
    k: int
    widths: list
    atlas_png: list
    atlas_html: list
    best_neuron: list
    best_neuron_acc: list
    group_acc: list
    n_neurons: list


def add_arguments(p) -> None:
    p.add_argument("run", help="run directory (from 'widthkit train')")
    p.add_argument("--layer", default=None, help="module name (default: penultimate)")
    p.add_argument("--seed", type=int, default=None, help="member seed (default: the first)")
    p.add_argument("--widths", type=int, nargs="*", default=None, help="subset of widths (default: all finished)")
    p.add_argument("--k", type=int, default=10, help="PCA directions for the group probe")
    p.add_argument("--max-vectors", type=int, default=5000)
    p.add_argument("--grid", type=int, default=10)
    p.add_argument("--size", type=int, default=32, help="icon size in pixels")
    p.add_argument("--steps", type=int, default=64, help="optimization steps per icon")
    p.add_argument("--out", default=None, help="output folder (default: RUN/atlas-width/<layer>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _features(model, layer, x, batch=512):
    """Layer features per input (averaged over spatial positions / tokens), numpy [N, D]."""
    import numpy as np
    import torch

    from atlases.hooks import capture, positions
    out = []
    with capture(model, layer) as cap, torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
            out.append(positions(cap.value).mean(1).cpu().numpy())
    return np.concatenate(out)


def run(args) -> int:
    import atlases

    from ..errors import WidthkitError
    from ..plots.atlas import plot_atlas_width
    from ..progress import info
    from ..store import open_run
    from .atlas import default_layer
    r = open_run(args.run)
    task = r.task()
    if task.kind != "classification":
        raise WidthkitError("atlas-width probes class information; the run's task must be a classification task")
    widths = args.widths or r.widths
    bad = [w for w in widths if w not in r.widths]
    if bad or not widths:
        raise WidthkitError(f"widths {bad or widths} not finished in '{args.run}'; finished: {r.widths}")
    seed = r.seeds[0] if args.seed is None else args.seed
    if seed not in r.seeds:
        raise WidthkitError(f"seed {seed} is not in '{args.run}'; seeds: {r.seeds}")
    layer = args.layer
    res = None
    rows = []
    for w in widths:
        model = r.load_member(w, seed)
        layer = layer or default_layer(model)
        atlases.get_layer(model, layer)
        out = Path(args.out) if args.out else Path(args.run) / "atlas-width" / layer.replace(".", "_")
        a = atlases.make_atlas(model, layer, (task.x_train, task.y_train), out / f"w{w}",
                               max_vectors=args.max_vectors, grid=args.grid, size=args.size, steps=args.steps,
                               seed=seed)
        ng = atlases.neuron_vs_group(_features(model, layer, task.x_train), task.y_train.numpy(),
                                     _features(model, layer, task.x_test), task.y_test.numpy(), k=args.k)
        info(f"width {w}: best neuron {ng.best_neuron_acc:.3f}, top-{ng.k} directions {ng.group_acc:.3f}")
        rows.append((w, a, ng))
    res = AtlasWidthResult(run=str(args.run), layer=layer, seed=seed, k=rows[0][2].k, widths=list(widths),
                           atlas_png=[a.png for _, a, _ in rows], atlas_html=[a.html for _, a, _ in rows],
                           best_neuron=[g.best_neuron for *_, g in rows],
                           best_neuron_acc=[g.best_neuron_acc for *_, g in rows],
                           group_acc=[g.group_acc for *_, g in rows], n_neurons=[g.n_neurons for *_, g in rows])
    res.save(out / "atlas_width.json")
    plot_atlas_width(res, out / "atlas_width.png")
    if args.json:
        print(res.to_json())
    else:
        info(f"wrote {out / 'atlas_width.json'} and {out / 'atlas_width.png'}")
    return 0
