"""The :class:`Task` every source produces: fixed train/test tensors and, online, a sampler of fresh data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from widthkit.data.registry import online_tasks
from widthkit.errors import WidthkitError

Sampler = Callable[[int, torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(eq=False)
class Task:
    """A supervised task: fixed train/test tensors and, for online tasks, a sampler of fresh training data.

    Inputs are float32 ``[N, *in_shape]``; targets are int64 labels ``[N]`` (classification) or float32
    ``[N, num_classes]`` (regression).  Tensors are shared through the per-process cache: do not mutate them.
    ``reload`` is ``(function, args)`` that loads the task again; the task pickles as that call (small, and
    it carries online samplers to worker processes).
    """

    name: str
    kind: str
    in_shape: tuple
    num_classes: int
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    online: bool = False
    classes: list[int] = field(default_factory=list)
    spec: str = ""
    class_names: list[str] = field(default_factory=list, repr=False)
    sampler: Sampler | None = field(default=None, repr=False)
    reload: tuple | None = field(default=None, repr=False)

    def __reduce__(self):
        """Pickle as 'load this task again' when the task knows how (see ``reload``)."""
        return self.reload if self.reload is not None else super().__reduce__()

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh training samples ``(x, y)``; the same generator state gives the same samples."""
        if not self.online or self.sampler is None:
            raise WidthkitError(
                f"task '{self.spec or self.name}' is a fixed dataset and cannot draw fresh samples; "
                f"load it with online=True (data.online = true); online tasks: {', '.join(online_tasks())}")
        return self.sampler(int(n), generator)
