"""Foundation: recipes, the ensemble engine, the run store and crash-safe resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from widthkit import store
from widthkit.build import build_member, load_recipe_task
from widthkit.cli import main
from widthkit.engine import Ensemble
from widthkit.ladder import train_ladder
from widthkit.recipe import parse_recipe
from widthkit.store import open_run

TINY = """
name = "tiny"
[model]
family = "{family}"
widths = [8, 16]
{extra}
[param]
kind = "{kind}"
[data]
task = "digits"
batch_size = 32
[train]
steps = {steps}
seeds = 3
eval_every = 20
checkpoint_every = 20
[optim]
name = "{opt}"
lr = {lr}
momentum = 0.9
"""


def tiny(family="mlp", kind="mup", opt="sgd", steps=40, lr=0.05, extra="depth = 2"):
    return TINY.format(family=family, kind=kind, opt=opt, steps=steps, lr=lr, extra=extra)


@pytest.mark.parametrize("override,needle", [
    ("optim.lrr=0.1", "unknown recipe key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ("model.family=mpl", "unknown model family 'mpl' (did you mean 'mlp'?)"),
    ("model.widths=[-16,32]", "'model.widths' has -16"),
    ("optim.lr=fast", "'optim.lr' must be a number"),
    ("data.task=cifar10", "cifar10 not found"),
])
def test_bad_recipes_are_one_line(tmp_path, capsys, override, needle):
    path = tmp_path / "r.toml"
    path.write_text(tiny())
    code = main(["train", str(path), "--out", str(tmp_path / "run"), "--set", override,
                 "--set", f"data.root={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("family,extra", [("mlp", "depth = 2"), ("cnn", "depth = 5"),
                                          ("cnn", "depth = 5\nbatchnorm = true\nbias = false")])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["sp", "mup"])
def test_vectorized_equals_one_by_one_torch_optim(family, extra, opt, kind):
    """Members trained stacked equal members trained alone with torch.optim (per-param lr scales),
    BatchNorm running statistics included (each member keeps its own).  The BN case has no conv biases:
    BN cancels their gradient to rounding noise, which Adam would amplify into +-lr steps."""
    r = parse_recipe(tiny(family=family, kind=kind, opt=opt, lr=0.01 if opt == "adam" else 0.05, extra=extra))
    task = load_recipe_task(r)
    seeds, width, steps = [0, 1, 2], 16, 5
    built = [build_member(r, width, s, task) for s in seeds]
    scales = built[0][1].lr_scales()
    ens = Ensemble([m for m, _ in [build_member(r, width, s, task) for s in seeds]], scales, r.optim, "xent")
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(task.x_train), (len(seeds), 16), generator=g) for _ in range(steps)]
    for idx in batches:
        ens.step(task.x_train[idx], task.y_train[idx], r.optim.lr)
    for e, (model, _) in enumerate(built):
        groups = [{"params": [p], "lr": r.optim.lr * scales[n]} for n, p in model.named_parameters()]
        o = torch.optim.SGD(groups, momentum=0.9) if opt == "sgd" else torch.optim.Adam(groups)
        for idx in batches:
            o.zero_grad()
            torch.nn.functional.cross_entropy(model(task.x_train[idx[e]]), task.y_train[idx[e]]).backward()
            o.step()
        # Adam divides by sqrt(v): a near-zero gradient turns float rounding into a visible step
        atol = 1e-4 if opt == "adam" else 1e-5
        for n, p in model.named_parameters():
            torch.testing.assert_close(ens.params[n][e], p.detach(), rtol=1e-4, atol=atol)
        for n, b in model.named_buffers():
            torch.testing.assert_close(ens.buffers[n][e], b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ens.member(e)(task.x_test), model.eval()(task.x_test), rtol=1e-4, atol=1e-5)


def test_diverged_member_is_masked_and_others_untouched():
    r = parse_recipe(tiny())
    task = load_recipe_task(r)
    members = [build_member(r, 16, s, task)[0] for s in (0, 1)]
    ref = Ensemble([build_member(r, 16, 1, task)[0]], {}, r.optim, "xent")
    ens = Ensemble(members, {}, r.optim, "xent")
    with torch.no_grad():
        ens.params["fc0.weight"][0].fill_(float("nan"))
    x, y = task.x_train[:16], task.y_train[:16]
    for _ in range(3):
        ens.step(torch.stack([x, x]), torch.stack([y, y]), 0.05)
        ref.step(x[None], y[None], 0.05)
    assert ens.alive.tolist() == [False, True] and ens.diverged_step.tolist() == [0, -1]
    torch.testing.assert_close(ens.params["head.weight"][1], ref.params["head.weight"][0])


def test_open_run_round_trip_and_strategy_independence(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(tiny())
    run = train_ladder(path, tmp_path / "a", strategy="vectorized")
    loop = train_ladder(path, tmp_path / "b", strategy="loop")
    assert run.widths == [8, 16] and run.seeds == [0, 1, 2] and run.unfinished == []
    x = run.task().x_test
    for w in run.widths:
        stored = run.logits(w)
        assert stored.shape == (3, len(x), 10)
        for i, s in enumerate(run.seeds):
            with torch.no_grad():
                out = run.load_member(w, s)(x).numpy()
            np.testing.assert_array_equal(out, stored[i])
        np.testing.assert_allclose(loop.logits(w), stored, rtol=1e-4, atol=1e-4)
        assert run.metrics(w)["test_acc"].shape == (3, 3)


def test_foreign_and_corrupt_files_are_one_line(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "index.json").write_text("{\"hello\": 1}")
    assert main(["ensemble-bias", str(tmp_path / "x")]) == 2
    assert "not a widthkit run index" in capsys.readouterr().err
    path = tmp_path / "r.toml"
    path.write_text(tiny(steps=20))
    run = train_ladder(path, tmp_path / "run")
    shard = next((tmp_path / "run" / "shards").glob("*w00016*.h5"))
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(Exception, match="corrupt"):
        run.logits(16)
    train_ladder(path, tmp_path / "run", resume=True)  # recomputes the truncated shard
    assert open_run(tmp_path / "run").logits(16).shape[0] == 3


def test_sigkill_then_resume_keeps_finished_widths(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(tiny(steps=400).replace("widths = [8, 16]", "widths = [8, 16, 32]"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "widthkit.cli", "-q", "train", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "shards" / "p00-w00008-s0-2.h5"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the first width never finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    mtime = first.stat().st_mtime_ns
    assert subprocess.run(cmd + ["--resume"], capture_output=True).returncode == 0
    run = open_run(out)
    assert run.widths == [8, 16, 32] and first.stat().st_mtime_ns == mtime
    assert not (out / "ckpt").exists()


def test_point_view_reads_each_shard_once_and_notices_a_replaced_shard(tmp_path, monkeypatch):
    """A view validates a width's shards once and caches its arrays (read-only); a shard replaced on
    disk afterwards (a --resume recomputing it) is read again, never served stale."""
    path = tmp_path / "r.toml"
    path.write_text(tiny(steps=20))
    run = train_ladder(path, tmp_path / "run", seeds_per_job=2)  # two shards per width
    view = run.select(0)
    assert isinstance(run, store.Run) and isinstance(view, store.RunPoint) and run.select("") is view
    opened = []
    real = store._open_shard
    monkeypatch.setattr(store, "_open_shard", lambda p, fp=None: opened.append(p) or real(p, fp))
    first = view.logits(16)
    for _ in range(3):
        view.metrics(16), view.logits(16, step=0), view.all_logits(16), view.diverged(16), view.strategy(16)
    assert len(opened) == 2 and first.shape == (3, len(view.task().x_test), 10)
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0, 0] = 1.0
    shard = run.path / run.index["jobs"]["p00-w00016-s0-1"]["shard"]
    tmp = shard.with_suffix(".new")
    tmp.write_bytes(shard.read_bytes())
    with h5py.File(tmp, "r+") as f:
        f["logits/values"][...] = 0.0
    os.replace(tmp, shard)  # as a writer does: a new file renamed over the old one
    np.testing.assert_array_equal(view.logits(16)[:2], 0.0)
    np.testing.assert_array_equal(view.logits(16)[2], first[2])
    assert len(opened) == 4
    assert run.metrics(16)["test_loss"].shape == (3, 2) and run.widths == [8, 16]  # one point: the run answers
