"""The :class:`Task` every source produces: fixed train/test tensors and, online, a sampler of fresh data."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from widthkit.data.registry import online_tasks
from widthkit.errors import WidthkitError

Sampler = Callable[[int, torch.Generator], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class StagedSampler:
    """A sampler in two stages, so that the samples of several generators are made in one batched call.

    ``draw(n, generator)`` takes every random draw of ``n`` samples: a tuple of tensors, each ``[n, ...]``.
    ``make(*draws)`` turns draws into ``(x, y)`` row by row, for any number of rows.  Calling it is
    ``make(*draw(n, generator))``; :meth:`many` draws from each generator in turn and makes all rows at once.
    """

    draw: Callable[[int, torch.Generator], tuple]
    make: Callable[..., "tuple[torch.Tensor, torch.Tensor]"]

    def __call__(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.make(*self.draw(n, generator))

    def many(self, n: int, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [self.draw(n, g) for g in generators]
        return self.make(*(torch.cat(p) if len(parts) > 1 else p[0] for p in zip(*parts)))


def map_sampler(sampler: Sampler, fn: Callable) -> Sampler:
    """The sampler whose samples are ``fn(x, y)`` of ``sampler``'s (staged stays staged)."""
    if isinstance(sampler, StagedSampler):
        return StagedSampler(sampler.draw, lambda *d: fn(*sampler.make(*d)))
    return lambda n, generator: fn(*sampler(n, generator))


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
        return self._sampler()(int(n), generator)

    def sample_many(self, n: int, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fresh samples from each generator, concatenated ``[len(generators) * n, ...]``: the rows of
        ``sample(n, g)`` for each ``g`` in turn (to float rounding), made in one batched call when the sampler
        is a :class:`StagedSampler`."""
        sampler = self._sampler()
        if isinstance(sampler, StagedSampler):
            return sampler.many(int(n), generators)
        xs, ys = zip(*(sampler(int(n), g) for g in generators))
        return torch.cat(xs), torch.cat(ys)

    def _sampler(self) -> Sampler:
        if not self.online or self.sampler is None:
            raise WidthkitError(
                f"task '{self.spec or self.name}' is a fixed dataset and cannot draw fresh samples; "
                f"load it with online=True (data.online = true); online tasks: {', '.join(online_tasks())}")
        return self.sampler
