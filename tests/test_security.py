"""Attacks and careless mistakes on run directories (issue 17), each written as the user would make it.

A planted pickle, a user's folder as --out, a recipe named "../..", a shard copied under another job's
name, bytes flipped in a shard, a changed --seeds-per-job, a study at lr = 1e4, a symlinked PNG, two
drivers on one run, stale temporary files, an unreadable shard in the report.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from widthkit import store
from widthkit.cli import main
from widthkit.errors import RunStoreError
from widthkit.ladder import train_ladder
from widthkit.report import write_report
from widthkit.store import analysable_widths, open_run
from widthkit.studies import study

from test_bad_inputs import BASE, _set

RECIPE = BASE
for _k, _v in {"name": '"sec"', "train.steps": "12", "train.seeds": "3", "train.eval_every": "6",
               "train.checkpoint_every": "4"}.items():
    RECIPE = _set(_k, _v, RECIPE)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    """A finished tiny ladder; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("sec") / "run"
    train_ladder(RECIPE, out)
    return out


def _copy(ladder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(ladder, dst)
    return dst


class _Evil:
    """A pickle that creates a file when unpickled (what an attacker plants)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_planted_checkpoint_pickle_runs_no_code(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    job = "p00-w00016-s0-2"
    (run / "shards" / f"{job}.h5").unlink()  # the job is recomputed, so its checkpoint would be read
    (run / "ckpt").mkdir(exist_ok=True)
    marker = tmp_path / "pwned"
    torch.save({"current": _Evil(marker), "done": [], "record": {}}, run / "ckpt" / f"{job}.pt")
    with pytest.warns(UserWarning, match="unusable.*refused"):
        train_ladder(RECIPE, run, resume=True)
    assert not marker.exists()
    assert (run / "ckpt" / f"{job}.pt.refused").exists()  # kept aside, never deleted
    np.testing.assert_array_equal(open_run(run).logits(16), open_run(ladder).logits(16))


def test_checkpoint_resume_is_exact_and_loads_weights_only(tmp_path, monkeypatch):
    """A job interrupted after a checkpoint resumes from it (weights_only) to the same numbers."""
    from widthkit import trainer
    calls = []
    real = torch.load
    monkeypatch.setattr(trainer.torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real(*a, **k))
    ref = train_ladder(RECIPE.replace("[8, 16]", "[8]"), tmp_path / "ref")
    import widthkit.engine as engine
    step, steps = engine.Ensemble.step, []

    def dying(self, x, y, lr):
        if lr > 1e-3:  # a training step (the strategy probe steps at lr * 1e-6)
            steps.append(1)
            if len(steps) == 7:
                raise KeyboardInterrupt
        return step(self, x, y, lr)
    monkeypatch.setattr(engine.Ensemble, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_ladder(RECIPE.replace("[8, 16]", "[8]"), tmp_path / "cut", strategy="vectorized")
    monkeypatch.setattr(engine.Ensemble, "step", step)
    assert list((tmp_path / "cut" / "ckpt").glob("*.pt"))
    run = train_ladder(RECIPE.replace("[8, 16]", "[8]"), tmp_path / "cut", resume=True, strategy="vectorized")
    assert calls and all(c is True for c in calls)
    assert run.index["jobs"]["p00-w00008-s0-2"]["resumed_from"]["step"] == 4
    np.testing.assert_array_equal(run.logits(8), ref.logits(8))


def test_user_folder_is_never_taken_over(tmp_path, capsys):
    folder = tmp_path / "thesis"
    (folder / "ckpt").mkdir(parents=True)
    (folder / "ckpt" / "chapter1.tex").write_text("precious")
    (folder / "notes.txt").write_text("mine")
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    for cmd in ("train", "study"):
        assert main([cmd, str(recipe), "--out", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a widthkit run" in err[0] and "notes.txt" in err[0]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == ["ckpt", "ckpt/chapter1.tex", "notes.txt"]
    assert (folder / "ckpt" / "chapter1.tex").read_text() == "precious"


def test_recipe_named_dot_dot_writes_nothing_outside(tmp_path, capsys, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    recipe = work / "shared.toml"
    recipe.write_text(RECIPE.replace('name = "sec"', 'name = "../.."'))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "recipe key 'name'" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "shared.toml"]


def test_misplaced_shard_is_not_read_as_another_width(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    shards = run / "shards"
    shutil.copy(shards / "p00-w00008-s0-2.h5", shards / "p00-w00016-s0-2.h5")  # width 8 posing as 16
    with pytest.raises(RunStoreError, match="not the shard of its job.*width 8 \\(expected 16\\)"):
        open_run(run).metrics(16)
    with pytest.warns(UserWarning, match="not the shard of its job"):
        train_ladder(RECIPE, run, resume=True)  # recomputed
    np.testing.assert_array_equal(open_run(run).logits(16), open_run(ladder).logits(16))


def _flip(path: Path, dataset: str) -> None:
    """Flip bytes inside the stored data of ``dataset`` (in place, as a disk or a hand would)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 8)
        b = fh.read(4)
        fh.seek(offset + 8)
        fh.write(bytes(x ^ 0xFF for x in b))


def test_flipped_bytes_are_detected_not_read_as_numbers(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    shard = run / "shards" / "p00-w00016-s0-2.h5"
    _flip(shard, "state/fc0.weight")
    with pytest.raises(RunStoreError, match="corrupt"):
        open_run(run).load_member(16, 0)
    _flip(run / "shards" / "p00-w00008-s0-2.h5", "metrics/test_acc")
    with pytest.raises(RunStoreError, match="corrupt"):
        open_run(run).metrics(8)
    with h5py.File(shard, "r+") as f:  # attributes have no HDF5 checksum: ours catches an edit
        f.attrs["seconds"] = 0.0
    with pytest.raises(RunStoreError, match="corrupt attributes"):
        store.check_identity(h5py.File(shard, "r"), shard, None)
    with pytest.warns(UserWarning, match="corrupt"):
        train_ladder(RECIPE, run, resume=True)
    r, ref = open_run(run), open_run(ladder)
    for w in (8, 16):
        np.testing.assert_array_equal(r.metrics(w)["test_acc"], ref.metrics(w)["test_acc"])
    torch.testing.assert_close(r.member_state(16, 0), ref.member_state(16, 0), rtol=0, atol=0)


def test_changed_seeds_per_job_never_stores_a_member_twice(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("*.h5")}
    with pytest.warns(UserWarning, match="splits its seeds into jobs differently"):
        r = train_ladder(RECIPE, run, resume=True, seeds_per_job=1)
    assert {p.name: p.stat().st_mtime_ns for p in (run / "shards").glob("*.h5")} == stamps  # nothing retrained
    assert len(r.index["jobs"]) == 2 and [len(r.diverged(w)) for w in r.widths] == [3, 3]


def test_study_at_huge_lr_keeps_the_report(tmp_path):
    recipe = RECIPE.replace("lr = 0.05", "lr = 1e4") + "[atlas]\nmax_vectors = 50\ngrid = 2\nsize = 8\nsteps = 2\n" \
        "min_count = 1\n[study]\nskip = [\"transfer\"]\n"
    res = study(recipe, tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "report.html").stat().st_size > 0
    run = open_run(tmp_path / "run")
    for w in run.widths:
        assert run.diverged(w).all() and set(run.diverged_reason(w)) <= {"nan", "loss-bound", "chance"}
    status = {a.name: a.status for a in res.analyses}
    assert status["atlas"] == "failed" and status["ensemble-bias"] == "failed"  # no usable member anywhere
    assert any("diverged" in w for w in res.warnings)


def test_divergence_beyond_nan(tmp_path):
    """A loss that ends 1e3x above its start, or a classifier stuck at chance, is marked diverged with its
    reason; a spike that comes back (a catapult) is not."""
    from widthkit.recipe import parse_recipe
    from widthkit.build import load_recipe_task
    from widthkit.trainer import MemberResults, mark_diverged
    r = parse_recipe(RECIPE)
    task = load_recipe_task(r)
    n = len(task.y_test)
    res = MemberResults(seeds=[0, 1, 2, 3], steps=[0, 6, 12])
    res.test_loss = [np.array([2.3, 2.3, 2.3, 2.3]), np.array([9e3, 5e3, 0.5, 2.31]), np.array([0.4, 3e3, 0.3, 2.31])]
    res.train_loss = [np.full(4, np.nan), np.array([1.0, 1.0, 1e9, 2.3]), np.array([1.0, 1.0, 0.3, 2.3])]
    res.test_acc = [np.full(4, 0.1), np.array([0.5, 0.1, 0.9, 0.1]), np.array([0.9, 0.1, 0.9, 0.11])]
    res.diverged_step = np.array([-1, -1, -1, -1])
    mark_diverged(res, r, task)
    assert res.diverged_reason == ["", "loss-bound", "", "chance"]
    assert res.diverged_step.tolist() == [-1, 6, -1, 12]
    assert 0.11 < 0.1 + 3 * np.sqrt(0.09 / n)  # the stuck member is within the chance band


def test_unreadable_width_is_left_out_of_analyses(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    _flip(run / "shards" / "p00-w00016-s0-2.h5", "metrics/test_loss")
    with pytest.warns(UserWarning, match="skipping width 16: shard .* is corrupt"):
        assert analysable_widths(open_run(run)) == [8]


def test_symlinked_png_is_not_mailed_out(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    assert main(["ensemble-bias", str(run), "-q"]) == 0
    pngs = sorted((run / "ensemble_bias").glob("*.png"))
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"TOP-SECRET" * 10)
    pngs[0].unlink()
    pngs[0].symlink_to(secret)
    pngs[1].write_bytes(b"not a png at all")
    text = write_report(run).read_text()
    import base64
    assert base64.b64encode(secret.read_bytes())[:40].decode() not in text
    assert html.escape(f"figure '{pngs[0]}' lies outside the run directory") in text
    assert html.escape(f"figure '{pngs[1]}' is not a PNG image") in text
    assert text.count("data:image/png;base64,") >= 2  # the training curves and the other figures stay


def test_report_links_are_relative_and_quoted(tmp_path):
    from widthkit.report import _Html
    page = _Html(tmp_path / "report.html", tmp_path)
    assert page.href(tmp_path / "javascript:alert(1)") == "javascript%3Aalert%281%29"
    assert page.href(tmp_path / 'a"b<c>.html') == "a%22b%3Cc%3E.html"


def test_unreadable_shard_still_reports_every_other_width(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    shard = run / "shards" / "p00-w00016-s0-2.h5"
    shard.write_bytes(shard.read_bytes()[:3000])
    text = write_report(run).read_text()
    results = text[text.index('id="results"'):text.index('id="warnings"')]
    assert "<td>8</td>" in results and "<td>16</td>" not in results
    assert "width 16 is left out of the results" in text[text.index('id="warnings"'):]


def test_second_driver_is_refused_and_a_stale_lock_taken_over(ladder, tmp_path, capsys):
    run = _copy(ladder, tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".widthkit.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        assert main(["train", str(recipe), "--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"in use by process {other.pid}" in err
    finally:
        other.kill()
        other.wait()
    assert main(["train", str(recipe), "--out", str(run), "--resume", "-q"]) == 0  # its process is gone: stale
    assert not (run / ".widthkit.lock").exists()


def test_stale_temporary_files_are_cleaned_on_the_next_write(ladder, tmp_path):
    run = _copy(ladder, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace(".", "_")
    stale = run / "shards" / f".p00-w00016-s0-2.h5.{host}-{dead.pid}.k1ll3d.h5"
    stale.write_bytes(b"half a shard")
    live = run / "shards" / f".p00-w00008-s0-2.h5.{host}-{os.getpid()}.writing.h5"  # a live writer's: kept
    live.write_bytes(b"in progress")
    (run / "shards" / "p00-w00016-s0-2.h5").unlink()
    train_ladder(RECIPE, run, resume=True)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("content,needle", [("pickle", "asks to run code"), ("text", "is not a PyTorch checkpoint"),
                                            ("tensor", "holds no state dict"), ("empty", "holds no state dict")])
def test_atlas_timm_checkpoint_errors_are_one_line(tmp_path, capsys, content, needle):
    path, marker = tmp_path / "w.pt", tmp_path / "pwned"
    if content == "pickle":
        torch.save({"model": _Evil(marker)}, path)
    elif content == "text":
        path.write_text("these are not weights")
    else:
        torch.save(torch.zeros(3) if content == "tensor" else {}, path)
    assert main(["atlas-timm", "resnet18", "--checkpoint", str(path), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    assert not marker.exists()


def test_a_width_against_itself_is_a_warning_not_a_result(ladder, tmp_path, capsys):
    """When the widest width fully diverged, ensemble-bias neither takes it as the widest nor compares the
    remaining width with itself."""
    run = _copy(ladder, tmp_path)
    with h5py.File(run / "shards" / "p00-w00016-s0-2.h5", "r+") as f:  # as a lr = 1e4 width ends up
        f["members/diverged"][...] = True
    assert main(["ensemble-bias", str(run), "--out", str(tmp_path / "eb"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["skipped_widths"] == [16] and [w["width"] for w in res["per_width"]] == [8]
    assert res["over_training"] is None or res["over_training"]["widths"] == [8]
    assert main(["consistency", str(run), "--out", str(tmp_path / "cons")]) == 2   # nothing against itself
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only [8] has members that did not diverge" in err[0]
    assert not (tmp_path / "cons" / "consistency.json").exists()
