"""Model registry (timm-style): families are functions registered by name, prefixes by a handler.

A family is a function ``fn(*, width, in_shape, num_classes, **options) -> nn.Module``.
Its keyword options, their defaults and their types are read from the signature, so
:func:`model_kwargs` can tell recipe validation which keys exist and :func:`create_model`
checks every value (:mod:`widthkit.validate`) before building.  A prefix handler
(:func:`register_prefix`) builds a whole namespace of names, e.g. ``timm:<name>`` (registered by
:mod:`widthkit.models.timm_models`).  Every model built by :func:`create_model` has
``get_classifier()`` (the readout ``nn.Linear``), ``readout_name`` (that module's name) and
``widthkit_spec`` (how it was built).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from torch import nn

from widthkit.errors import WidthkitError, unknown
from widthkit.validate import Option, PositiveInt, check_options, coerce, signature_options

_CORE = ("width", "in_shape", "num_classes")
_FAMILIES: dict[str, tuple[Callable[..., nn.Module], dict[str, Option]]] = {}


@dataclass(frozen=True)
class _Prefix:
    create: Callable[..., nn.Module]      # (name, *, width, in_shape, num_classes, **kwargs) -> model
    options: Callable[[str], dict]        # name -> widthkit's own options with defaults (checks the name)
    listing: str                          # how list_models shows the namespace


_PREFIXES: dict[str, _Prefix] = {}


def register_model(name: str):
    """Decorator registering ``fn`` as model family ``name``; options come from its keyword defaults."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FAMILIES or _prefix_of(name):
            raise ValueError(f"model family '{name}' is already registered or reserved")
        missing = [c for c in _CORE if c not in inspect.signature(fn).parameters]
        if missing:
            raise TypeError(f"model family '{name}' must accept {missing}")
        _FAMILIES[name] = (fn, signature_options(fn, skip=_CORE))
        return fn
    return deco


def register_prefix(prefix: str, create: Callable[..., nn.Module], options: Callable[[str], dict],
                    listing: str) -> None:
    """Let ``create(rest, width=, in_shape=, num_classes=, **kwargs)`` build every name ``prefix + rest``.

    ``options(rest)`` returns widthkit's own options for that name with their defaults and raises a
    WidthkitError for an unknown name; other keyword options go to ``create`` unchecked.
    """
    if prefix in _PREFIXES or any(f.startswith(prefix) for f in _FAMILIES):
        raise ValueError(f"model prefix '{prefix}' is already registered or clashes with a family")
    _PREFIXES[prefix] = _Prefix(create, options, listing)


def _prefix_of(name: str) -> str | None:
    return next((p for p in _PREFIXES if str(name).startswith(p)), None)


def list_models() -> list[str]:
    """Registered family names, plus each prefix's pattern (e.g. ``timm:<any timm name>``)."""
    return sorted(_FAMILIES) + [p.listing for p in _PREFIXES.values()]


def model_kwargs(name: str) -> dict[str, Any]:
    """Options accepted by family ``name`` with their defaults.

    For a prefixed name (``timm:<name>``) only widthkit's own extras are listed (``attn_scale`` for
    ViTs); any other option is passed to the model class and checked when it is built.
    """
    prefix = _prefix_of(name)
    if prefix:
        return _PREFIXES[prefix].options(name[len(prefix):])
    return {k: o.default for k, o in _lookup(name)[1].items()}


def validate_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` checked against family ``name`` (values coerced to the option types).

    Raises WidthkitError for an unknown option (with a suggestion) or a bad value.  Prefixed names only
    check the name: their options are checked by the model class.
    """
    if _prefix_of(name):
        model_kwargs(name)
        return dict(kwargs)
    return check_options(kwargs, _lookup(name)[1], f"model family '{name}'")


def create_model(name: str, *, width: int, in_shape: Iterable[int], num_classes: int,
                 **kwargs: Any) -> nn.Module:
    """Build family ``name`` at ``width`` for inputs ``[B, *in_shape]`` and ``num_classes`` outputs."""
    prefix = _prefix_of(name)
    if not prefix:
        _lookup(name)
    owner = f"model '{name}'"
    width = coerce(width, PositiveInt, "width", owner)
    num_classes = coerce(num_classes, PositiveInt, "num_classes", owner)
    in_shape = coerce(in_shape, tuple[PositiveInt, ...], "in_shape", owner)
    if not in_shape:
        raise WidthkitError("in_shape must have at least one dimension, e.g. (64,) or (3, 32, 32)")
    if prefix:
        model = _PREFIXES[prefix].create(name[len(prefix):], width=width, in_shape=in_shape,
                                         num_classes=num_classes, **kwargs)
    else:
        model = _lookup(name)[0](width=width, in_shape=in_shape, num_classes=num_classes,
                                 **validate_kwargs(name, kwargs))
    _finish(model, name, width, in_shape, num_classes, kwargs)
    return model


def _lookup(name: str):
    if name not in _FAMILIES:
        raise unknown("model family", name, list_models())
    return _FAMILIES[name]


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
