"""timm-backed families: ``resnet``, ``vit`` and ``timm:<name>``; plus muP attention scaling.

Width enters as the timm argument each architecture has for it:

* ResNet (timm module ``resnet``: resnet*, resnext*, seresnet*, wide_resnet*, ...):
  ``channels=(w, 2w, 4w, 8w)`` and a stem of ``w`` channels.  timm hard-codes 64 stem
  channels for its plain 7x7 stem, so construction swaps the stem for one of width ``w``
  and builds the stages from ``w`` input channels (see :func:`_resnet_stages_from`).
* VisionTransformer (``vision_transformer``: vit_*): ``embed_dim=w``.
* ConvNeXt (``convnext``): ``dims=(w, 2w, 4w, 8w)``.
* MLP-Mixer (``mlp_mixer``: mixer_*): ``embed_dim=w``.

Nothing is ever downloaded: ``pretrained=False`` always.  timm is imported when a model is built, so
importing the model registry stays light.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
from typing import Any, Literal

import torch
from torch import nn

from widthkit.errors import WidthkitError, unknown
from widthkit.models.blocks import image_shape
from widthkit.models.registry import register_model, register_prefix
from widthkit.validate import PositiveFloat, PositiveInt, coerce

AttnScale = Literal["sqrt", "linear"]
_PATCH_LOCK = threading.RLock()


# ---------------------------------------------------------------- attention scale

class QScale(nn.Module):
    """Multiplies queries by a fixed float (no parameters, no buffers, no state_dict keys)."""

    def __init__(self, mult: float):
        super().__init__()
        self.mult = float(mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mult

    def extra_repr(self) -> str:
        return f"mult={self.mult:g}"


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every timm attention module (those with ``q_norm`` and ``head_dim``)."""
    return [(n, m) for n, m in model.named_modules()
            if hasattr(m, "q_norm") and isinstance(getattr(m, "head_dim", None), int)]


def set_attention_scale(model: nn.Module, mode: str = "sqrt") -> nn.Module:
    """Set the attention-logit scale of every timm attention module in ``model`` (in place).

    ``"sqrt"``: timm's default ``q.k / sqrt(head_dim)``.  ``"linear"``: ``q.k / head_dim``
    as muP prescribes.  It works by setting ``attn.q_norm`` (applied to q before both the
    fused and the explicit attention paths) to identity or to a parameter-free multiply
    by ``head_dim ** -0.5``, so state_dict keys and torch.compile are unaffected.
    """
    coerce(mode, AttnScale, "mode", "set_attention_scale")
    found = attention_modules(model)
    if not found:
        raise WidthkitError(f"set_attention_scale: {type(model).__name__} has no timm attention modules; "
                            "use it on a ViT-style model")
    for name, attn in found:
        if not isinstance(attn.q_norm, (nn.Identity, QScale)):
            raise WidthkitError(f"set_attention_scale: attention '{name}' uses qk_norm; "
                                "build the model without qk_norm")
        attn.q_norm = QScale(attn.head_dim ** -0.5) if mode == "linear" else nn.Identity()
    return model


# ---------------------------------------------------------------- resnet helpers

@contextlib.contextmanager
def _resnet_stages_from(inplanes: int):
    """While active, timm's ResNet builds its stages from ``inplanes`` channels (not its fixed 64)."""
    import timm.models.resnet as timm_resnet
    original = timm_resnet.make_blocks

    def make_blocks(block_fns, channels, block_repeats, _inplanes, **kwargs):
        return original(block_fns, channels, block_repeats, inplanes, **kwargs)

    with _PATCH_LOCK:
        timm_resnet.make_blocks = make_blocks
        try:
            yield
        finally:
            timm_resnet.make_blocks = original


def _conv_like(conv: nn.Conv2d, in_ch: int, out_ch: int) -> nn.Conv2d:
    new = nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # timm ResNet init
    return new


def _norm_like(norm: nn.Module, ch: int) -> nn.Module:
    from timm.layers import GroupNorm1
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    if isinstance(norm, nn.BatchNorm2d):
        return nn.BatchNorm2d(ch, eps=norm.eps, momentum=norm.momentum, affine=norm.affine,
                              track_running_stats=norm.track_running_stats)
    if isinstance(norm, nn.GroupNorm) and norm.num_groups == 1:
        return GroupNorm1(ch, eps=norm.eps, affine=norm.affine)
    raise WidthkitError(f"cannot rescale a ResNet stem with norm {type(norm).__name__}; "
                        "use a timm ResNet with BatchNorm")


def _fix_resnet_stem(model: nn.Module, width: int) -> None:
    """Make timm ResNet's stem (conv1, bn1, maxpool) output ``width`` channels."""
    convs = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    last = convs[-1]
    if last.out_channels != width:
        stem_out = last.out_channels
        if isinstance(model.conv1, nn.Conv2d):
            model.conv1 = _conv_like(last, last.in_channels, width)
        else:
            idx = [i for i, m in enumerate(model.conv1) if m is last][0]
            model.conv1[idx] = _conv_like(last, last.in_channels, width)
        model.bn1 = _norm_like(model.bn1, width)
        if isinstance(model.maxpool, nn.Sequential):  # replace_stem_pool: conv-norm-act
            for i, m in enumerate(model.maxpool):
                if isinstance(m, nn.Conv2d):
                    model.maxpool[i] = _conv_like(m, width, width)
                elif not isinstance(m, nn.Identity) and getattr(m, "num_features",
                                                                getattr(m, "num_channels", 0)) == stem_out:
                    model.maxpool[i] = _norm_like(m, width)


@register_model("resnet")
def resnet(*, width: int, in_shape: tuple, num_classes: int, layers: tuple[PositiveInt, ...] = (2, 2, 2, 2),
           block: Literal["basic", "bottleneck"] = "basic", small_input: bool | None = None,
           norm: Literal["batch", "layer", "none"] = "batch", zero_init_last: bool = True) -> nn.Module:
    """timm ResNet with channels (w, 2w, 4w, ...) per stage and a ``w``-channel stem.

    ``layers``: blocks in each of the 4 stages ((2,2,2,2) = resnet18; block "bottleneck" with
    (3,4,6,3) = resnet50).
    ``small_input`` (default: True when the image is under 64 px): 3x3 stride-1 stem without
    max-pool, as CIFAR ResNets.  ``norm``: batch | layer (GroupNorm with 1 group) | none.
    """
    import timm.models.resnet as timm_resnet
    from timm.layers import GroupNorm1
    c, h, w = image_shape("resnet", in_shape)
    if len(layers) != 4:
        raise WidthkitError(f"model family 'resnet': layers={list(layers)} is invalid; "
                            "use 4 block counts (one per stage), e.g. [2, 2, 2, 2]")
    block_cls = {"basic": timm_resnet.BasicBlock, "bottleneck": timm_resnet.Bottleneck}[block]
    small = min(h, w) < 64 if small_input is None else small_input
    norm_layer = {"batch": nn.BatchNorm2d, "layer": GroupNorm1, "none": nn.Identity}[norm]
    with _resnet_stages_from(width):
        model = timm_resnet.ResNet(block_cls, layers, num_classes=num_classes, in_chans=c,
                                   channels=tuple(width * 2 ** i for i in range(len(layers))),
                                   stem_width=width, norm_layer=norm_layer, zero_init_last=zero_init_last)
    if small:
        model.conv1 = _conv_like(nn.Conv2d(c, width, 3, 1, 1, bias=False), c, width)
        model.maxpool = nn.Identity()
    else:
        model.conv1 = _conv_like(model.conv1, c, width)
    model.bn1 = norm_layer(width)
    model.readout_name = "fc"
    return model


# ---------------------------------------------------------------- vit

def default_patch_size(h: int, w: int) -> int:
    """Patch size giving a 4x4..8x8 token grid for small images (8px->2, 32px->4, 64px->8), 16 above."""
    side = min(h, w)
    return 2 if side <= 16 else 4 if side <= 32 else 8 if side <= 64 else 16


@register_model("vit")
def vit(*, width: int, in_shape: tuple, num_classes: int, depth: PositiveInt = 4,
        heads: PositiveInt | None = None, head_dim: PositiveInt | None = None,
        patch_size: PositiveInt | None = None, mlp_ratio: PositiveFloat = 4.0, class_token: bool = False,
        global_pool: Literal["avg", "token", "max"] = "avg", qkv_bias: bool = True,
        attn_scale: AttnScale = "sqrt") -> nn.Module:
    """timm VisionTransformer with ``embed_dim = width``.

    Heads: ``heads`` fixes their number (head_dim = width / heads grows with width);
    ``head_dim`` fixes their size (heads = width / head_dim); neither -> 4 heads.
    ``attn_scale``: "sqrt" (1/sqrt(head_dim), timm default) or "linear" (1/head_dim, muP).
    """
    from timm.models.vision_transformer import VisionTransformer
    c, h, w = image_shape("vit", in_shape)
    if heads is not None and head_dim is not None:
        raise WidthkitError("model family 'vit': set either heads (fixed count) or head_dim "
                            "(fixed size), not both")
    if head_dim is not None:
        if width % head_dim:
            raise WidthkitError(f"model family 'vit': width {width} is not divisible by "
                                f"head_dim={head_dim}; use widths that are multiples of {head_dim}")
        heads = width // head_dim
    else:
        heads = 4 if heads is None else heads
        if width % heads:
            raise WidthkitError(f"model family 'vit': width {width} is not divisible by heads={heads}; "
                                f"use widths that are multiples of {heads} or set head_dim")
    patch = default_patch_size(h, w) if patch_size is None else patch_size
    if h % patch or w % patch:
        raise WidthkitError(f"model family 'vit': image {h}x{w} is not divisible by patch_size={patch}; "
                            "choose a patch_size that divides the image size")
    if global_pool == "token" and not class_token:
        raise WidthkitError("model family 'vit': global_pool='token' needs class_token=true")
    model = VisionTransformer(img_size=(h, w), patch_size=patch, in_chans=c, num_classes=num_classes,
                              embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                              qkv_bias=qkv_bias, class_token=class_token, global_pool=global_pool)
    set_attention_scale(model, attn_scale)
    model.readout_name = "head"
    return model


# ---------------------------------------------------------------- timm:<name>

def _quad(w: int) -> tuple[int, ...]:
    return (w, 2 * w, 4 * w, 8 * w)


# timm module -> (name pattern shown to users, kwargs setting the width)
TIMM_WIDTH_ARGS = {
    "resnet": ("resnet*, resnext*, seresnet*, wide_resnet*",
               lambda w, hw: {"channels": _quad(w), "stem_width": max(1, w // 2)}),
    "vision_transformer": ("vit_*", lambda w, hw: {"embed_dim": w, "img_size": hw}),
    "convnext": ("convnext*", lambda w, hw: {"dims": _quad(w)}),
    "mlp_mixer": ("mixer_*", lambda w, hw: {"embed_dim": w, "img_size": hw}),
}


def check_timm_name(name: str) -> str:
    """The timm module of model ``name``; WidthkitError if unknown or without a width argument."""
    import timm
    from timm.models import _registry as timm_registry
    if not timm.is_model(name):
        raise unknown("timm model", name, timm.list_models())
    module = timm_registry._model_to_module.get(name, "")
    if module not in TIMM_WIDTH_ARGS:
        known = "; ".join(p for p, _ in TIMM_WIDTH_ARGS.values())
        raise WidthkitError(f"timm model '{name}' (timm module '{module}') has no known width argument; "
                            f"width works for: {known}")
    return module


@contextlib.contextmanager
def _build_overrides(module: str, overrides: dict[str, Any]):
    """While active, timm's model builder in ``timm.models.<module>`` gets ``overrides`` as final kwargs.

    timm entrypoints write some defaults as ``dict(embed_dim=512, **kwargs)``, which rejects a
    user value; overriding at ``build_model_with_cfg`` sets the width for every entrypoint.
    """
    mod = importlib.import_module(f"timm.models.{module}")
    original = mod.build_model_with_cfg

    def build(model_cls, variant, pretrained, **kwargs):
        return original(model_cls, variant, pretrained, **{**kwargs, **overrides})

    with _PATCH_LOCK:
        mod.build_model_with_cfg = build
        try:
            yield
        finally:
            mod.build_model_with_cfg = original


def timm_extras(name: str) -> dict[str, Any]:
    """widthkit's own options for ``timm:<name>`` (checks the name)."""
    return {"attn_scale": None} if check_timm_name(name) == "vision_transformer" else {}


def create_timm(name: str, *, width: int, in_shape: tuple, num_classes: int, **kwargs: Any) -> nn.Module:
    """Any timm model of a supported architecture, with width set through its own argument.

    Extra ``kwargs`` go to the timm model class, overriding the entrypoint's defaults
    (e.g. num_heads, patch_size, depth); ``attn_scale`` ("sqrt"|"linear") is handled here for ViTs.
    """
    import timm
    module = check_timm_name(name)
    c, h, w = image_shape(f"timm:{name}", in_shape)
    attn_scale = kwargs.pop("attn_scale", None)
    if attn_scale is not None and module != "vision_transformer":
        raise WidthkitError(f"attn_scale only applies to vit_* models, not timm:{name}")
    if kwargs.pop("pretrained", False):
        raise WidthkitError("pretrained weights cannot be downloaded; remove pretrained=true")
    overrides = {**TIMM_WIDTH_ARGS[module][1](width, (h, w)), **kwargs}
    try:
        stages = _resnet_stages_from(width) if module == "resnet" else contextlib.nullcontext()
        with _build_overrides(module, overrides), stages:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=c)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise WidthkitError(f"timm could not build '{name}' at width {width} for input {tuple(in_shape)}: "
                            f"{msg}") from None
    empty = [n for n, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise WidthkitError(f"width {width} is too small for timm:{name} ('{empty[0]}' has no entries); "
                            "use a larger width")
    if module == "resnet":
        _fix_resnet_stem(model, width)
    if attn_scale is not None:
        set_attention_scale(model, attn_scale)
    return model


register_prefix("timm:", create_timm, timm_extras, "timm:<any timm name>")
