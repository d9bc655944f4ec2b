"""Coordinate check: muP keeps activation sizes flat across width, SP lets the readout blow up."""
from widthkit.analysis.coord_check import coord_check, max_ratio
from widthkit.recipe import load_recipe

OVR = ["optim.lr=0.1", "optim.schedule=\"constant\"", "optim.warmup_steps=0", "model.widths=[16,64,256,1024]"]


def test_mup_flat_sp_grows(tmp_path):
    mup = coord_check(load_recipe("recipes/quickstart.toml", OVR + ["param.kind=mup"]), steps=5)
    sp = coord_check(load_recipe("recipes/quickstart.toml", OVR + ["param.kind=sp"]), steps=5)
    assert max_ratio(mup) <= 2.0, mup.ratio
    assert sp.ratio["head"] > 3.0, sp.ratio   # widest/narrowest = 64x wider
    assert sp.ratio["head"] > 2.5 * mup.ratio["head"]
    mup.save(tmp_path / "cc.json")
