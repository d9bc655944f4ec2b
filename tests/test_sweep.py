"""Sweeps end to end: a two-point recipe trains both points, each is selectable, and the study and the
report keep one folder and one results section per point."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import widthkit
from widthkit.errors import WidthkitError
from widthkit.ladder import train_ladder
from widthkit.store import RunPoint, open_run

SWEEP = {
    "name": "tiny-sweep", "seed": 0,
    "model": {"family": "mlp", "widths": [8, 16], "depth": 2},
    "param": {"kind": "mup", "base_width": 8},
    "data": {"task": "digits", "batch_size": 64},
    "train": {"steps": 20, "seeds": 2, "eval_every": 10, "checkpoint_every": 20},
    "optim": {"name": "sgd", "lr": [0.05, 0.1], "momentum": 0.9},
    "study": {"skip": ["atlas"]},
}
KEYS = ["optim.lr=0.05", "optim.lr=0.1"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    return out, train_ladder(SWEEP, out)


def test_sweep_trains_every_point_and_selects_by_index_and_key(swept):
    out, run = swept
    assert run.points == KEYS and len(run.index["jobs"]) == 4
    views = [run.select(0), run.select(KEYS[1])]
    assert run.select(KEYS[0]) is views[0] and run.select(1) is views[1]
    for view, key, lr in zip(views, KEYS, (0.05, 0.1)):
        assert isinstance(view, RunPoint) and view.point_key == key and view.recipe.optim.lr == lr
        assert view.widths == [8, 16] and view.seeds == [0, 1] and view.logits(16).shape[0] == 2
    assert not np.allclose(views[0].metrics(16)["train_loss"], views[1].metrics(16)["train_loss"], equal_nan=True)
    assert str(views[0].cache_dir).endswith("cache/p00") and str(views[1].cache_dir).endswith("cache/p01")
    with pytest.raises(WidthkitError, match=r"2 grid points; choose one with run\.select"):
        run.widths
    with pytest.raises(WidthkitError, match=r"unknown grid point 'optim.lr=0.2'"):
        run.select("optim.lr=0.2")
    with pytest.raises(WidthkitError, match="out of range"):
        run.select(2)
    assert open_run(out).select(1).recipe.fingerprint() == views[1].recipe.fingerprint()


def test_study_of_a_sweep_writes_one_folder_and_one_report_section_per_point(swept):
    out, _ = swept
    res = widthkit.study(SWEEP, out, quiet=True)
    assert res.points == KEYS and res.jobs == 4 and res.jobs_trained == 0  # the trained shards are kept
    done = [(a.name, a.point) for a in res.analyses if a.status == "done"]
    assert done == [("ensemble-bias", k) for k in KEYS]
    for i in range(2):
        folder = out / "points" / f"p{i:02d}" / "ensemble_bias"
        assert (folder / "ensemble_bias.json").is_file() and list(folder.glob("*.png"))
        assert json.loads((folder / "ensemble_bias.json").read_text())
    page = (out / "report.html").read_text()
    assert re.findall(r'<section id="(results[^"]*)"', page) == ["results-p00", "results-p01"]
    for key in KEYS:
        assert f"[{key}]" in page


# ------------------------------------------------------------------ packed sweeps
def _packed_recipe(optim: dict) -> dict:
    return {"name": "packed", "seed": 3, "model": {"family": "mlp", "widths": [16], "depth": 2},
            "param": {"kind": "mup", "base_width": 8, "output_mult": [1.0, 4.0]},
            "data": {"task": "digits", "batch_size": 32},
            "train": {"steps": 12, "seeds": 2, "eval_every": 6, "checkpoint_every": 0, "strategy": "vectorized"},
            "optim": optim}


@pytest.mark.parametrize("optim", [
    {"name": "sgd", "lr": [0.05, 0.2], "momentum": 0.9, "weight_decay": [0.0, 0.01]},
    {"name": "adamw", "lr": [1e-3, 1e-2], "eps": 1e-4, "weight_decay": 0.1},
], ids=["sgd", "adamw"])
def test_packed_sweep_equals_the_grid_points_trained_one_by_one(tmp_path, optim):
    """Grid points that differ in lr, weight decay and muP's output multiplier train as ONE job per width
    (members carry their own lr, decay, lr scales and epsilons), and give what separate jobs give."""
    recipe = _packed_recipe(optim)
    packed = train_ladder(recipe, tmp_path / "packed")
    alone = train_ladder(recipe, tmp_path / "alone", pack=False)
    n = len(packed.points)
    assert n == (8 if optim["name"] == "sgd" else 4) and packed.points == alone.points
    records = list(packed.index["jobs"].values())
    assert len(records) == n and all(len(r["packed"]) == n for r in records)  # one job trained them all
    assert all("packed" not in r for r in alone.index["jobs"].values())
    losses = set()
    for i in range(n):
        a, b = packed.select(i), alone.select(i)
        assert a.point_key == b.point_key and a.recipe.fingerprint() == b.recipe.fingerprint()
        np.testing.assert_allclose(a.metrics(16)["lr"], b.metrics(16)["lr"])
        np.testing.assert_allclose(a.metrics(16)["test_loss"], b.metrics(16)["test_loss"], rtol=1e-4, atol=1e-6)
        for s in (0, 1):
            sa, sb = a.member_state(16, s), b.member_state(16, s)
            for k in sb:
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6)
        assert a.param_table(16) == b.param_table(16)
        losses.add(round(float(a.metrics(16)["test_loss"][0, -1]), 6))
    assert len(losses) == n  # every grid point trained differently


def test_depth_sweep_is_not_packed_and_each_point_equals_its_own_run(tmp_path):
    recipe = _packed_recipe({"name": "sgd", "lr": 0.1})
    recipe["param"]["output_mult"] = 1.0
    recipe["model"]["depth"] = [1, 2]
    run = train_ladder(recipe, tmp_path / "depth")
    assert run.points == ["model.depth=1", "model.depth=2"]
    assert all("packed" not in r for r in run.index["jobs"].values()) and len(run.index["jobs"]) == 2
    single = dict(recipe, model={**recipe["model"], "depth": 1})
    ref = train_ladder(single, tmp_path / "one")
    for k, v in ref.member_state(16, 1).items():
        torch.testing.assert_close(run.select(0).member_state(16, 1)[k], v)


def _member(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_packed_adam_members_compute_bit_for_bit_what_they_compute_alone(name):
    """Per-member learning rates (through a warmup + cosine schedule), lr scales, epsilons and AdamW decay are
    kept in double precision and rounded once, in torch.optim's operation order, as a member trained alone does
    with python floats: 2 grid points x 2 seeds packed give exactly the weights of the two points trained as
    separate groups.  (Rounding them to float32 separately made runs drift apart: 1e-3 after 300 steps.)"""
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec

    grid = [(3e-3, 0.1, 0.3, 0.7), (1.1e-2, 0.0, 0.1, 3.0)]  # lr, weight decay, lr scale, eps scale
    points = [(OptimSpec(name=name, lr=lr, weight_decay=wd, eps=1e-3, schedule="cosine", warmup_steps=3),
               {"2.weight": scale}, {"2.weight": eps}) for lr, wd, scale, eps in grid]
    if name == "adam":  # Adam's L2 decay is applied like SGD's (see the SGD test above): shared here
        points = [(dataclasses.replace(o, weight_decay=0.1), s, e) for o, s, e in points]

    def group(pts):
        return Ensemble([_member(s) for _ in pts for s in (0, 1)], [s for _, s, _ in pts for _ in (0, 1)],
                        [o for o, _, _ in pts for _ in (0, 1)], "xent", eps_scales=[e for *_, e in pts for _ in (0, 1)])

    packed, alone = group(points), [group([p]) for p in points]
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        x, y = torch.randn(2, 32, 8, generator=g), torch.randint(0, 4, (2, 32), generator=g)
        packed.step(x.repeat(2, 1, 1), y.repeat(2, 1), packed.member_lrs(step, 40))
        for ens in alone:
            ens.step(x, y, ens.member_lrs(step, 40))
    for i, ens in enumerate(alone):
        for k, v in ens.params.items():
            assert torch.equal(packed.params[k][2 * i:2 * i + 2], v), (i, k)
