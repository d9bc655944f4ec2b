"""``cifar5m``: shards ``cifar5m_part*.npz`` (arrays ``X`` uint8 ``[N,32,32,3]``, ``Y`` ``[N]``) in ``root`` (or
``root/cifar5m``), memory-mapped.

The last ``n_test`` samples (default 10000) are the test set; ``x_train`` is the first ``n_train`` (default
50000); online mode samples uniformly from everything before the test set.  Normalization statistics come from
the first 50000 images (the same for every class selection).  Arrays are read with ``np.load`` defaults, which
refuse pickled object arrays.
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from widthkit.data.registry import register_task
from widthkit.data.source import Built, Request, channel_stats, check_classes, labels, standardize
from widthkit.data.task import StagedSampler
from widthkit.errors import WidthkitError

_STAT_SAMPLES = 50_000  # images used for the normalization statistics


def npz_array(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz``: memory-mapped when stored uncompressed (np.savez), else read fully."""
    member = key + ".npy"
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
        stored = info.compress_type == zipfile.ZIP_STORED
    if stored:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version in readers:
                shape, fortran, dtype = readers[version](f)
                offset = f.tell()
            else:
                stored = False
        if stored and not dtype.hasobject:
            return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                             order="F" if fortran else "C")
    with np.load(path) as z:
        return z[key]


class _Shards:
    """CIFAR-5m shards as one indexable dataset of uint8 [N,32,32,3] images (memory-mapped)."""

    def __init__(self, paths: list[Path]):
        self.xs, ys = [], []
        for p in paths:
            try:
                x, y = npz_array(p, "X"), npz_array(p, "Y")
            except (KeyError, OSError, ValueError, zipfile.BadZipFile) as exc:
                raise WidthkitError(f"cifar5m: cannot read '{p}' ({exc}); each shard needs arrays X uint8 "
                                    f"[N,32,32,3] and Y [N]")
            if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(y) != len(x):
                raise WidthkitError(f"cifar5m: '{p}' has X {x.shape} and Y {y.shape}; expected X uint8 "
                                    f"[N,32,32,3] and Y [N]")
            self.xs.append(x)
            ys.append(np.asarray(y, dtype=np.int64))
        self.y = np.concatenate(ys)
        self.starts = np.cumsum([0] + [len(x) for x in self.xs])

    def images(self, idx: np.ndarray) -> np.ndarray:
        """Images at global indices ``idx`` as uint8 [n,3,32,32] (read shard by shard in sorted order)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), 32, 32, 3), dtype=np.uint8)
        order = np.argsort(idx, kind="stable")
        shard = np.searchsorted(self.starts, idx[order], side="right") - 1
        for s in np.unique(shard):
            sel = order[shard == s]
            out[sel] = self.xs[s][idx[sel] - self.starts[s]]
        return out.transpose(0, 3, 1, 2)


def _cifar5m_paths(root: str) -> list[Path]:
    for folder in (Path(root), Path(root) / "cifar5m"):
        found = list(folder.glob("cifar5m_part*.npz")) if folder.is_dir() else []
        if found:
            num = lambda p: int(m.group(1)) if (m := re.search(r"part(\d+)", p.stem)) else 0  # noqa: E731
            return sorted(found, key=lambda p: (num(p), p.name))
    raise WidthkitError(f"cifar5m not found under '{root}': put its shards 'cifar5m_part0.npz', "
                        f"'cifar5m_part1.npz', ... (arrays X uint8 [N,32,32,3], Y [N]) there, or set data.root")


@register_task("cifar5m", online=True, n_train=50_000, n_test=10_000)
def build_cifar5m(req: Request) -> Built:
    data = _Shards(_cifar5m_paths(req.root))
    if len(data.y) and not 0 <= data.y.min() <= data.y.max() < 10:
        raise WidthkitError(f"cifar5m: labels Y must be CIFAR-10 classes 0-9, found {data.y.min()}..{data.y.max()}")
    check_classes(req, 10)
    eligible = np.arange(len(data.y)) if req.classes is None else np.flatnonzero(np.isin(data.y, req.classes))
    if len(eligible) <= req.n_test:
        raise WidthkitError(f"cifar5m has {len(eligible)} samples in the chosen classes, not more than "
                            f"n_test={req.n_test}; lower n_test or add shards")
    test_idx, pool = eligible[-req.n_test:], eligible[:-req.n_test]
    if req.n_train > len(pool):
        raise WidthkitError(f"cifar5m has only {len(pool)} training samples in the chosen classes; lower n_train "
                            f"(asked {req.n_train})")
    n_all = len(data.y) - req.n_test  # stats from the first images, the same for every class selection
    stat_idx = np.arange(min(_STAT_SAMPLES, max(n_all, 1)))
    mean, std = channel_stats(data.images(stat_idx), 255.0)
    train_idx = pool[:req.n_train]
    xtr = standardize(data.images(train_idx), mean, std, 255.0)
    xte = standardize(data.images(test_idx), mean, std, 255.0)
    pool_t = torch.from_numpy(pool)

    def draw(n: int, generator: torch.Generator) -> tuple:
        return pool_t[torch.randint(len(pool_t), (n,), generator=generator)],

    def make(idx):
        idx = idx.numpy()
        return standardize(data.images(idx), mean, std, 255.0), labels(data.y[idx])
    return Built("classification", (3, 32, 32), 10, xtr, labels(data.y[train_idx]), xte,
                 labels(data.y[test_idx]), StagedSampler(draw, make))
