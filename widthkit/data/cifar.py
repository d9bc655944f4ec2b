"""``cifar10`` and ``cifar100`` (option ``label="fine"|"coarse"``): the python pickle batches from
https://www.cs.toronto.edu/~kriz/cifar.html, extracted under ``root``; ``(3, 32, 32)``.

The batches are pickles, and unpickling can run arbitrary code, so they are read with an unpickler that
only rebuilds numpy arrays, bytes and builtin containers: a file that asks for anything else is refused.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from widthkit.data.registry import cache, register_task
from widthkit.data.source import Built, Request, channel_stats, check_classes, labels, select, standardize
from widthkit.errors import WidthkitError, unknown

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# On-disk layout of the python versions, as in torchvision.datasets.CIFAR10/CIFAR100 (tests check they agree;
# spelled out here so loading does not import torchvision).
CIFAR_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", key="label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     key="fine_label_names"),
}


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (always latin-1)."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"bytes encoded as '{encoding}'")
    return text.encode("latin1")


_ALLOWED = {  # every global a CIFAR batch (python 2 or 3, numpy 1 or 2) refers to
    ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _DataUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays, bytes and builtin containers (no arbitrary callables)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'")
        return _ALLOWED[(module, name)]


def _read_pickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _DataUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise WidthkitError(f"{name}: cannot read '{path}' ({exc}); re-extract the archive from {CIFAR_URL}")
    if not isinstance(entry, dict):
        raise WidthkitError(f"{name}: '{path}' is not a CIFAR batch (no dict inside); re-extract it from {CIFAR_URL}")
    return entry


@cache(maxsize=2)
def _cifar_raw(name: str, root: str) -> dict:
    """Raw uint8 CIFAR arrays [N,3,32,32] and labels, read from the python pickle batches.

    Same files, keys and parsing as torchvision's CIFAR10/CIFAR100.  We read the pickles ourselves instead of
    instantiating those classes because (a) torchvision only exposes fine labels, and the coarse CIFAR-100
    labels live in the same pickles, (b) torchvision insists on the md5 of the official archive; we never
    download, so we read the files the user placed (a truncated or foreign file still fails loudly when
    unpickled or reshaped below), and (c) torchvision unpickles them without restriction.
    """
    lay = CIFAR_LAYOUT[name]
    folder = Path(root) / lay["folder"]
    if not folder.is_dir():
        raise WidthkitError(f"{name} not found under '{root}': put the extracted '{lay['folder']}' folder there "
                            f"(from {CIFAR_URL}), or set data.root")
    out: dict = {}
    for split in ("train", "test"):
        data, fine, coarse = [], [], []
        for fname in lay[split]:
            path = folder / fname
            if not path.is_file():
                raise WidthkitError(f"{name}: missing '{fname}' in '{folder}'; extract the full archive from "
                                    f"{CIFAR_URL} there")
            entry = _read_pickle(path, name)
            try:
                data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                fine.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
                coarse.extend(entry.get("coarse_labels", []))
            except (KeyError, ValueError) as exc:
                raise WidthkitError(f"{name}: '{path}' is not a CIFAR batch ({exc}); re-extract it from {CIFAR_URL}")
        out[split] = (np.concatenate(data), np.asarray(fine, dtype=np.int64), np.asarray(coarse, dtype=np.int64))
    meta_path = folder / lay["meta"]
    if not meta_path.is_file():
        raise WidthkitError(f"{name}: missing '{lay['meta']}' in '{folder}'; extract the full archive "
                            f"from {CIFAR_URL} there")
    meta = _read_pickle(meta_path, name)
    try:
        out["fine_names"] = list(meta[lay["key"]])
    except KeyError:
        raise WidthkitError(f"{name}: '{meta_path}' has no '{lay['key']}'; re-extract it from {CIFAR_URL}")
    out["coarse_names"] = list(meta.get("coarse_label_names", []))
    return out


def _build_cifar(req: Request, label: str) -> Built:
    raw = _cifar_raw(req.name, req.root)
    (xtr, ytr, ctr), (xte, yte, cte) = raw["train"], raw["test"]
    names = raw["fine_names"]
    if label == "coarse":
        ytr, yte, names = ctr, cte, raw["coarse_names"]
    check_classes(req, len(names))
    mean, std = channel_stats(xtr, 255.0)
    xtr, ytr = select(req, "train", xtr, ytr)
    xte, yte = select(req, "test", xte, yte)
    return Built("classification", (3, 32, 32), len(names), standardize(xtr, mean, std, 255.0), labels(ytr),
                 standardize(xte, mean, std, 255.0), labels(yte), class_names=names)


@register_task("cifar10")
def build_cifar10(req: Request) -> Built:
    return _build_cifar(req, "fine")


@register_task("cifar100")
def build_cifar100(req: Request, *, label: str = "fine") -> Built:
    if label not in ("fine", "coarse"):
        raise unknown("cifar100 label", label, ["fine", "coarse"])
    return _build_cifar(req, label)
