"""Vyas et al. (2023) / Pehlevan-group output conventions: the centered model, richness gamma0, 1/N readout.

Applied by :func:`widthkit.build.build_member` after the parameterization, from the recipe's
``[param]`` keys ``center``, ``gamma0`` and ``readout``:

* ``readout = "mf"`` (mean-field readout, needs ``kind = "ntk"`` and SGD): N(0, 1) weights with
  1/sqrt(fan_in) in the forward pass everywhere except the readout, which is divided by its fan-in N
  instead; the SGD learning rate of every parameter is multiplied by N (the group's ``lr = N eta0``),
  which together make the NTK-parameterized net a muP (feature-learning) net.
* ``gamma0``: the output is divided by gamma0 (the richness: small gamma0 -> lazy, large -> rich) and
  the learning rate multiplied by gamma0^2 (SGD) or gamma0 (Adam-like) so that the function moves at a
  gamma0-independent rate.
* ``center = true``: the model is :class:`Centered`, f(x) - f0(x) with f0 a frozen copy of the net at
  initialization, so every member starts from the zero function (the init-dependent output variance
  at step 0 is removed; what remains is the variance the training dynamics create).

The two multipliers are *folded* into the readout weight and bias (W = a w, lr scale a^2 for SGD, a for
Adam-like, as in :mod:`widthkit.param`), so the model stays a plain module; the centered wrapper keeps
the frozen copy as buffers, so it is stacked per member by the ensemble engine like any other state.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .errors import WidthkitError
from .param import ADAM_LIKE, LayerRule, ParamTable

PREFIX, INIT = "net.", "init."  # the trainable net's and the frozen copy's names inside :class:`Centered`


def _freeze(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose parameters are buffers (state, not trainable: no gradient, no optimizer)."""
    frozen = copy.deepcopy(net)
    for module in frozen.modules():
        for name in list(module._parameters):
            p = module._parameters.pop(name)
            module.register_buffer(name, None if p is None else p.detach().clone())
    return frozen


class Centered(nn.Module):
    """``f(x) - f0(x)``: the trainable ``net`` minus a frozen copy ``init`` of it taken at construction.

    Output [B, K] as ``net``'s; exactly zero until ``net`` is trained, and its gradient with respect to
    ``net``'s parameters is ``net``'s own. Trainable parameters are named ``net.<name>``.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.init = _freeze(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) - self.init(x)

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()


def centered_plan(template: nn.Module, buffers: dict, plan_fn):
    """The ensemble engine's fast plan (``plan_fn``) of a :class:`Centered` template's net, when its only buffers are
    the frozen copy's (else None: the engine then vmaps the module itself)."""
    if not isinstance(template, Centered) or not all(k.startswith(INIT) for k in buffers):
        return None
    return plan_fn(template.net)


def split_centered(params: dict, buffers: dict) -> tuple[dict, dict]:
    """Stacked ``net.*`` parameters and ``init.*`` buffers, each keyed by the net's own parameter names."""
    return ({k[len(PREFIX):]: v for k, v in params.items()}, {k[len(INIT):]: v for k, v in buffers.items()})


def _readout(model: nn.Module, table: ParamTable) -> list[LayerRule]:
    """The rules of the readout's parameters (weight and bias)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if head is None:
        raise WidthkitError(f"{type(model).__name__} has no get_classifier() readout; param.gamma0 and "
                            "param.readout = 'mf' need one (use a registry model family)")
    ids = {id(p) for p in head.parameters()}
    return [r for r in table.rules if id(model.get_parameter(r.name)) in ids]


def fold_readout(model: nn.Module, table: ParamTable, a: float) -> None:
    """Multiply the readout's forward output by ``a``, folded: W, b <- a W, a b; lr scale x a^2 (SGD) or a (Adam)."""
    adam = table.optimizer in ADAM_LIKE
    with torch.no_grad():
        for r in _readout(model, table):
            model.get_parameter(r.name).mul_(a)
            r.mult *= a
            r.init_std = None if r.init_std is None else r.init_std * abs(a)
            r.lr_scale *= a if adam else a * a


def scale_lrs(table: ParamTable, c: float) -> None:
    """Multiply every parameter's lr scale by ``c`` (a global learning-rate factor recorded in the table)."""
    for r in table.rules:
        r.lr_scale *= c


def apply_conventions(model: nn.Module, table: ParamTable, *, center: bool = False, gamma0: float = 1.0,
                      readout: str = "param") -> tuple[nn.Module, ParamTable]:
    """Apply the mean-field readout, the richness gamma0 and centering to a parameterized member (in place;
    the returned model is :class:`Centered` when ``center``). Conventions: the module docstring."""
    if not gamma0 > 0:
        raise WidthkitError(f"param.gamma0 is {gamma0}; it must be positive (1 = the parameterization's own output)")
    if readout not in ("param", "mf"):
        raise WidthkitError(f"param.readout is '{readout}'; choose 'param' (the parameterization's) or 'mf' (1/N)")
    if readout == "mf":
        if table.kind != "ntk" or table.optimizer != "sgd":
            raise WidthkitError(f"param.readout = 'mf' is the 1/N readout of NTK-parameterized SGD (lr = N eta0); "
                                f"this recipe has kind '{table.kind}' and optimizer '{table.optimizer}': set "
                                "param.kind = 'ntk' and optim.name = 'sgd', or use param.kind = 'mup'")
        n = _readout(model, table)[0].fan_in
        fold_readout(model, table, 1.0 / math.sqrt(n))  # 1/sqrt(N) (NTK) -> 1/N
        scale_lrs(table, float(n))
    if gamma0 != 1.0:
        fold_readout(model, table, 1.0 / gamma0)
        scale_lrs(table, gamma0 if table.optimizer in ADAM_LIKE else gamma0 ** 2)
    if center:
        model = Centered(model)
        for r in table.rules:
            r.name = PREFIX + r.name
    return model, table
