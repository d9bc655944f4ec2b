"""Fully connected network: ``depth`` hidden layers of size ``width`` and a linear readout."""
from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from widthkit.models.blocks import Activation, HeadSequential, make_activation
from widthkit.models.registry import register_model
from widthkit.validate import PositiveInt


class MLP(HeadSequential):
    """flatten -> (fc{i} -> act{i}) x depth -> head.  Module names do not depend on width."""

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int,
                 activation: str = "relu", bias: bool = True):
        layers: "OrderedDict[str, nn.Module]" = OrderedDict(flatten=nn.Flatten())
        fan_in = in_features
        for i in range(depth):
            layers[f"fc{i}"] = nn.Linear(fan_in, width, bias=bias)
            layers[f"act{i}"] = make_activation("mlp", activation)
            fan_in = width
        layers["head"] = nn.Linear(fan_in, num_classes, bias=bias)
        super().__init__(layers)


@register_model("mlp")
def mlp(*, width: int, in_shape: tuple, num_classes: int, depth: PositiveInt = 2,
        activation: Activation = "relu", bias: bool = True) -> MLP:
    """MLP on the flattened input; ``depth`` hidden layers of ``width`` units."""
    return MLP(math.prod(in_shape), width, depth, num_classes, activation, bias)
