"""hp-transfer: optimum interpolation and drift on known answers, and the check end to end on a tiny packed
sweep (SP and muP panels, typo'd --key, JSON round trip)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from widthkit.analyses import get_analysis
from widthkit.analyses.base import analyze
from widthkit.analyses.hp_transfer import HpTransferResult, _panel, optimum_on_log_grid
from widthkit.errors import WidthkitError
from widthkit.ladder import train_ladder

VALUES = 2.0 ** np.arange(-8, 0)  # 8 values, 1 octave apart


def test_optimum_is_the_vertex_of_a_log2_parabola_and_edges_are_flagged():
    x = np.log2(VALUES)
    best, edge = optimum_on_log_grid(VALUES, (x + 4.3) ** 2)
    assert best == pytest.approx(2 ** -4.3, rel=1e-9) and not edge
    assert optimum_on_log_grid(VALUES, -(x + 4.3) ** 2, maximize=True)[0] == pytest.approx(2 ** -4.3, rel=1e-9)
    assert optimum_on_log_grid(VALUES, x) == (VALUES[0], True)  # still falling at the grid's end
    y = (x + 4.3) ** 2
    y[3] = np.nan  # an unusable cell is skipped, not a minimum
    assert math.isfinite(optimum_on_log_grid(VALUES, y)[0])


def test_drift_is_the_slope_of_the_optimum_in_octaves_per_doubling():
    """Optimum at 2^(-3.3 + d log2(w/16)): the fitted drift is d, the interval brackets the optimum, a diverged
    member is counted and left out, and 'wider is better' follows the curves."""
    rng = np.random.default_rng(0)
    widths = [16, 32, 64, 128]
    x = np.log2(VALUES)
    for d in (-1.0, 0.0):
        cells = {}
        for w in widths:
            centre = -3.3 + d * (math.log2(w) - 4)
            m = ((x - centre) ** 2)[:, None] + 1.0 / w + 0.0005 * rng.standard_normal((len(x), 4))
            m[0, 1] = np.nan  # one diverged member
            cells[w] = (m, np.isnan(m).sum(1))
        p = _panel("x", widths, VALUES, cells, False, 50, 0)
        assert p.drift == pytest.approx(d, abs=0.05) and p.drift_err < 0.05
        for c in p.curves:
            assert c.interval[0] <= c.optimum * 1.01 and c.interval[1] >= c.optimum * 0.99
            assert c.diverged[0] == 1 and c.usable[0] == 3 and c.usable[1] == 4
        if d == 0:  # same curve shifted down by 1/w: wider is better at every value
            assert all(p.wider_is_better)


SWEEP = {
    "name": "hp-tiny", "seed": 0,
    "model": {"family": "mlp", "widths": [8, 32], "depth": 2},
    "param": {"kind": ["sp", "mup"], "base_width": 8},
    "data": {"task": "digits", "batch_size": 64},
    "train": {"steps": 16, "seeds": 2, "eval_every": 8, "checkpoint_every": 0},
    "optim": {"name": "adam", "lr": [0.001, 0.004, 0.016, 0.064]},
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("hp") / "run"
    return train_ladder(SWEEP, out)


def test_hp_transfer_end_to_end_on_a_packed_sp_mup_sweep(sweep, tmp_path):
    assert len(sweep.points) == 8 and len(sweep.index["jobs"]) == 16
    assert all(len(r["packed"]) == 4 for r in sweep.index["jobs"].values())  # lr x seeds: one job per width x kind
    res = analyze("hp-transfer", sweep, tmp_path / "out", bootstrap=20)
    assert isinstance(res, HpTransferResult) and res.values == SWEEP["optim"]["lr"] and res.widths == [8, 32]
    assert [p.label for p in res.panels] == ["param.kind=sp", "param.kind=mup"] and res.step == 16
    for p in res.panels:
        assert set(p.optimum) == {8, 32} and all(min(res.values) <= v <= max(res.values) for v in p.optimum.values())
        assert math.isfinite(p.drift)
        # the metric per cell is the stored train loss of that grid point, averaged over its seeds
        key = f"{p.label},optim.lr=0.016"
        want = sweep.select(key).metrics(32)["train_loss"][:, -1].mean()
        assert p.curves[1].mean[2] == pytest.approx(want)
    sp, mup = res.panels
    assert sp.optimum[8] == pytest.approx(mup.optimum[8], rel=1e-3)  # muP equals SP at the base width
    saved = json.loads((tmp_path / "out" / "hp_transfer.json").read_text())
    assert set(saved["panels"][0]["optimum"]) == {"8", "32"} and "drift" in saved["panels"][1]
    assert HpTransferResult.load(tmp_path / "out" / "hp_transfer.json") == res
    assert (tmp_path / "out" / "hp_transfer.png").stat().st_size > 10_000
    blocks = get_analysis("hp-transfer").blocks(res, tmp_path / "out")
    assert blocks[0].lines[0].startswith("param.kind=sp: the best optim.lr")
    with pytest.raises(WidthkitError, match=r"--key 'optim.lrr' is not swept .*swept keys: param.kind, optim.lr"):
        analyze("hp-transfer", sweep, tmp_path / "bad", key="optim.lrr")
    with pytest.raises(WidthkitError, match="unknown --metric 'loss'"):
        analyze("hp-transfer", sweep, tmp_path / "bad", metric="loss")


# ------------------------------------------------------------------ exact Adam under muP
def _adam_pair(width: int, eps_scaled: bool, steps: int = 50):
    """(folded widthkit member after ``steps`` Adam steps, the unfolded model's a*w after the same steps
    with torch.optim.Adam): muP MLP, output multiplier 2, epsilon 1e-3 (large, so that it matters)."""
    import torch
    from torch.func import functional_call

    from widthkit.build import build_member, load_recipe_task
    from widthkit.engine import Ensemble
    from widthkit.recipe import from_dict

    r = from_dict({"model": {"family": "mlp", "widths": [8, width], "depth": 2},
                   "param": {"kind": "mup", "base_width": 8, "output_mult": 2.0},
                   "data": {"task": "digits", "batch_size": 32}, "optim": {"name": "adam", "lr": 0.01, "eps": 1e-3}})
    task = load_recipe_task(r)
    model, table = build_member(r, width, 0, task)
    rules = {x.name: x for x in table.rules}
    assert rules["head.weight"].role == "readout" and rules["head.weight"].mult == pytest.approx(2.0 * 8 / width)
    # the unfolded model: stored weights w = W / a, the forward multiplies by a; its own Adam lr is lr * c
    w = {n: torch.nn.Parameter(p.detach() / rules[n].mult) for n, p in model.named_parameters()}
    opt = torch.optim.Adam([{"params": [w[n]], "lr": 0.01 * rules[n].lr_scale / rules[n].mult} for n in w],
                           eps=1e-3)
    ens = Ensemble([model], table.lr_scales(), r.optim, "xent", eps_scales=table.eps_scales() if eps_scaled else None)
    shell = build_member(r, width, 0, task)[0]
    for t in range(steps):
        x, y = task.x_train[16 * t:16 * t + 16], task.y_train[16 * t:16 * t + 16]
        ens.step(x[None], y[None], 0.01)
        opt.zero_grad()
        out = functional_call(shell, {n: rules[n].mult * w[n] for n in w}, (x,))
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return ens.member_state(0), {n: rules[n].mult * w[n].detach() for n in w}


@pytest.mark.parametrize("width", [32, 128])
def test_folded_adam_with_scaled_epsilon_follows_the_unfolded_model(width):
    import torch
    folded, unfolded = _adam_pair(width, eps_scaled=True)
    for n in unfolded:
        torch.testing.assert_close(folded[n], unfolded[n], rtol=1e-4, atol=1e-5)
    plain, _ = _adam_pair(width, eps_scaled=False)  # one epsilon for every folded weight: the readout differs
    assert not torch.allclose(plain["head.weight"], unfolded["head.weight"], rtol=1e-3, atol=1e-4)
