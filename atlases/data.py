"""Turn the many shapes of "a dataset" into ``(x, y)`` batches, and guess image shapes."""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch

from widthkit.errors import WidthkitError


def iter_batches(data, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(x, y_or_None)`` from a tensor, an ``(x, y)`` pair of tensors, or an iterable of batches.

    Batches may be tensors ``x`` or sequences ``(x, y, ...)`` (a DataLoader works as is).
    """
    if isinstance(data, torch.Tensor):
        data = (data,)
    if isinstance(data, (tuple, list)) and data and all(isinstance(d, torch.Tensor) for d in data) \
            and len(data) <= 2 and (len(data) == 1 or len(data[0]) == len(data[1])):
        x = data[0]
        y = data[1] if len(data) == 2 else None
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size], (None if y is None else y[i:i + batch_size])
        return
    if not isinstance(data, Iterable):
        raise WidthkitError(f"data must be a tensor, an (x, y) pair or an iterable of batches, "
                            f"not {type(data).__name__}")
    for batch in data:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
            yield batch[0], y
        elif isinstance(batch, dict) and "x" in batch:
            yield batch["x"], batch.get("y")
        else:
            raise WidthkitError(f"a batch must be a tensor x or a tuple (x, y), not {type(batch).__name__}")


def is_signal(input_shape: tuple[int, ...]) -> bool:
    """A 1-D signal: ``(L,)`` that is not a flattened square image, or one channel ``(1, L)``."""
    shape = tuple(int(s) for s in input_shape)
    return (len(shape) == 1 and guess_image_shape(shape) is None) or (len(shape) == 2 and shape[0] == 1)


def guess_image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(C, H, W)`` for an input that is an image: 3-D inputs as is, flat inputs when D = C*S*S.

    Flat inputs (an MLP on 8x8 digits has ``input_shape == (64,)``) are read as 1- or
    3-channel square images, ``(H, W)`` inputs as one-channel images unless H is 1 (a 1-D
    signal, see :func:`is_signal`); anything else is not an image (returns None).
    """
    if len(input_shape) == 3:
        return tuple(int(s) for s in input_shape)  # type: ignore[return-value]
    if len(input_shape) == 2 and int(input_shape[0]) > 1:
        return (1, int(input_shape[0]), int(input_shape[1]))
    if len(input_shape) == 1:
        d = int(input_shape[0])
        for c in (1, 3):
            s = math.isqrt(d // c) if d % c == 0 else 0
            if s > 1 and c * s * s == d:
                return (c, s, s)
    return None
