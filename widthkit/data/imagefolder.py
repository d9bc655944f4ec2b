"""``imagefolder``: ``root`` holds one folder of images per class (or ``train/`` and ``test/`` folders of such).

Images are resized to ``size x size`` (option ``size=32``) RGB.  Without ``train/``/``test/`` each class is
split deterministically (``test_fraction=0.2`` of every class goes to test, shuffled with ``seed``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np

from widthkit.data.registry import register_task
from widthkit.data.source import (Built, Request, channel_stats, check_classes, labels, seed_from, select,
                                  standardize)
from widthkit.errors import WidthkitError
from widthkit.progress import track
from widthkit.validate import PositiveInt, Range


def _read_folder(path: Path, size: int):
    """All images of an ImageFolder as uint8 [N,3,size,size], labels, class names."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    try:
        ds = ImageFolder(str(path), transform=transforms.Compose(
            [transforms.Resize((size, size)), transforms.PILToTensor()]))
    except (FileNotFoundError, OSError) as exc:
        raise WidthkitError(f"imagefolder: no images under '{path}' ({exc}); set data.root to a folder with one "
                            f"subfolder of images per class")
    x = np.empty((len(ds), 3, size, size), dtype=np.uint8)
    for i in track(range(len(ds)), f"reading {path.name}"):
        x[i] = ds[i][0].numpy()
    return x, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


@register_task("imagefolder")
def build_imagefolder(req: Request, *, size: PositiveInt = 32,
                      test_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.2) -> Built:
    root = Path(req.root)
    if not root.is_dir():
        raise WidthkitError(f"imagefolder not found: '{root}' does not exist; set data.root to a folder with one "
                            f"subfolder of images per class (or train/ and test/ folders of such)")
    rng = np.random.default_rng(seed_from(req.seed, 3))
    if (root / "train").is_dir() and (root / "test").is_dir():
        xtr, ytr, names = _read_folder(root / "train", size)
        xte, yte, names_te = _read_folder(root / "test", size)
        if names_te != names:
            raise WidthkitError(f"imagefolder: '{root / 'train'}' and '{root / 'test'}' have different class "
                                f"folders; give both the same classes")
        ptr, pte = rng.permutation(len(ytr)), rng.permutation(len(yte))
        xtr, ytr, xte, yte = xtr[ptr], ytr[ptr], xte[pte], yte[pte]
    else:
        x, y, names = _read_folder(root, size)
        test_mask = np.zeros(len(y), dtype=bool)
        for c in range(len(names)):  # stratified: the same fraction of every class goes to test
            idx = rng.permutation(np.flatnonzero(y == c))
            test_mask[idx[:int(round(test_fraction * len(idx)))]] = True
        itr, ite = rng.permutation(np.flatnonzero(~test_mask)), rng.permutation(np.flatnonzero(test_mask))
        xtr, ytr, xte, yte = x[itr], y[itr], x[ite], y[ite]
    if len(ytr) == 0 or len(yte) == 0:
        raise WidthkitError(f"imagefolder: '{root}' gives {len(ytr)} train and {len(yte)} test images; "
                            f"add images or change test_fraction")
    check_classes(req, len(names))
    mean, std = channel_stats(xtr, 255.0)
    xtr, ytr = select(req, "train", xtr, ytr)
    xte, yte = select(req, "test", xte, yte)
    return Built("classification", (3, size, size), len(names), standardize(xtr, mean, std, 255.0),
                 labels(ytr), standardize(xte, mean, std, 255.0), labels(yte), class_names=names)
