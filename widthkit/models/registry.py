"""Model registry (timm-style): families are functions registered by name.

A family is a function ``fn(*, width, in_shape, num_classes, **options) -> nn.Module``.
Its keyword options and their defaults are read from the signature, so
:func:`model_kwargs` can tell recipe validation which keys exist.  Every model built
by :func:`create_model` has ``get_classifier()`` (the readout ``nn.Linear``),
``readout_name`` (that module's name) and ``widthkit_spec`` (how it was built).

``timm:<name>`` builds any timm model whose width argument is known (see
:mod:`widthkit.models.timm_models`); other keyword options go to timm unchanged.
"""
from __future__ import annotations

import inspect
import math
import operator
from typing import Any, Callable, Iterable

import torch
from torch import nn

from widthkit.errors import WidthkitError, did_you_mean, unknown

TIMM_PREFIX = "timm:"
_CORE = ("width", "in_shape", "num_classes")
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}


def register_model(name: str):
    """Decorator registering ``fn`` as model family ``name``; options come from its keyword defaults."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY or name.startswith(TIMM_PREFIX):
            raise ValueError(f"model family '{name}' is already registered or reserved")
        params = inspect.signature(fn).parameters
        missing = [c for c in _CORE if c not in params]
        if missing:
            raise TypeError(f"model family '{name}' must accept {missing}")
        defaults = {k: p.default for k, p in params.items()
                    if k not in _CORE and p.kind == p.KEYWORD_ONLY}
        if any(v is inspect.Parameter.empty for v in defaults.values()):
            raise TypeError(f"model family '{name}': every option needs a default")
        _REGISTRY[name] = (fn, defaults)
        return fn
    return deco


def list_models() -> list[str]:
    """Registered family names, plus the ``timm:<any timm name>`` pattern."""
    return sorted(_REGISTRY) + [TIMM_PREFIX + "<any timm name>"]


def model_kwargs(name: str) -> dict[str, Any]:
    """Options accepted by family ``name`` with their defaults.

    For ``timm:<name>`` only widthkit's own extras are listed (``attn_scale`` for ViTs);
    any other option is passed to the timm model class and checked when it is built.
    """
    if name.startswith(TIMM_PREFIX):
        from widthkit.models.timm_models import timm_extras
        return timm_extras(name[len(TIMM_PREFIX):])
    return dict(_lookup(name)[1])


def validate_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Raise WidthkitError for an option that family ``name`` does not accept (with a suggestion)."""
    if name.startswith(TIMM_PREFIX):
        model_kwargs(name)
        return
    defaults = _lookup(name)[1]
    for key in kwargs:
        if key not in defaults:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise WidthkitError(f"unknown option '{key}' for model family '{name}'"
                                f"{did_you_mean(key, defaults)}; valid: {valid}")


def create_model(name: str, *, width: int, in_shape: Iterable[int], num_classes: int,
                 **kwargs: Any) -> nn.Module:
    """Build family ``name`` at ``width`` for inputs ``[B, *in_shape]`` and ``num_classes`` outputs."""
    if not str(name).startswith(TIMM_PREFIX):
        _lookup(name)
    width = _positive_int("width", width, f"model '{name}'")
    num_classes = _positive_int("num_classes", num_classes, f"model '{name}'")
    try:
        in_shape = tuple(_positive_int("in_shape entry", s, f"model '{name}'") for s in in_shape)
    except TypeError:
        raise WidthkitError(f"in_shape must be a tuple of positive ints, got {in_shape!r}") from None
    if not in_shape:
        raise WidthkitError("in_shape must have at least one dimension, e.g. (64,) or (3, 32, 32)")
    if name.startswith(TIMM_PREFIX):
        from widthkit.models.timm_models import create_timm
        model = create_timm(name[len(TIMM_PREFIX):], width=width, in_shape=in_shape,
                            num_classes=num_classes, **kwargs)
    else:
        validate_kwargs(name, kwargs)
        model = _lookup(name)[0](width=width, in_shape=in_shape, num_classes=num_classes, **kwargs)
    _finish(model, name, width, in_shape, num_classes, kwargs)
    return model


def _lookup(name: str):
    if name not in _REGISTRY:
        raise unknown("model family", name, list_models())
    return _REGISTRY[name]


def _finish(model, name, width, in_shape, num_classes, kwargs) -> None:
    """Check the readout contract and attach ``readout_name`` / ``widthkit_spec``."""
    head = model.get_classifier()
    if not isinstance(head, nn.Linear) or head.out_features != num_classes:
        raise WidthkitError(f"model '{name}' has no nn.Linear readout with {num_classes} outputs; "
                            "use a model with a linear classifier head")
    if not isinstance(getattr(model, "readout_name", None), str):
        model.readout_name = next(n for n, m in model.named_modules() if m is head)
    model.widthkit_spec = {"family": name, "width": width, "in_shape": in_shape,
                           "num_classes": num_classes, "kwargs": dict(kwargs)}


# ---- option checks shared by the families (one-line errors naming the key) ----

def _positive_int(key: str, value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise WidthkitError(f"{where}: {key} must be a positive integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise WidthkitError(f"{where}: {key} must be a positive integer, got {value!r}") from None
    if value <= 0:
        raise WidthkitError(f"{where}: {key} must be a positive integer, got {value}")
    return value


def check_int(family: str, key: str, value: Any, lo: int = 1) -> int:
    """Return ``value`` as an int >= ``lo`` or raise a one-line WidthkitError."""
    bad = isinstance(value, bool)
    if not bad:
        try:
            value = operator.index(value)
        except TypeError:
            bad = True
    if bad or value < lo:
        raise WidthkitError(f"model family '{family}': {key}={value!r} is invalid; use an integer >= {lo}")
    return value


def check_float(family: str, key: str, value: Any, lo: float = 0.0) -> float:
    """Return ``value`` as a finite float > ``lo`` or raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= lo:
        raise WidthkitError(f"model family '{family}': {key}={value!r} is invalid; use a number > {lo}")
    return float(value)


def check_bool(family: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise WidthkitError(f"model family '{family}': {key}={value!r} is invalid; use true or false")
    return value


def check_choice(family: str, key: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise with a suggestion."""
    choices = list(choices)
    if value not in choices:
        raise WidthkitError(f"model family '{family}': {key}={value!r} is invalid"
                            f"{did_you_mean(value, choices)}; valid: {', '.join(map(str, choices))}")
    return value


class Erf(nn.Module):
    """Elementwise error function (the activation with closed-form NNGP/NTK kernels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity,
    "erf": Erf, "silu": nn.SiLU,
}


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


def make_activation(family: str, name: Any) -> nn.Module:
    """A fresh activation module named ``name`` (validated)."""
    return ACTIVATIONS[check_choice(family, "activation", name, ACTIVATIONS)]()
