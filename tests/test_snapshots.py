"""The time axis: step grids, weight snapshots in the store, reloading a member at a step, resume after a kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from widthkit import grid, snapshots
from widthkit.errors import WidthkitError
from widthkit.ladder import train_ladder
from widthkit.recipe import parse_recipe
from widthkit.store import open_run

from test_foundation import tiny as foundation_tiny

def tiny(steps=40, snaps="log:5", dtype="float32"):
    """test_foundation's tiny ladder with a log evaluation grid and snapshots."""
    return foundation_tiny(steps=steps).replace(
        "eval_every = 20\ncheckpoint_every = 20",
        f'eval_every = "log:4"\ncheckpoint_every = 0\nsnapshots = "{snaps}"\nsnapshot_dtype = "{dtype}"')


def test_log_grid_has_k_distinct_log_spaced_steps():
    assert grid.log_grid(1000, 8) == [0, 1, 3, 10, 32, 101, 318, 1000]  # ratios ~ 1000^(1/6) = 3.16
    for total in range(1, 120):
        for k in range(2, 12):
            g = grid.log_grid(total, k)
            assert len(g) == min(k, total + 1) and g[0] == 0 and g[-1] == total and g == sorted(set(g))
    assert grid.steps("every:15", 40, "k") == [0, 15, 30, 40] == grid.steps(15, 40, "k")
    assert grid.steps([30, 0, 30], 40, "k") == [0, 30] and grid.steps("", 40, "k") == []
    with pytest.raises(WidthkitError, match=r"lists steps \[50\] past the last step 40"):
        grid.steps([0, 50], 40, "train.snapshots")


@pytest.mark.parametrize("key,value,needle", [
    ("snapshots", '"lg:8"', "write an integer N"), ("snapshots", '"log:1"', "K >= 2"),
    ("eval_every", '"every:0"', "N must be >= 1"), ("snapshots", "[-1, 5]", "must be a list of integers >= 0")])
def test_bad_grids_are_one_line(key, value, needle):
    with pytest.raises(WidthkitError, match=needle):
        parse_recipe(f"[train]\n{key} = {value}")


def test_a_list_of_snapshot_steps_is_no_sweep_and_old_fingerprints_stay():
    base = "[model]\nwidths = [64, 256]\n[data]\ntask = 'digits'\n"
    r = parse_recipe(base + "[train]\nsnapshots = [0, 10]")
    assert r.train.snapshots == [0, 10]
    assert parse_recipe(base).fingerprint() == "65009f298ff31ff8"  # the fingerprint before snapshots existed
    assert r.fingerprint() != parse_recipe(base).fingerprint()
    for later in ("[param]\ncenter = true", "[param]\ngamma0 = 2.0", "[param]\nreadout = 'mf'"):  # added later too
        assert parse_recipe(base + later).fingerprint() != parse_recipe(base).fingerprint()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny ladder with float32 and with float16 snapshots (same training)."""
    d = tmp_path_factory.mktemp("snap")
    return {dt: train_ladder(tiny(dtype=dt), d / dt) for dt in ("float32", "float16")}


def _outputs(model, x):
    with torch.no_grad():
        return model(x).numpy()


def test_a_snapshot_reproduces_the_stored_test_logits_of_its_step_exactly(runs):
    run = runs["float32"]
    x = run.task().x_test
    assert run.snapshot_steps(8) == [0, 1, 3, 11, 40]
    assert set(run.snapshot_steps(8)) <= set(run.logit_steps(8).tolist())  # every snapshot was evaluated
    for w in run.widths:
        for step in run.snapshot_steps(w):
            for i, seed in enumerate(run.seeds):
                np.testing.assert_array_equal(_outputs(run.load_member(w, seed, step=step), x),
                                              run.logits(w, step)[i])
    assert not np.array_equal(run.logits(16, 0), run.logits(16, 11))  # the steps do differ
    with pytest.raises(WidthkitError, match=r"no snapshot of width 8 at step 6; stored steps: \[0, 1, 3, 11, 40\]"):
        run.load_member(8, 0, step=6)


def _snapshot_bytes(run) -> int:
    total = 0
    for p in (run.path / "shards").glob("*.h5"):
        with h5py.File(p, "r") as f:
            total += sum(f["snapshots"][k].id.get_storage_size() for k in f["snapshots"] if k != "step")
    return total


def test_float16_snapshots_take_half_the_bytes_and_stay_close(runs):
    r32, r16 = runs["float32"], runs["float16"]
    assert abs(_snapshot_bytes(r16) / _snapshot_bytes(r32) - 0.5) < 0.05
    x = r16.task().x_test
    np.testing.assert_array_equal(r16.logits(16, 11), r32.logits(16, 11))  # storage does not change training
    s32, s16 = r32.member_state(16, 1, step=11), r16.member_state(16, 1, step=11)
    for k in s32:
        assert s16[k].dtype == torch.float32
        np.testing.assert_array_equal(s16[k].numpy(), s32[k].half().float().numpy())
    out = _outputs(r16.load_member(16, 1, step=11), x)
    ref = r32.logits(16, 11)[1]
    assert 0 < np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()
    np.testing.assert_array_equal(_outputs(r16.load_member(16, 1, step=40), x), r32.logits(16, 40)[1])  # end: float32


def test_bfloat16_storage_round_trips_bit_patterns(tmp_path):
    t = {"w": torch.randn(2, 3, 4), "n": torch.arange(2)}
    stored = snapshots.take(t, "bfloat16")
    assert stored["w"].dtype == torch.bfloat16 and stored["n"].dtype == torch.int64
    with h5py.File(tmp_path / "s.h5", "w") as f:
        snapshots.write(f, [5], [stored], "bfloat16")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        back = snapshots.read(f, 1, 5)
    assert torch.equal(back["w"], t["w"][1].bfloat16().float()) and torch.equal(back["n"], t["n"][1])


def test_resume_after_sigkill_keeps_every_snapshot_taken_before_the_kill(tmp_path):
    """Each snapshot is checkpointed when taken: a job killed later resumes after it (the snapshot is kept, not
    taken again), and the finished shard holds the same snapshots as an uninterrupted run."""
    from widthkit.ladder import checkpoint_progress
    recipe = tiny(steps=600, snaps="every:60").replace("widths = [8, 16]", "widths = [8]")
    path = tmp_path / "r.toml"
    path.write_text(recipe)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "widthkit.cli", "-q", "train", str(path), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "ckpt" / "p00-w00008-s0-2.pt"
    deadline, killed_at = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        progress = checkpoint_progress(ckpt) if ckpt.exists() else None
        if progress is not None and progress["step"] >= 180:  # snapshots 0, 60, 120 and 180 are in it
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = progress["step"]
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "no checkpoint past step 180 before the run ended"
    assert subprocess.run(cmd + ["--resume"], capture_output=True).returncode == 0
    run = open_run(out)
    assert run.index["jobs"]["p00-w00008-s0-2"]["resumed_from"]["step"] >= killed_at  # snapshots not retaken
    assert run.snapshot_steps(8) == list(range(0, 600, 60)) + [600]
    ref = train_ladder(recipe, tmp_path / "ref")
    for step in run.snapshot_steps(8):
        for seed in run.seeds:
            a, b = run.member_state(8, seed, step=step), ref.member_state(8, seed, step=step)
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_atlas_reads_the_members_at_its_step(runs, tmp_path, monkeypatch):
    """Weight-reading analyses take ``step``: the atlas loads each member's snapshot of that step."""
    from widthkit.analyses import Subject, get_analysis
    from widthkit.store import RunPoint
    view = runs["float32"].select(0)
    step = view.snapshot_steps(view.widths[0])[1]
    seen, load = [], RunPoint.load_member
    monkeypatch.setattr(RunPoint, "load_member",
                        lambda self, w, s, step=None: seen.append((w, step)) or load(self, w, s, step=step))
    a = get_analysis("atlas")
    a.run(Subject(view.recipe, view, tmp_path / "atlas"), a.options(view.recipe, **{**a.smoke, "step": step,
                                                                                       "probes": False}))
    assert seen == [(view.widths[0], step), (view.widths[-1], step)]
    with pytest.raises(WidthkitError, match=r"no snapshot of width \d+ at step 7; stored steps"):
        a.run(Subject(view.recipe, view, tmp_path / "bad"), a.options(view.recipe, **{**a.smoke, "step": 7}))
