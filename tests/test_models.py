"""Model registry and families: shapes across widths, readout contract, attention scaling, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from widthkit.errors import WidthkitError
from widthkit.models import create_model, list_models, model_kwargs, set_attention_scale, validate_kwargs

K = 3  # num_classes: distinct from every width and channel count used below

# family, in_shape, base width, kwargs, params that must NOT change with width
CASES = [
    ("mlp", (1, 8, 8), 4, {"depth": 3, "activation": "tanh"}, {"head.bias"}),
    ("cnn", (1, 8, 8), 4, {}, {"head.bias"}),
    ("cnn", (3, 16, 16), 4, {"batchnorm": True, "depth": 7}, {"head.bias"}),
    ("conv1d", (1, 40), 4, {}, {"head.bias"}),
    ("resnet", (1, 8, 8), 4, {"layers": [1, 1, 1, 1]}, {"fc.bias"}),
    ("vit", (1, 8, 8), 8, {"depth": 1}, {"head.bias"}),
    ("timm:resnet18", (3, 16, 16), 4, {}, {"fc.bias"}),
    ("timm:vit_tiny_patch16_224", (3, 16, 16), 8, {"patch_size": 8, "num_heads": 2, "depth": 1},
     {"head.bias"}),
    # token-mixing MLP: hidden 0.5*width, output = number of patches (fixed)
    ("timm:mixer_s16_224", (3, 16, 16), 4, {"patch_size": 4, "num_blocks": 1},
     {"head.bias", "blocks.0.mlp_tokens.fc2.bias"}),
]
IDS = [f"{c[0]}-{'x'.join(map(str, c[1]))}" for c in CASES]
_BUILT: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin contention on the shared 2-core CI box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(case, mult: int, seed: int = 0):
    """The case's model at width base*mult (cached; built under a fixed seed)."""
    family, in_shape, base, kwargs, _ = case
    key = (family, in_shape, mult, seed, tuple(sorted(kwargs)))
    if key not in _BUILT:
        torch.manual_seed(seed)
        _BUILT[key] = create_model(family, width=base * mult, in_shape=in_shape, num_classes=K,
                                   **kwargs).eval()
    return _BUILT[key]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_builds_at_two_widths_with_width_scaled_shapes(case):
    family, in_shape, base, _, fixed = case
    small, big = build(case, 1), build(case, 2)
    for m in (small, big):
        assert m(torch.randn(2, *in_shape)).shape == (2, K)
    shapes = {n: p.shape for n, p in small.named_parameters()}
    shapes2 = {n: p.shape for n, p in big.named_parameters()}
    assert list(shapes) == list(shapes2), "parameter names must not depend on width"
    unscaled = set()
    for name, s in shapes.items():
        ratios = [b / a for a, b in zip(s, shapes2[name])]
        assert len(s) == len(shapes2[name]) and set(ratios) <= {1.0, 2.0}, (name, s, shapes2[name])
        if 2.0 not in ratios:
            unscaled.add(name)
    assert unscaled == fixed
    # readout: fixed outputs, width-scaled inputs; every parameter other than it has a width dim
    head = big.get_classifier()
    assert big.get_submodule(big.readout_name) is head
    w_name = f"{big.readout_name}.weight"
    assert shapes2[w_name][0] == K and shapes2[w_name][1] == 2 * shapes[w_name][1]


def test_mlp_and_cnn_shapes_exactly():
    mlp = create_model("mlp", width=5, in_shape=(2, 3), num_classes=K, depth=2, bias=False)
    assert {n: tuple(p.shape) for n, p in mlp.named_parameters()} == {
        "fc0.weight": (5, 6), "fc1.weight": (5, 5), "head.weight": (K, 5)}
    cnn = create_model("cnn", width=5, in_shape=(2, 8, 8), num_classes=K)  # Myrtle-5: convs 2-1-1
    assert {n: tuple(p.shape) for n, p in cnn.named_parameters()} == {
        "conv0.weight": (5, 2, 3, 3), "conv0.bias": (5,), "conv1.weight": (5, 5, 3, 3), "conv1.bias": (5,),
        "conv2.weight": (5, 5, 3, 3), "conv2.bias": (5,), "conv3.weight": (5, 5, 3, 3), "conv3.bias": (5,),
        "head.weight": (K, 5), "head.bias": (K,)}


def test_cnn_pooling_stops_at_one_pixel():
    m = create_model("cnn", width=4, in_shape=(1, 2, 2), num_classes=K, depth=10)
    assert isinstance(m.pool1, torch.nn.AvgPool2d) and isinstance(m.pool2, torch.nn.Identity)
    assert m(torch.randn(3, 1, 2, 2)).shape == (3, K)


def test_resnet_stem_and_stages_scale_with_width():
    small = create_model("resnet", width=6, in_shape=(3, 32, 32), num_classes=K, layers=[1, 1, 1, 1])
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)  # small_input default for < 64 px
    assert [small.conv1.out_channels, small.layer1[0].conv1.in_channels,
            small.layer2[0].conv1.out_channels, small.fc.in_features] == [6, 6, 12, 48]
    assert small.layer1[0].downsample is None  # like resnet18: no projection in stage 1
    timm18 = create_model("timm:resnet18", width=6, in_shape=(3, 32, 32), num_classes=K)
    assert timm18.conv1.kernel_size == (7, 7) and timm18.conv1.out_channels == 6
    assert timm18.layer1[0].conv1.in_channels == 6 and timm18.layer1[0].downsample is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_get_classifier_is_the_final_linear_map(case):
    model = build(case, 1)
    head = model.get_classifier()
    feats = {}
    handle = head.register_forward_hook(lambda m, inp, out: feats.__setitem__("x", inp[0]))
    x = torch.randn(4, *case[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
        old = head.weight.clone()
        new = torch.randn_like(old)
        head.weight.copy_(new)
        y2 = model(x)
        head.weight.copy_(old)
    handle.remove()
    bias = head.bias if head.bias is not None else 0
    torch.testing.assert_close(y, feats["x"] @ old.T + bias)
    torch.testing.assert_close(y2, feats["x"] @ new.T + bias)


def test_vit_heads_versus_head_dim():
    def attn(width, **kw):
        return create_model("vit", width=width, in_shape=(1, 8, 8), num_classes=K, depth=1,
                            **kw).blocks[0].attn
    for width in (16, 32):
        fixed_count = attn(width, heads=2)
        assert (fixed_count.num_heads, fixed_count.head_dim) == (2, width // 2)
        fixed_dim = attn(width, head_dim=4)
        assert (fixed_dim.num_heads, fixed_dim.head_dim) == (width // 4, 4)
    assert attn(16).num_heads == 4  # default
    with pytest.raises(WidthkitError, match="not divisible by head_dim"):
        attn(18, head_dim=4)


def _reference_attention(attn, x, scale):
    """Multi-head self-attention recomputed from the module's weights with logit scale ``scale``."""
    b, n, c = x.shape
    h, d = attn.num_heads, attn.head_dim
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1)) * scale
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h * d)
    return F.linear(out, attn.proj.weight, attn.proj.bias), logits


@pytest.mark.parametrize("fused", [True, False])
def test_attention_scale_linear_divides_logits_by_head_dim(fused):
    torch.manual_seed(0)
    model = create_model("vit", width=32, in_shape=(1, 8, 8), num_classes=K, depth=1, heads=2).eval()
    attn = model.blocks[0].attn
    attn.fused_attn = fused
    d = attn.head_dim
    x = torch.randn(2, 5, 32)
    captured = {}
    with torch.no_grad():
        attn.qkv.weight.mul_(20.0)  # O(1) logits, so the two scalings give clearly different outputs
        out_sqrt = attn(x)
        ref_sqrt, logits_sqrt = _reference_attention(attn, x, d ** -0.5)
        set_attention_scale(model, "linear")
        attn.q_norm.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o))
        out_lin = attn(x)
        ref_lin, logits_lin = _reference_attention(attn, x, 1.0 / d)
        k = F.linear(x, attn.qkv.weight, attn.qkv.bias).reshape(2, 5, 3, 2, d).permute(2, 0, 3, 1, 4)[1]
        used_logits = captured["q"] @ k.transpose(-2, -1) * attn.scale  # what timm computes from q_norm(q)
    torch.testing.assert_close(out_sqrt, ref_sqrt)
    torch.testing.assert_close(out_lin, ref_lin)
    torch.testing.assert_close(used_logits, logits_sqrt / math.sqrt(d))
    torch.testing.assert_close(logits_lin, logits_sqrt / math.sqrt(d))
    assert (out_lin - out_sqrt).abs().max() > 1e-2  # the two scalings really differ
    set_attention_scale(model, "sqrt")
    with torch.no_grad():
        torch.testing.assert_close(attn(x), out_sqrt)


def test_attention_scale_survives_state_dict_and_compile(tmp_path):
    def vit(seed, scale):
        torch.manual_seed(seed)
        return create_model("vit", width=8, in_shape=(1, 8, 8), num_classes=K, depth=1,
                            attn_scale=scale).eval()
    lin, plain = vit(0, "linear"), vit(0, "sqrt")
    assert list(lin.state_dict()) == list(plain.state_dict())  # no new keys
    torch.save(lin.state_dict(), tmp_path / "m.pt")
    x = torch.randn(3, 1, 8, 8)
    reloaded = vit(1, "linear")
    reloaded.load_state_dict(torch.load(tmp_path / "m.pt"))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), lin(x))
        assert not torch.allclose(plain(x), lin(x))
        # graph capture + AOT autograd (inductor codegen on CPU takes ~90 s, too slow for CI)
        compiled = torch.compile(lin, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), lin(x))


def test_unknown_family_and_bad_kwargs_give_one_line_errors():
    def err(*args, **kw):
        with pytest.raises(WidthkitError) as info:
            create_model(*args, **{"width": 8, "in_shape": (1, 8, 8), "num_classes": K, **kw})
        msg = str(info.value)
        assert "\n" not in msg
        return msg
    assert "did you mean 'mlp'" in err("mpl")
    assert "did you mean 'depth'" in err("mlp", depht=2) and "activation" in err("mlp", depht=2)
    assert "depth=-1" in err("mlp", depth=-1)
    assert "did you mean 'relu'" in err("mlp", activation="rleu")
    assert "width" in err("mlp", width=0) and "width" in err("mlp", width=2.5)
    assert "did you mean 'bottleneck'" in err("resnet", block="bottlenek")
    assert "4 block counts" in err("resnet", layers=[2, 2])
    assert "did you mean 'resnet18'" in err("timm:resnet1")
    assert "no known width argument" in err("timm:efficientnet_b0")
    assert "unexpected keyword" in err("timm:resnet18", foo=1)
    assert "too small" in err("timm:resnet26t", width=3)  # tiered stem: 3*(1//4) = 0 channels
    assert "not divisible by patch_size" in err("vit", patch_size=3)
    with pytest.raises(WidthkitError, match="did you mean 'batchnorm'"):
        validate_kwargs("cnn", {"batchnrom": True})
    with pytest.raises(WidthkitError, match="no timm attention"):
        set_attention_scale(create_model("mlp", width=4, in_shape=(2,), num_classes=K), "linear")


def test_listing_and_model_kwargs():
    assert {"cnn", "conv1d", "mlp", "resnet", "vit"} <= set(list_models())
    assert model_kwargs("mlp") == {"depth": 2, "activation": "relu", "bias": True}
    assert model_kwargs("vit")["attn_scale"] == "sqrt"
    assert model_kwargs("timm:vit_tiny_patch16_224") == {"attn_scale": None}
    model = create_model("conv1d", width=4, in_shape=(40,), num_classes=K)  # (L,) accepted as (1, L)
    assert model(torch.randn(2, 40)).shape == (2, K)
    assert model.widthkit_spec == {"family": "conv1d", "width": 4, "in_shape": (40,), "num_classes": K,
                                   "kwargs": {}}
