"""``widthkit atlas``: an activation atlas of one ladder member, or of any timm model with local weights.

    widthkit atlas RUN --width W --seed S [--layer L] [--out DIR]
    widthkit atlas --timm NAME --checkpoint FILE --data digits|cifar10:ROOT|cifar100:ROOT|imagefolder:PATH
                   [--image-size S] [--layer L] --out DIR

Activations are collected on the training inputs of the run's task (the same data,
shapes and normalization the member was trained on). The default layer is the
penultimate one: the last module that runs before the classifier.
"""
from __future__ import annotations

from pathlib import Path

NAME = "atlas"
HELP = "Activation atlas (UMAP grid of feature-visualized cell directions) of a ladder member or a timm model."


def add_arguments(p) -> None:
    p.add_argument("run", nargs="?", default=None, help="run directory (from 'widthkit train')")
    p.add_argument("--width", type=int, default=None, help="member width (default: the widest)")
    p.add_argument("--seed", type=int, default=None, help="member seed (default: the first)")
    p.add_argument("--timm", default=None, metavar="NAME", help="a timm model name instead of a run")
    p.add_argument("--checkpoint", default=None, help="local weights for --timm (a state dict file)")
    p.add_argument("--data", default=None,
                   help="images for --timm: digits (built in), cifar10:ROOT, cifar100:ROOT or imagefolder:PATH")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size for --timm (default: the model's for image folders, 32 otherwise); "
                        "images are resized and made 3-channel to fit")
    p.add_argument("--layer", default=None, help="module name to atlas (default: penultimate)")
    p.add_argument("--class", dest="class_index", type=int, default=None,
                   help="class atlas: keep the activations most attributed to this class")
    p.add_argument("--keep", type=float, default=0.1, help="fraction kept for --class")
    p.add_argument("--max-vectors", type=int, default=10_000)
    p.add_argument("--positions", type=int, default=1, help="random spatial positions per image (conv layers)")
    p.add_argument("--grid", type=int, default=12)
    p.add_argument("--min-count", type=int, default=3)
    p.add_argument("--neighbors", type=int, default=20, help="UMAP n_neighbors")
    p.add_argument("--size", type=int, default=48, help="icon size in pixels")
    p.add_argument("--steps", type=int, default=128, help="optimization steps per icon")
    p.add_argument("--whiten", action="store_true", help="whiten directions by the activation covariance")
    p.add_argument("--out", default=None, help="output folder (default: RUN/atlas/w<W>-s<S>-<layer>)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def default_layer(model) -> str:
    """The last leaf module registered before the classifier (its output is the penultimate feature)."""
    from ..errors import WidthkitError
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    prev = None
    for name, mod in model.named_modules():
        if head is not None and mod is head:
            break
        if name and not list(mod.children()):
            prev = name
    if prev is None:
        raise WidthkitError("cannot tell the penultimate layer of this model; pass --layer NAME")
    return prev


def load_member(args):
    """(model, x, y, out_dir, label) for a ladder member."""
    from ..errors import WidthkitError
    from ..store import open_run
    run = open_run(args.run)
    if not run.widths:
        raise WidthkitError(f"run '{args.run}' has no finished widths yet; train it first")
    width = run.widths[-1] if args.width is None else args.width
    if width not in run.widths:
        raise WidthkitError(f"width {width} is not finished in '{args.run}'; finished: {run.widths}")
    seed = run.seeds[0] if args.seed is None else args.seed
    model = run.load_member(width, seed)
    task = run.task()
    if task.kind != "classification" and args.class_index is not None:
        raise WidthkitError("--class needs a classification task")
    y = task.y_train if task.kind == "classification" else None
    return model, task.x_train, y, Path(args.run), f"w{width}-s{seed}"


def atlas_folder(label: str, layer: str) -> str:
    """The default folder name of an atlas, e.g. ``w256-s0-act1`` (``widthkit study`` uses it too)."""
    return f"{label}-{layer.replace('.', '_')}"


IMAGE_DATA = ("digits", "cifar10", "cifar100", "imagefolder")


def load_timm(args):
    """(model, x, y, out_dir, label) for a timm model with local weights, on 3-channel images."""
    import timm
    import torch
    import torch.nn.functional as F

    from ..data import load_task
    from ..errors import WidthkitError, unknown
    if not args.checkpoint or not args.data:
        raise WidthkitError("--timm needs --checkpoint FILE and --data digits|cifar10:ROOT|imagefolder:PATH "
                            "(nothing is downloaded)")
    kind, _, root = args.data.partition(":")
    if kind not in IMAGE_DATA:
        raise unknown("--data kind", kind, IMAGE_DATA)
    if kind != "digits" and not root:
        raise WidthkitError(f"--data {kind} needs the folder it lives in: --data {kind}:PATH")
    if not Path(args.checkpoint).is_file():
        raise WidthkitError(f"checkpoint '{args.checkpoint}' not found; give a local state-dict file")
    if timm.list_models(args.timm) != [args.timm]:
        raise unknown("timm model", args.timm, timm.list_models())
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    cfg = timm.create_model(args.timm, pretrained=False).pretrained_cfg
    size = args.image_size or (int(cfg.get("input_size", (3, 224, 224))[-1]) if kind == "imagefolder" else 32)
    kw = {"pretrained": False}
    head = f"{cfg.get('classifier', 'head')}.weight"
    if head in state:
        kw["num_classes"] = int(state[head].shape[0])
    try:  # models with a fixed input size (ViTs) are built for the data's size
        model = timm.create_model(args.timm, img_size=size, **kw)
    except TypeError:
        model = timm.create_model(args.timm, **kw)
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise WidthkitError(f"checkpoint does not fit {args.timm} at image size {size}: {first}; "
                            "pass the --image-size it was trained at") from None
    if missing:
        raise WidthkitError(f"checkpoint does not fit {args.timm}: {len(missing)} missing keys "
                            f"(e.g. {missing[0]}); is it a state dict of this model?")
    task = load_task(kind, root=root, **({"size": size} if kind == "imagefolder" else {}))
    x = task.x_train.reshape(len(task.x_train), *task.in_shape)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    out = Path(root) if root else Path("runs")
    return model.eval(), x.contiguous(), task.y_train, out, args.timm.replace("/", "_")


def run(args) -> int:
    import atlases

    from ..errors import WidthkitError
    from ..progress import info
    if (args.run is None) == (args.timm is None):
        raise WidthkitError("give either RUN or --timm NAME (with --checkpoint and --data)")
    model, x, y, base, label = load_member(args) if args.run else load_timm(args)
    layer = args.layer or default_layer(model)
    atlases.get_layer(model, layer)
    out = Path(args.out) if args.out else base / "atlas" / atlas_folder(label, layer)
    data = (x, y) if y is not None else x
    common = dict(max_vectors=args.max_vectors, positions_per_image=args.positions, grid=args.grid,
                  min_count=args.min_count, n_neighbors=args.neighbors, size=args.size, steps=args.steps,
                  whiten=args.whiten)
    if args.class_index is not None:
        res = atlases.class_atlas(model, layer, data, args.class_index, out, keep=args.keep, **common)
    else:
        res = atlases.make_atlas(model, layer, data, out, **common)
    if args.json:
        print(res.to_json())
    else:
        info(str(res))
    res.save(out / "result.json")
    return 0
