"""Sweeps end to end: a two-point recipe trains both points, each is selectable, and the study and the
report keep one folder and one results section per point."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

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
