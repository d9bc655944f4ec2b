"""Find a named layer of any ``nn.Module`` and read its output with a forward hook.

Layer names are PyTorch's dotted ``named_modules()`` names (``layer1.0.conv2``,
``blocks.1``), so they work for timm models, torchvision models and our own.  ``penultimate``
names the layer whose output feeds the classifier (:func:`penultimate_layer`): the one definition
that atlases, transfer and the neuron-vs-group probe share.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from widthkit.errors import WidthkitError, unknown


def layer_names(model: nn.Module) -> list[str]:
    """All hookable submodule names of ``model`` (dotted, in definition order)."""
    return [name for name, _ in model.named_modules() if name]


PENULTIMATE = "penultimate"
MAX_FLAT = 8192  # extract_features(pool="auto") averages larger outputs over positions


def penultimate_layer(model: nn.Module) -> str:
    """The last leaf module registered before ``model.get_classifier()``: its output is the classifier's
    input (the penultimate features) in widthkit's families and in timm's ResNets and ViTs."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    prev = None
    for name, mod in model.named_modules():
        if head is not None and mod is head:
            break
        if name and not list(mod.children()):
            prev = name
    if prev is None:
        raise WidthkitError("cannot tell the penultimate layer of this model; name a layer (layer=NAME)")
    return prev


def resolve_layer(model: nn.Module, name: str | None) -> str:
    """``name`` itself if it is a submodule; :func:`penultimate_layer` for ``None``, ``""`` or ``penultimate``."""
    if name in (None, "", PENULTIMATE):
        return penultimate_layer(model)
    if name not in dict(model.named_modules()):
        raise unknown("layer", name, [PENULTIMATE] + layer_names(model))
    return name


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (or ``penultimate``); a bad name raises a WidthkitError listing the valid ones."""
    return dict(model.named_modules())[resolve_layer(model, name)]


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


def extract_features(model: nn.Module, x: torch.Tensor, layer: str | None = PENULTIMATE, batch_size: int = 512,
                     pool: str = "auto") -> np.ndarray:
    """Output of ``layer`` for inputs ``x`` [N, ...], in batches without gradients, as float32 [N, D].

    ``pool="auto"`` flattens each example's output unless it holds more than 8192 values, then averages
    it over positions (conv maps and token sequences, see :func:`positions`); ``pool="mean"`` always
    averages over positions (D = channels).
    """
    if pool not in ("auto", "mean"):
        raise unknown("pool", pool, ("auto", "mean"))
    name = resolve_layer(model, layer)
    chunks = []
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    with capture(model, name) as cap, torch.no_grad():
        for i in range(0, len(x), batch_size):
            cap.value = None
            model(x[i:i + batch_size].to(dev))
            if cap.value is None:
                raise WidthkitError(f"layer '{name}' is not used in the forward pass; choose another layer")
            h = cap.value.detach()
            if pool == "mean" or (h.ndim > 2 and h[0].numel() > MAX_FLAT):
                h = positions(h).mean(1)
            chunks.append(h.reshape(len(h), -1).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)
