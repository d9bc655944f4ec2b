"""Coordinate check as mup's get_coord_data does it: every module's output, per step, over seeds, across width.

The muP prediction (Tensor Programs V): every layer's output h_t and its update h_t - h_1 stay Theta(1) in
width at every step, so their fitted width exponents are ~0.  With the readout started at zero (as mup's
examples and the check's default do) the output at t = 1 and the hidden updates at t = 2 (the first
step's gradient passes through the zero readout) are exactly 0 at every width: flat, with no exponent to fit.
SP with a width-independent learning rate lets the readout grow (its kernel grows like width).
"""
import numpy as np
import pytest
import torch
from torch import nn

from widthkit.analyses import Subject, get_analysis
from widthkit.dynamics import width_exponents
from widthkit.dynamics.coord_check import record_outputs
from widthkit.recipe import load_recipe, resolve_recipe

# The quick-start MLP recipe at its own learning rate (SGD, lr 0.1, momentum 0.9) and widths 16..1024.
MLP = "recipes/quickstart.toml"
# Myrtle-5 CNN on digits, plain SGD (as mup's coord checks) at lr 0.5; widths 64..512 on a batch of 32, 4 seeds.
# (At widths 32..256 the narrowest members scatter most: one width-32 member moves the early updates' exponent
# at t = 3 to -0.20 with 4 seeds.)
CNN = {"name": "cc-cnn", "model": {"family": "cnn", "widths": [64, 128, 256, 512], "depth": 5},
       "param": {"kind": "mup", "base_width": 64}, "data": {"task": "digits"}, "train": {"loss": "xent"},
       "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0}}
RECIPES = {"mlp": MLP, "cnn": CNN}
SEEDS, BATCH = {"mlp": 3, "cnn": 4}, {"mlp": 64, "cnn": 32}


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """muP and SP coordinate checks of both families, t = 1..5 (about 25 s on 2 cores)."""
    a = get_analysis("coord-check")
    out = {}
    for fam, src in RECIPES.items():
        r = resolve_recipe(src)
        opts = a.options(r, seeds=SEEDS[fam], steps=5, batch=BATCH[fam])
        out[fam] = a.run(Subject(r, None, tmp_path_factory.mktemp(fam)), opts)
    return out


@pytest.mark.parametrize("fam", list(RECIPES))
def test_mup_every_layer_flat(checks, fam):
    res, _ = checks[fam]
    mup = res.per_param[0]
    assert mup.param == "mup" and mup.readout_zero and mup.steps == 5 and not res.per_param[1].readout_zero
    assert mup.layers[-1] == "head" and "act0" in mup.layers   # activations are recorded, the readout last
    for q in ("size", "update"):
        c = getattr(mup, q)
        for n in mup.layers:
            e = np.asarray(c.exponent[n])
            v = np.asarray(c.values[n])                              # [width, seed, t]
            assert v.shape == (len(mup.widths), SEEDS[fam], 5)
            assert (np.abs(e[np.isfinite(e)]) <= 0.2).all(), (q, n, e)
            # no exponent only where the layer is exactly 0 at every width: flat by construction
            assert (v[:, :, ~np.isfinite(e)] == 0).all(), (q, n, e)
            assert np.isfinite(e[2:]).all(), (q, n, e)               # from t = 3 on every layer has moved
    assert not mup.beyond(0.2)


@pytest.mark.parametrize("fam", list(RECIPES))
def test_sp_readout_grows(checks, fam):
    res, files = checks[fam]
    mup, sp = res.per_param
    head = np.asarray(sp.size.exponent["head"])
    assert np.nanmax(head) >= 0.4, head                              # grows with width by step 5
    assert any(q == "size" and n == "head" and e >= 0.4 for q, n, _, e, _ in sp.beyond(0.2))
    (b,) = get_analysis("coord-check").blocks(res, files[0].parent)
    assert "head size grows like width^" in b.lines[1] and "stays within width^±0.2" in b.lines[0]


def test_mlp_sp_readout_grows_at_step_5_and_muP_does_not(checks):
    mup, sp = checks["mlp"][0].per_param
    assert sp.size.exponent["head"][4] >= 0.4
    ratio = {p.param: np.mean(p.size.values["head"][-1], 0)[4] / np.mean(p.size.values["head"][0], 0)[4]
             for p in (mup, sp)}                                       # width 1024 / width 16, at t = 5
    assert ratio["sp"] > 3.0 and ratio["sp"] > 2.5 * ratio["mup"] and max(ratio["mup"], 1 / ratio["mup"]) <= 2.0


def test_result_round_trips_with_both_figures(checks):
    res, files = checks["cnn"]
    assert [f.name for f in files] == ["coord_check.json", "coord_check.png", "coord_check_update.png"]
    assert type(res).load(files[0]).to_dict() == res.to_dict()


def test_recipe_readout_init_shrinks_like_one_over_width():
    """widthkit's (and mup's MuReadout) muP readout init std 1/(sqrt(fan_in) m_in) makes the output at init
    scale like width^-1, and the first step's hidden updates (gradients through that readout) like width^-1/2;
    the hidden representations themselves stay flat."""
    a = get_analysis("coord-check")
    r = load_recipe(MLP)
    opts = a.options(r, widths=[64, 128, 256, 512, 1024], params=["mup", "sp"], seeds=3, steps=2, readout_zero=False)
    mup, sp = a.compute(Subject(r), opts).per_param
    assert not mup.readout_zero and not sp.readout_zero
    assert abs(mup.size.exponent["head"][0] + 1) <= 0.1 and abs(sp.size.exponent["head"][0]) <= 0.1
    for n in ("fc0", "act0", "fc1", "act1"):   # (-0.5 +- 0.02 over widths 128..2048; finite-width at 16)
        assert abs(mup.size.exponent[n][0]) <= 0.1 and abs(mup.update.exponent[n][1] + 0.5) <= 0.1, n


def test_width_exponents_known_answers():
    widths = [16, 64, 256, 1024]
    x, w = np.log(widths), np.asarray(widths, float)[:, None]
    c = np.array([1.0, 2.0, 0.5])
    # seed s: c_s * w^0.5 at t = 1, c_s * w^-1 at t = 2, zero at t = 3
    v = np.stack([c * w ** 0.5, c * w ** -1.0, 0 * w * c], -1)         # [width, seed, t]
    e, err = width_exponents(widths, v)
    np.testing.assert_allclose(e[:2], [0.5, -1.0], atol=1e-12)
    rel = c.std(ddof=1) / np.sqrt(3) / c.mean()       # the relative standard error of each width's mean
    np.testing.assert_allclose(err[:2], rel / np.sqrt(((x - x.mean()) ** 2).sum()), rtol=1e-9)
    assert np.isnan(e[2]) and np.isnan(err[2])
    e1, err1 = width_exponents(widths, v[:, :1])
    assert e1[0] == pytest.approx(0.5) and err1[0] == pytest.approx(0.0, abs=1e-12)   # one seed, exact power law
    # noisy narrow widths weigh less: numpy's weighted polyfit of log(mean) with weights 1/(relative error)
    rng = np.random.default_rng(0)
    noisy = np.exp(rng.normal(0, 1.0 / np.sqrt(w), (4, 5)))[..., None]      # spread ~ width^-1/2
    (e2,), _ = width_exponents(widths, noisy)
    m, sem = noisy[..., 0].mean(1), noisy[..., 0].std(1, ddof=1) / np.sqrt(5)
    assert e2 == pytest.approx(np.polyfit(x, np.log(m), 1, w=m / sem)[0], rel=1e-9)


def test_record_outputs_every_module_once():
    """Leaves and activations in forward order; the Sequential containers (whose output is their last child's)
    dropped; a root that computes its own output kept as 'output'; the input flatten (no parameter yet) skipped."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3)))

        def forward(self, x):
            return 2 * self.body(x)

    net, x = Net(), torch.randn(5, 2, 2)
    outs = record_outputs(net, dict(net.named_parameters()), {}, x)
    assert list(outs) == ["body.1", "body.2", "body.3.0", "output"]
    h = net.body[2](net.body[1](x.flatten(1)))
    torch.testing.assert_close(outs["body.2"], h)
    torch.testing.assert_close(outs["output"], 2 * net.body[3](h))
