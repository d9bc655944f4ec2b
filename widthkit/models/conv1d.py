"""1-D conv net for sequence inputs such as mnist1d ``(1, 40)`` (or ``(40,)``).

Like mnist1d's baseline ConvBase: ``depth`` Conv1d layers of ``width`` channels, each
with stride 2 (stride 1 once the sequence is a single step) and the activation, then
either flatten (``pool="flatten"``, default) or global average pooling, then a linear head.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn

from widthkit.errors import WidthkitError
from widthkit.models.blocks import Activation, HeadSequential, make_activation
from widthkit.models.registry import register_model
from widthkit.validate import PositiveInt


class Conv1dNet(HeadSequential):
    """conv{i} -> act{i} (x depth) -> flatten|gap -> head."""

    def __init__(self, in_shape: tuple, width: int, num_classes: int, depth: int = 3,
                 kernel_size: int = 5, activation: str = "relu", pool: str = "flatten",
                 bias: bool = True):
        c, length = in_shape
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        ch = c
        for i in range(depth):
            stride = 2 if length > 1 else 1
            layers[f"conv{i}"] = nn.Conv1d(ch, width, kernel_size, stride=stride,
                                           padding=kernel_size // 2, bias=bias)
            length = (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1
            layers[f"act{i}"] = make_activation("conv1d", activation)
            ch = width
        if pool == "avg":
            layers["gap"] = nn.AdaptiveAvgPool1d(1)
            length = 1
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(width * length, num_classes, bias=bias)
        super().__init__(layers)
        self.in_shape = tuple(in_shape)


@register_model("conv1d")
def conv1d(*, width: int, in_shape: tuple, num_classes: int, depth: PositiveInt = 3,
           kernel_size: PositiveInt = 5, activation: Activation = "relu",
           pool: Literal["flatten", "avg"] = "flatten", bias: bool = True) -> Conv1dNet:
    """Conv1d net with ``depth`` stride-2 layers of ``width`` channels."""
    if len(in_shape) == 1:
        in_shape = (1, in_shape[0])
    if len(in_shape) != 2:
        raise WidthkitError(f"model family 'conv1d' needs in_shape (C, L) or (L,), got {tuple(in_shape)}")
    return Conv1dNet(in_shape, width, num_classes, depth=depth, kernel_size=kernel_size,
                     activation=activation, pool=pool, bias=bias)
