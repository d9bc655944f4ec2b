"""The recipe-driven dynamics analyses on the analysis contract: options -> run -> save -> load -> blocks."""
import dataclasses
import inspect
from pathlib import Path

import pytest

from widthkit.analyses import Subject, get_analysis
from widthkit.analyses.base import option_fields
from widthkit.dynamics import ntk_scaling, projected_sgd, track_subspace
from widthkit.errors import WidthkitError
from widthkit.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# name -> (recipe, tiny options): seconds on a CPU
TINY = {
    "lr-phase": ("catapult-mlp.toml", dict(widths=[16], lrs=[0.5, 20.0], steps=5, n_train=32, lambda_steps=0,
                                           seeds=[0], tol=0.3)),
    "subspace": ("subspace-digits.toml", dict(steps=4, every=2, hessian_batch=64, projected=True, refresh=2)),
    "ntk-scaling": ("ntk-scaling.toml", dict(widths=[16, 32], params=["ntk", "mup"], steps=4, seeds=2, n_train=16,
                                             n_probe=4)),
    "coord-check": ("quickstart.toml", dict(widths=[16, 64], steps=2)),
}


@pytest.mark.parametrize("name", list(TINY))
def test_run_load_blocks(name, tmp_path):
    a = get_analysis(name)
    assert a.needs == "recipe" and not a.in_study
    path, kw = TINY[name]
    r = load_recipe(RECIPES / path)
    res, files = a.run(Subject(r, None, tmp_path), a.options(r, **kw))
    assert files[0] == tmp_path / f"{a.table}.json"
    assert type(res).load(files[0]).to_dict() == res.to_dict()
    (b,) = a.blocks(type(res).load(files[0]), tmp_path)
    assert b.lines and all(line for line in b.lines) and b.tables
    assert {f.path for f in b.figures} == set(files[1:]) and all(f.path.exists() and f.reading for f in b.figures)
    for t in b.tables:
        assert all(len(row) == len(t.columns) and all(isinstance(c, str) for c in row) for row in t.rows)


def test_readings_follow_the_numbers(tmp_path):
    a = get_analysis("coord-check")
    r = load_recipe(RECIPES / "quickstart.toml", ["optim.lr=0.1", "optim.schedule=\"constant\"",
                                                  "optim.warmup_steps=0"])
    res = a.compute(Subject(r), a.options(r, widths=[16, 256], steps=3))
    mup, sp = res.per_param
    (b,) = a.blocks(res, tmp_path)
    largest = max(abs(e) for c in (mup.size, mup.update) for v in c.exponent.values() for e in v if e == e)
    assert not mup.beyond(0.2) and b.lines[0] == ("muP (readout at zero): every layer's size and update stays within "
                                                  f"width^±0.2 at t = 1..3 (largest |exponent| {largest:.2g}).")
    (_, _, t, e, err), = [x for x in sp.beyond(0.2) if x[:2] == ("size", "head")]
    assert e > 0.2 and f"head size grows like width^{e:.2g} ± {err:.2g} (t = {t})" in b.lines[1]
    assert [row[0] for row in b.tables[0].rows] == mup.layers


def test_subspace_without_projected_round_trips(tmp_path):
    a = get_analysis("subspace")
    r = load_recipe(RECIPES / "subspace-digits.toml")
    res, files = a.run(Subject(r, None, tmp_path), a.options(r, steps=2, every=1, hessian_batch=32, k=3))
    assert res.projected is None and type(res).load(files[0]).projected is None
    assert res.track.k == 3 and res.track.steps == [0, 1, 2] and res.track.hessian_batch == 32
    assert [p.name for p in files[1:]] == ["subspace.png"]


def test_options_come_from_the_recipe_table_then_the_keywords():
    a = get_analysis("lr-phase")
    r = load_recipe(RECIPES / "catapult-mlp.toml")
    o = a.options(r, steps=7)
    assert o.lrs == [0.5, 0.9, 1.2, 1.6, 2.0, 3.0, 4.0, 6.0, 8.0] and o.lambda_every == 10 and o.steps == 7
    assert a.options().lrs == [0.5, 0.9, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0]
    with pytest.raises(WidthkitError, match="did you mean 'lambda_every'"):
        a.options(load_recipe(RECIPES / "catapult-mlp.toml", ["lr_phase.lambda_evry=3"]))
    with pytest.raises(WidthkitError, match="did you mean 'mup'"):
        get_analysis("coord-check").compute(Subject(r), get_analysis("coord-check").options(r, params=["mupp"]))


def test_core_keywords_are_the_option_names():
    """One name everywhere: recipe key = CLI flag = keyword of the computational core."""
    def names(fn):
        return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}

    ntk_opts = {f[0] for f in option_fields(get_analysis("ntk-scaling").Options)}
    assert names(ntk_scaling) == ntk_opts
    sub_opts = {f.name for f in dataclasses.fields(get_analysis("subspace").Options)}
    assert names(track_subspace) | names(projected_sgd) | {"projected"} == sub_opts
