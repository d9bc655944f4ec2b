"""Coordinate check: muP keeps activation sizes flat across width, SP lets the readout blow up."""
from widthkit.analyses import Subject, get_analysis
from widthkit.recipe import load_recipe

OVR = ["optim.lr=0.1", "optim.schedule=\"constant\"", "optim.warmup_steps=0", "model.widths=[16,64,256,1024]"]


def test_mup_flat_sp_grows(tmp_path):
    a, r = get_analysis("coord-check"), load_recipe("recipes/quickstart.toml", OVR)
    res, files = a.run(Subject(r, None, tmp_path), a.options(r, params=["mup", "sp"], steps=5))
    mup, sp = res.per_param
    assert mup.max_ratio() <= 2.0, mup.ratio
    assert sp.ratio["head"] > 3.0, sp.ratio   # widest/narrowest = 64x wider
    assert sp.ratio["head"] > 2.5 * mup.ratio["head"]
    assert type(res).load(files[0]).to_dict() == res.to_dict()
