"""What a task source module builds from and returns, and the array helpers the sources share.

A builder gets a :class:`Request` (where and what to load) and returns a :class:`Built`: tensors already
restricted to ``req.classes`` and truncated to ``n_train``/``n_test``, with original labels (the loader relabels
them ``0..k-1``).  Image sources standardize per channel with statistics of their full training split.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from widthkit.data.task import Sampler
from widthkit.errors import WidthkitError


@dataclass(frozen=True)
class Request:
    """Where and what to load: ``root`` (absolute), kept ``classes`` (None: all), the seed of the fixed split
    or draw, the split sizes (None: whole split) and whether a sampler is wanted."""

    name: str
    root: str
    classes: tuple[int, ...] | None
    seed: int
    n_train: int | None
    n_test: int | None
    online: bool


@dataclass
class Built:
    """What a builder returns: tensors already filtered to ``req.classes`` but with original labels."""

    kind: str  # classification | regression
    in_shape: tuple
    num_classes: int  # before class selection
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    sampler: Sampler | None = None
    class_names: list[str] = field(default_factory=list)


def check_classes(req: Request, num_classes: int) -> None:
    """Every requested class exists in a task of ``num_classes`` classes."""
    if req.classes is not None:
        bad = [c for c in req.classes if c >= num_classes]
        if bad:
            raise WidthkitError(f"task '{req.name}' has classes 0-{num_classes - 1}; class {bad[0]} does not exist")


def select(req: Request, split: str, x, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``req.classes`` (None = all), then the first ``n_train``/``n_test`` (by ``split``): (x[idx], y[idx])."""
    n = req.n_train if split == "train" else req.n_test
    idx = np.arange(len(y)) if req.classes is None else np.flatnonzero(np.isin(y, req.classes))
    if n is not None:
        if n > len(idx):
            raise WidthkitError(f"task '{req.name}' has only {len(idx)} {split} samples in the chosen classes; "
                                f"lower n_{split} (asked {n})")
        idx = idx[:n]
    return x[idx], y[idx]


def channel_stats(x: np.ndarray, scale: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x / scale`` for ``x`` [N, C, ...], in float64 chunks (no full copy)."""
    c = x.shape[1]
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), chunk):
        part = np.asarray(x[i:i + chunk], dtype=np.float64).reshape(-1, c, int(np.prod(x.shape[2:]))) / scale
        s1 += part.sum(axis=(0, 2))
        s2 += (part ** 2).sum(axis=(0, 2))
        count += part.shape[0] * part.shape[2]
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0.0))
    return mean, np.where(std > 0, std, 1.0)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float,
                chunk: int = 4096) -> torch.Tensor:
    """float32 tensor of ``(x/scale - mean[c]) / std[c]`` for ``x`` [N, C, ...], filled chunk by chunk."""
    out = torch.empty(x.shape, dtype=torch.float32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(shape)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(shape)
    for i in range(0, len(x), chunk):
        part = torch.from_numpy(np.asarray(x[i:i + chunk], dtype=np.float32)) / scale
        out[i:i + chunk] = (part - m) / s
    return out


def labels(y) -> torch.Tensor:
    """int64 label tensor."""
    return torch.as_tensor(np.asarray(y, dtype=np.int64))


def seed_from(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (independent streams for train/test/perturbation)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0]
               >> np.uint64(1))


def draw(sampler: Sampler, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples from a fresh generator seeded with ``seed``."""
    return sampler(n, torch.Generator().manual_seed(seed))


def keep_sampler(sample: Sampler, classes) -> Sampler:
    """Restrict a sampler to ``classes`` by rejection (original labels kept)."""
    if classes is None:
        return sample
    keep = torch.tensor(classes, dtype=torch.long)

    def sampler(n: int, generator: torch.Generator):
        xs, ys, have = [], [], 0
        for _ in range(10_000):
            x, y = sample(max(n, 64), generator)
            mask = torch.isin(y, keep)
            xs.append(x[mask])
            ys.append(y[mask])
            have += int(mask.sum())
            if have >= n:
                return torch.cat(xs)[:n], torch.cat(ys)[:n]
        raise WidthkitError(f"classes {list(classes)} almost never occur in this task; choose other classes")
    return sampler


@contextlib.contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (which mnist1d uses) and restore the caller's state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        np.random.set_state(state)
