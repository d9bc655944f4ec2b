"""Find a named layer of any ``nn.Module`` and read its output with a forward hook.

Layer names are PyTorch's dotted ``named_modules()`` names (``layer1.0.conv2``,
``blocks.1``), so they work for timm models, torchvision models and our own.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from widthkit.errors import WidthkitError, unknown


def layer_names(model: nn.Module) -> list[str]:
    """All hookable submodule names of ``model`` (dotted, in definition order)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a bad name raises a WidthkitError listing the valid ones."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        raise unknown("layer", name, layer_names(model))
    return modules[name]


def first_tensor(out) -> torch.Tensor:
    """A layer's output tensor (the first tensor when a module returns a tuple/list/dict)."""
    if isinstance(out, torch.Tensor):
        return out
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    raise WidthkitError(f"layer output of type {type(out).__name__} holds no tensor; pick another layer")


class Capture:
    """Holds the latest output of a hooked layer (``.value``)."""

    value: torch.Tensor | None = None


@contextlib.contextmanager
def capture(model: nn.Module, layer: str) -> Iterator[Capture]:
    """Context manager: while active, every forward stores ``layer``'s output in ``cap.value``."""
    module = get_layer(model, layer)
    cap = Capture()

    def hook(_mod, _inp, out):
        cap.value = first_tensor(out)

    handle = module.register_forward_hook(hook)
    try:
        yield cap
    finally:
        handle.remove()


def positions(t: torch.Tensor) -> torch.Tensor:
    """View a layer output as ``[B, P, D]``: P positions of D-dim activation vectors.

    ``[B, D]`` (dense) -> P=1; ``[B, C, H, W]`` (conv, channels first) -> P=H*W, D=C;
    ``[B, T, D]`` (tokens, channels last, e.g. ViT blocks) -> P=T.
    """
    if t.dim() == 2:
        return t[:, None, :]
    if t.dim() == 3:
        return t
    if t.dim() == 4:
        b, c, h, w = t.shape
        return t.reshape(b, c, h * w).transpose(1, 2)
    raise WidthkitError(f"layer output has shape {tuple(t.shape)}; atlases need [B,D], [B,T,D] or [B,C,H,W]")
