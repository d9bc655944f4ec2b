"""Parameterizations (SP, NTK, muP) as one per-layer mechanism.

Every parameterization in the abc-family of Yang & Hu assigns each layer a forward
multiplier ``a``, an init std ``b`` and a learning-rate scale ``c``.  We *fold* the
multiplier into the stored weight (W = a w): the effective init std is ``a b`` and
the effective learning-rate scale is ``a^2 c`` for SGD-like and ``a c`` for Adam-like
optimizers.  Training the folded model is exactly the same dynamics, and the model
stays a plain ``nn.Module``: it survives ``torch.compile``, ``state_dict`` save and
load, and any module surgery (the two known failure modes of the ``mup`` package).

Which dimensions are "infinite" (scale with width) is found as the ``mup`` package
does: build the model at the base width and at twice the base width on the meta
device and compare parameter shapes.

Roles and rules (relative to SP at the base width, so muP == SP at ``base_width``;
m_in / m_out are fan-in / fan-out width multipliers, g the init gain):

=========  ==================  ================  ==================  ===============
role       init std (all)       SP lr             muP SGD lr          muP Adam lr
=========  ==================  ================  ==================  ===============
input      g/sqrt(fan_in)       1                 m_out               1
hidden     g/sqrt(fan_in)       1                 1                   1/m_in
readout    alpha/(sqrt(fan_in) m_in) [muP]     1  alpha^2/m_in        alpha/m_in
vector     module default       1                 m_out (if infinite) 1
=========  ==================  ================  ==================  ===============

NTK (absolute, Jacot et al.): w ~ N(0,1) with multiplier g/sqrt(fan_in); folded, the
init std is g/sqrt(fan_in) and the lr scale is g^2/fan_in (SGD) or g/sqrt(fan_in)
(Adam); biases and vectors have multiplier 1.  Biases start at zero in every
parameterization.  muP also sets 1/d attention scaling in transformers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import WidthkitError
from .models.timm_models import attention_modules, set_attention_scale
from .results import Result

ADAM_LIKE = ("adam", "adamw")


@dataclass
class LayerRule:
    """The rule applied to one parameter tensor."""

    name: str
    role: str                 # input | hidden | readout | vector
    shape: list[int]
    fan_in: int
    mult: float               # the forward multiplier a that was folded into the weight
    init_std: float | None    # effective init std (None: module default kept)
    lr_scale: float           # effective per-parameter learning-rate scale
    eps_scale: float = 1.0    # Adam epsilon multiplier of the folded weight (1/a: exact unfolding)


@dataclass
class ParamTable(Result):
    """Per-parameter rules of one parameterized model; recorded in the run store."""

    kind: str
    optimizer: str
    width: int
    base_width: int
    rules: list[LayerRule] = field(default_factory=list)

    def lr_scales(self) -> dict[str, float]:
        return {r.name: r.lr_scale for r in self.rules}

    def eps_scales(self) -> dict[str, float]:
        return {r.name: r.eps_scale for r in self.rules}


def _weight_fans(module: nn.Module, pname: str, p: torch.Tensor) -> tuple[int, int] | None:
    """(fan_in, fan_out) for Linear/Conv weights, else None (vector-like)."""
    if pname != "weight" or p.dim() < 2:
        return None
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            return p.shape[0] * math.prod(p.shape[2:]), p.shape[1]
        return math.prod(p.shape[1:]), p.shape[0]
    return None


def _default_gain(activation: str | None) -> float:
    return math.sqrt(2.0) if (activation or "relu") in ("relu", "gelu", "silu", "leaky_relu") else 1.0


def parameterize(model: nn.Module, *, kind: str, width: int, base_width: int, base_model: nn.Module | None = None,
                 delta_model: nn.Module | None = None, optimizer: str = "sgd", gain: float = 0.0,
                 activation: str | None = None, output_mult: float = 1.0, readout_zero: bool = False,
                 eps_scaling: str = "unfolded", generator: torch.Generator | None = None) -> ParamTable:
    """Re-initialize ``model`` in place for parameterization ``kind`` and return its rules.

    ``base_model`` / ``delta_model`` are the same architecture at ``base_width`` and at a
    different width (meta-device models are fine); they are required for muP.
    ``generator`` seeds the init so members are reproducible.

    Adam epsilon (``eps_scale``): a folded weight W = a w trained with epsilon eps/a follows
    the unfolded w trained with eps exactly, so every rule gets 1/a (``"unfolded"``).
    ``"width"`` also divides it by the width multiplier width/base_width for every parameter
    with a dimension that grows with width, whose gradients shrink like 1/width in muP
    (Everett et al. 2024 scale epsilon with width so it never swamps sqrt(v)).
    """
    if eps_scaling not in ("unfolded", "width"):
        raise WidthkitError(f"unknown epsilon scaling '{eps_scaling}'; choose unfolded or width")
    if kind not in ("sp", "ntk", "mup"):
        raise WidthkitError(f"unknown parameterization '{kind}'; choose sp, ntk or mup")
    if kind == "mup" and (base_model is None or delta_model is None):
        raise WidthkitError("muP needs the model at its base width; pass base_model and delta_model")
    adam = optimizer in ADAM_LIKE
    g = gain or _default_gain(activation)
    readout = model.get_classifier() if hasattr(model, "get_classifier") else None
    base_shapes = {n: tuple(p.shape) for n, p in base_model.named_parameters()} if base_model is not None else {}
    delta_shapes = {n: tuple(p.shape) for n, p in delta_model.named_parameters()} if delta_model is not None else {}
    rules = []
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        mod_name, _, pname = name.rpartition(".")
        module = modules[mod_name]
        shape = tuple(p.shape)
        if kind == "mup" and (name not in base_shapes or name not in delta_shapes):
            raise WidthkitError(f"parameter '{name}' does not exist at the base width; muP needs "
                                "parameter names that do not depend on width")
        bshape = base_shapes.get(name, shape)
        inf = [a != b for a, b in zip(bshape, delta_shapes.get(name, bshape))]
        fans = _weight_fans(module, pname, p)
        is_readout = readout is not None and module is readout
        if fans is not None:
            fan_in, fan_out = fans
            bfans = _weight_fans(module, pname, torch.empty(bshape, device="meta"))
            m_in, m_out = fan_in / bfans[0], fan_out / bfans[1]
            inf_in, inf_out = any(inf[1:]), inf[0]
            role = "readout" if is_readout else ("hidden" if inf_in and inf_out else
                                                  "input" if inf_out else "hidden" if inf_in else "input")
            gl = 1.0 if is_readout else g
            std = gl / math.sqrt(fan_in)
            mult, lr = 1.0, 1.0
            if kind == "ntk":
                mult, lr = std, (std if adam else std ** 2)
            elif kind == "mup":
                if role == "readout":
                    mult = output_mult / m_in
                    std = 0.0 if readout_zero else std * mult
                    lr = (output_mult / m_in) if adam else (output_mult ** 2 / m_in)
                elif role == "hidden":
                    lr = 1.0 / m_in if adam else 1.0
                else:
                    lr = 1.0 if adam else m_out
            with torch.no_grad():
                if std == 0.0:
                    p.zero_()
                else:
                    p.normal_(0.0, std, generator=generator)
            rules.append(LayerRule(name, role, list(shape), fan_in, mult, std, lr,
                                   _eps_scale(mult, any(inf), width / base_width, eps_scaling)))
        else:
            fan_in = 1
            m_out = math.prod(s / b for s, b in zip(shape, bshape))  # only infinite dims differ
            lr = 1.0
            if kind == "mup" and any(inf) and not adam:
                lr = m_out
            std = None
            if pname == "bias":
                with torch.no_grad():
                    p.zero_()
                std = 0.0
            rules.append(LayerRule(name, "vector", list(shape), fan_in, 1.0, std, lr,
                                   _eps_scale(1.0, any(inf), width / base_width, eps_scaling)))
    if kind == "mup":
        mup_architecture(model)
    return ParamTable(kind=kind, optimizer=optimizer, width=width, base_width=base_width, rules=rules)


def _eps_scale(mult: float, infinite: bool, m: float, scaling: str) -> float:
    """Epsilon multiplier of a folded parameter: 1/a (exact), over the width multiplier ``m`` too for ``width``."""
    return (1.0 if mult == 0 else 1.0 / mult) / (m if scaling == "width" and infinite else 1.0)


def mup_architecture(model: nn.Module) -> nn.Module:
    """muP's architecture change: 1/d (not 1/sqrt(d)) attention scaling, where there is attention."""
    if attention_modules(model):
        set_attention_scale(model, "linear")
    return model
