"""Myrtle convolutional net (Shankar et al. 2020, after Page's Myrtle), all stages ``width`` channels.

Layout for depth 5/7/10 (convs per stage 2-1-1 / 2-2-2 / 3-3-3, plus the linear head)::

    stage 1 convs -> avgpool 2x2 -> stage 2 convs -> avgpool 2x2 -> stage 3 convs
    -> global average pool -> head

Every conv is 3x3 'same', followed by optional BatchNorm and the activation.  The
channel count is the same (``width``) in every stage, as in the kernel-regime Myrtle
nets, so every hidden dimension is "infinite".  A 2x2 pool is replaced by identity
when the feature map is already 1 pixel wide, so small inputs (8x8 digits) work.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn

from widthkit.models.blocks import Activation, HeadSequential, image_shape, make_activation
from widthkit.models.registry import register_model

MYRTLE_STAGES = {5: (2, 1, 1), 7: (2, 2, 2), 10: (3, 3, 3)}


class Myrtle(HeadSequential):
    """Myrtle CNN as an ``nn.Sequential`` with names conv{i}, bn{i}, act{i}, pool1, pool2, gap, head."""

    def __init__(self, in_shape: tuple, width: int, num_classes: int, depth: int = 5,
                 activation: str = "relu", batchnorm: bool = False, bias: bool = True,
                 pool: str = "avg"):
        c, h, w = in_shape
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        i, ch = 0, c
        for stage, n in enumerate(MYRTLE_STAGES[depth]):
            if stage > 0:
                shrink = min(h, w) >= 2
                layers[f"pool{stage}"] = ((nn.AvgPool2d if pool == "avg" else nn.MaxPool2d)(2)
                                          if shrink else nn.Identity())
                if shrink:
                    h, w = h // 2, w // 2
            for _ in range(n):
                layers[f"conv{i}"] = nn.Conv2d(ch, width, 3, padding=1, bias=bias)
                if batchnorm:
                    layers[f"bn{i}"] = nn.BatchNorm2d(width)
                layers[f"act{i}"] = make_activation("cnn", activation)
                ch, i = width, i + 1
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(width, num_classes, bias=bias)
        super().__init__(layers)
        self.in_shape = tuple(in_shape)


@register_model("cnn")
def cnn(*, width: int, in_shape: tuple, num_classes: int, depth: Literal[5, 7, 10] = 5,
        activation: Activation = "relu", batchnorm: bool = False, bias: bool = True,
        pool: Literal["avg", "max"] = "avg") -> Myrtle:
    """Myrtle-``depth`` CNN (depth 5, 7 or 10, see ``MYRTLE_STAGES``) with ``width`` channels in every conv."""
    return Myrtle(image_shape("cnn", in_shape), width, num_classes, depth=depth, activation=activation,
                  batchnorm=batchnorm, bias=bias, pool=pool)
