"""Member weight snapshots over training (``train.snapshots``): take them, store them in a shard, read one back.

A snapshot at step s is every member's parameters and buffers *before* the update of step s (so after s
updates), the state in which the test outputs of step s were computed.  The last step is not stored
here: the shard's ``state/`` group holds it (float32), and readers serve it from there.

Shard layout (HDF5 group ``snapshots``, absent without snapshots)::

    snapshots/step [S]                        steps, ascending, all < the last step
    snapshots/<param or buffer name> [E, S, ...]
    snapshots.attrs["dtype"]                  float32 | float16 | bfloat16 (floating tensors only;
                                              bfloat16 is kept as its uint16 bit pattern: HDF5 has no bfloat16)
"""
from __future__ import annotations

import h5py
import numpy as np
import torch

from . import grid
from .recipe import Recipe

GROUP = "snapshots"


def snapshot_steps(recipe: Recipe, total: int) -> list[int]:
    """Steps at which the trainer snapshots members: the ``train.snapshots`` grid without the last step."""
    return [s for s in grid.steps(recipe.train.snapshots, total, "train.snapshots") if s < total]


def take(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Copies of stacked member tensors {name: [E, ...]} on the CPU, for storage.

    Floating tensors go to ``dtype`` (``float32`` keeps them as trained, float64 included); integer buffers
    stay as they are.  Tensors (not numpy arrays), so a checkpoint holding them loads with ``weights_only``.
    """
    out = {}
    for k, v in tensors.items():
        v = v.detach()
        if v.is_floating_point() and dtype != "float32":
            v = v.to(getattr(torch, dtype))
        out[k] = v.cpu().clone()
    return out


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A stored tensor as numpy; bfloat16 as its uint16 bit pattern (numpy and HDF5 have no bfloat16)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def write(f: h5py.File, steps: list[int], snaps: list[dict[str, torch.Tensor]], dtype: str) -> None:
    """Add the ``snapshots`` group to an open shard (nothing without snapshots)."""
    if not steps:
        return
    g = f.create_group(GROUP)
    g.attrs["dtype"] = dtype
    g["step"] = np.asarray(steps, np.int64)
    for k in snaps[0]:
        g[k] = np.stack([_numpy(s[k]) for s in snaps], axis=1)


def stored_steps(f: h5py.File) -> list[int]:
    return [int(s) for s in f[GROUP]["step"][()]] if GROUP in f else []


def read(f: h5py.File, member: int, step: int) -> dict[str, torch.Tensor]:
    """Member ``member``'s state at stored ``step`` from an open shard (float16/bfloat16 widened to float32)."""
    g = f[GROUP]
    j = stored_steps(f).index(step)
    out = {}
    for k in g:
        if k == "step":
            continue
        a = np.asarray(g[k][member, j])
        if a.dtype == np.uint16 and g.attrs["dtype"] == "bfloat16":
            t = torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(a)
        out[k] = t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
    return out
