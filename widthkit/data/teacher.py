"""``teacher``: Gaussian inputs labelled by a random two-layer tanh teacher.

``x ~ N(0, I_dim)``, ``f(x) = W2 tanh(W1 x / sqrt(dim)) / sqrt(teacher_width)``.  Options: ``dim``,
``teacher_width``, ``classes`` (0: regression with ``outputs`` targets; K: classification by argmax of K
outputs), ``outputs``, ``teacher_seed``, ``noise`` (Gaussian noise added to the outputs, before the argmax for
classification), ``perturb`` and ``perturb_seed``: a related teacher with weights
``((1-p) W + p W') / sqrt((1-p)^2 + p^2)`` where ``W`` comes from ``teacher_seed`` and ``W'`` from
``(teacher_seed, perturb_seed)``; the rescaling keeps unit weight variance, so only the direction changes and
the weight correlation with the base teacher is ``(1-p)/sqrt((1-p)^2+p^2)``.  ``seed`` draws the fixed
train/test inputs.  Defaults ``n_train=4096, n_test=2048``; online: fresh inputs from the generator.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch

from widthkit.data.registry import register_task
from widthkit.data.source import Built, Request, check_classes, draw, keep_sampler, seed_from
from widthkit.data.task import StagedSampler
from widthkit.errors import WidthkitError
from widthkit.validate import NonNegativeFloat, NonNegativeInt, PositiveInt, Range


def teacher_weights(dim: int, width: int, outputs: int, teacher_seed: int, perturb: float,
                    perturb_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher weights ``W1`` [width, dim] and ``W2`` [outputs, width], unit-variance entries."""
    def weights(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(width, dim, generator=g), torch.randn(outputs, width, generator=g)
    w1, w2 = weights(seed_from(teacher_seed, 0x7EAC))
    if perturb:
        p1, p2 = weights(seed_from(teacher_seed, perturb_seed, 0x9E27))
        c = 1.0 / math.sqrt((1 - perturb) ** 2 + perturb ** 2)
        w1 = c * ((1 - perturb) * w1 + perturb * p1)
        w2 = c * ((1 - perturb) * w2 + perturb * p2)
    return w1, w2


@register_task("teacher", online=True, n_train=4096, n_test=2048)
def build_teacher(req: Request, *, dim: PositiveInt = 32, teacher_width: PositiveInt = 64,
                  classes: NonNegativeInt = 0, outputs: PositiveInt = 1, teacher_seed: int = 0,
                  noise: NonNegativeFloat = 0.0, perturb: Annotated[float, Range(ge=0, le=1)] = 0.0,
                  perturb_seed: int = 1) -> Built:
    if classes == 1:
        raise WidthkitError("teacher: classes must be 0 (regression) or >= 2, got 1")
    if classes and outputs != 1:
        raise WidthkitError("teacher: set outputs only for regression (classes=0); with classes=K the teacher "
                            "has K outputs")
    k = classes or outputs
    w1, w2 = teacher_weights(dim, teacher_width, k, teacher_seed, perturb, perturb_seed)

    def draw_inputs(n: int, generator: torch.Generator) -> tuple:
        x = torch.randn(n, dim, generator=generator)
        return (x, noise * torch.randn(n, k, generator=generator)) if noise else (x,)

    def label(x, eps=None):
        out = torch.tanh(x @ w1.T / math.sqrt(dim)) @ w2.T / math.sqrt(teacher_width)
        if eps is not None:
            out = out + eps
        return x, (out.argmax(1) if classes else out)
    teacher = StagedSampler(draw_inputs, label)

    if classes:
        check_classes(req, classes)
        sampler = keep_sampler(teacher, req.classes)
    else:
        sampler = teacher
    xtr, ytr = draw(sampler, req.n_train, seed_from(req.seed, 1))
    xte, yte = draw(sampler, req.n_test, seed_from(req.seed, 2))
    return Built("classification" if classes else "regression", (dim,), k, xtr, ytr, xte, yte, sampler)
