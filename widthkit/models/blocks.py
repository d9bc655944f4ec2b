"""Building blocks shared by the model registry and the families: the head container, activations and
image shapes.  Option types (``Activation``, ``PositiveInt`` ...) annotate family signatures; the registry
checks every option against them (:mod:`widthkit.validate`)."""
from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from torch import nn

from widthkit.errors import WidthkitError
from widthkit.validate import coerce


class Erf(nn.Module):
    """Elementwise error function (the activation with closed-form NNGP/NTK kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity,
    "erf": Erf, "silu": nn.SiLU,
}
Activation = Literal[tuple(ACTIVATIONS)]  # the option type of every family's ``activation``


def make_activation(family: str, name: Any) -> nn.Module:
    """A fresh activation module named ``name`` (checked, for models built without the registry)."""
    return ACTIVATIONS[coerce(name, Activation, "activation", f"model family '{family}'")]()


class HeadSequential(nn.Sequential):
    """An ``nn.Sequential`` whose last layer ``head`` is the readout (timm's ``get_classifier``).

    With ``in_shape`` set, flat inputs are reshaped to it first, so image and sequence
    models take the same flat tensors as MLPs.
    """

    readout_name = "head"
    in_shape: tuple | None = None

    def forward(self, x):
        if self.in_shape is not None:
            x = x.reshape(x.shape[0], *self.in_shape)
        return super().forward(x)

    def get_classifier(self) -> nn.Linear:
        return self.head


def image_shape(family: str, in_shape: tuple) -> tuple[int, int, int]:
    """(C, H, W) from an image in_shape; (H, W) means one channel."""
    if len(in_shape) == 2:
        return (1, *in_shape)
    if len(in_shape) != 3:
        raise WidthkitError(f"model family '{family}' needs image inputs with in_shape (C, H, W), "
                            f"got {tuple(in_shape)}; use family 'mlp' for flat inputs")
    return tuple(in_shape)
