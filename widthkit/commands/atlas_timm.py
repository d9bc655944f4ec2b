"""``widthkit atlas-timm NAME --checkpoint FILE --data DATA``: an activation atlas of any timm model.

    widthkit atlas-timm resnet18 --checkpoint w.pt --data digits|cifar10:ROOT|cifar100:ROOT|imagefolder:PATH
                       [--image-size S] [--layer L] [atlas options] --out DIR

Local weights only (nothing is downloaded); the checkpoint is read with ``torch.load(weights_only=True)``.
The atlas options are those of the ``atlas`` analysis (``widthkit atlas --help``).
"""
from __future__ import annotations

from pathlib import Path

from ..analyses.atlas import AtlasOptions
from ..analyses.base import option_fields
from ._flags import add_option_flags, given_options

NAME = "atlas-timm"
HELP = "activation atlas of a timm model with local weights, on built-in digits, CIFAR or an image folder"


def add_arguments(p) -> None:
    p.add_argument("timm", metavar="NAME", help="a timm model name")
    p.add_argument("--checkpoint", default=None, help="local weights (a state dict file)")
    p.add_argument("--data", default=None,
                   help="images: digits (built in), cifar10:ROOT, cifar100:ROOT or imagefolder:PATH")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the model's for image folders, 32 otherwise); "
                        "images are resized and made 3-channel to fit")
    add_option_flags(p, [f for f in option_fields(AtlasOptions) if f[0] not in ONLY_LADDERS])
    p.add_argument("--out", default=None, help="output folder (default: DATA_ROOT/atlas/NAME-LAYER)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


IMAGE_DATA = ("digits", "cifar10", "cifar100", "imagefolder")
ONLY_LADDERS = ("widths", "seed", "layers", "probes", "examples")   # atlas options about ladder members


def read_state_dict(path: str) -> dict:
    """The state dict in the checkpoint file ``path`` (plain, or under ``state_dict`` / ``model``).

    Read with ``weights_only=True``: a pickle asking for code, a file that is not a checkpoint and a
    checkpoint holding no state dict are each one :class:`DataError` line.
    """
    import pickle

    import torch

    from ..errors import DataError
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"checkpoint '{path}' asks to run code when loaded (a full pickle, not plain weights); "
                        "refused: save a state dict with torch.save(model.state_dict(), FILE)") from None
    except Exception as e:  # noqa: BLE001 - a parser fed arbitrary bytes fails in arbitrary ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise DataError(f"'{path}' is not a PyTorch checkpoint ({first}); pass a file written by torch.save") \
            from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DataError(f"checkpoint '{path}' holds no state dict (a mapping of names to tensors); save one "
                        "with torch.save(model.state_dict(), FILE)")
    return state


def load_timm(args):
    """(model, x, y, out_dir, label) for a timm model with local weights, on 3-channel images."""
    import timm
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
    state = read_state_dict(args.checkpoint)
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
    from atlases.hooks import resolve_layer

    from ..analyses.atlas import atlas_folder
    from ..progress import info
    from ..analyses import get_analysis
    o = get_analysis("atlas").options(None, **given_options(args, AtlasOptions))
    model, x, y, base, label = load_timm(args)
    layer = resolve_layer(model, o.layer)
    out = Path(args.out) if args.out else base / "atlas" / atlas_folder(label, layer)
    common = dict(max_vectors=o.max_vectors, positions_per_image=o.positions, grid=o.grid, min_count=o.min_count,
                  n_neighbors=o.neighbors, size=o.size, steps=o.steps, whiten=o.whiten, icons=o.icons)
    if o.class_index >= 0:
        res = atlases.class_atlas(model, layer, (x, y), o.class_index, out, keep=o.keep, **common)
    else:
        res = atlases.make_atlas(model, layer, (x, y), out, neurons=o.k, **common)
    res.save(out / "result.json")
    print(res.to_json()) if args.json else info(str(res))
    return 0
