"""Live tracking and export, read back with each tool's own reader.

One tiny ladder (2 widths x 2 seeds, 3 evaluations) trains once with all three loggers; TensorBoard's
EventAccumulator, MLflow's client and W&B's own record protobufs (the offline ``.wandb`` log) must hold
every member's curve, the mean and the ensemble, equal to the run store and to an independent
recomputation.  ``widthkit export`` of the finished store must give the same records, and a Ray worker
training the job in another grouping logs the same numbers.
"""
from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from widthkit.cli import main
from widthkit.ladder import train_ladder
from widthkit.store import open_run
from widthkit.tracking import METRICS, export_run

tb_event = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
mlflow = pytest.importorskip("mlflow")
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

RECIPE = """
name = "tiny-track"
[model]
family = "mlp"
widths = [8, 16]
depth = 2
[param]
kind = "mup"
[data]
task = "digits"
batch_size = 32
[train]
steps = 20
seeds = 2
eval_every = 10
strategy = "vectorized"
loggers = {loggers}
"""
ALL = '["tensorboard", "wandb", "mlflow"]'
JOBS = ["p00-w00008-s0-1", "p00-w00016-s0-1"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    d = tmp_path_factory.mktemp("track")
    (d / "r.toml").write_text(RECIPE.format(loggers=ALL))
    run = train_ladder(d / "r.toml", d / "run")
    out = d / "exported"
    for to in ("tensorboard", "wandb", "mlflow"):
        assert main(["-q", "export", str(run.path), str(out), "--to", to]) == 0
    yield run, out
    mp.undo()


# ------------------------------------------------------------------------------------------- readers
def read_tensorboard(root) -> dict:
    out = {}
    for job in JOBS:
        acc = tb_event.EventAccumulator(str(root / "tensorboard" / job))
        acc.Reload()
        out[job] = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    return out


def read_mlflow(root) -> dict:
    client = mlflow.MlflowClient(tracking_uri=(root / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("tiny-track")
    out = {}
    for r in client.search_runs([exp.experiment_id]):
        assert r.data.tags["widthkit.param"] == "mup" and r.data.params["train.steps"] == "20"
        assert r.data.tags["widthkit.width"] == r.info.run_name.split("-w")[1][:5].lstrip("0")
        out[r.info.run_name] = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                                for k in r.data.metrics}
    return out


def wandb_records(path):
    """The protobuf records of a W&B transaction log (LevelDB log format behind a 7-byte ':W&B' header)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def read_wandb(root) -> dict:
    import json
    out = {}
    for f in sorted((root / "wandb").glob("offline-run-*/run-*.wandb")):
        name, rows = None, {}
        for rec in wandb_records(f):
            if rec.HasField("run"):
                name = rec.run.display_name
                config = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
                assert config["train"]["steps"] == 20 and "mup" in rec.run.tags
            if rec.HasField("history"):
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
                step = int(items.pop("_step"))
                for k, v in items.items():
                    if not k.startswith("_"):
                        rows.setdefault(k, []).append((step, v))
        out[name] = rows
    return out


READERS = {"tensorboard": read_tensorboard, "mlflow": read_mlflow, "wandb": read_wandb}


def expected(run) -> dict:
    """Every curve recomputed from the store: members, mean over members, ensemble of averaged logits."""
    out = {}
    y = torch.as_tensor(np.array(run.targets()))
    for job, w in zip(JOBS, run.widths):
        m, logits = run.metrics(w), run.all_logits(w)
        rows = {}
        for name in METRICS:
            for e, s in enumerate(run.seeds):
                rows[f"{name}/seed{s}"] = [(int(t), float(v)) for t, v in zip(m["step"], m[name][e]) if np.isfinite(v)]
            rows[f"{name}/mean"] = [(int(t), float(v)) for t, v in zip(m["step"], m[name].mean(0)) if np.isfinite(v)]
        mean = torch.as_tensor(np.array(logits)).mean(0)  # [S, N, K]
        rows["test_loss/ensemble"] = [(int(t), float(F.cross_entropy(mean[i], y))) for i, t in enumerate(m["step"])]
        rows["test_acc/ensemble"] = [(int(t), float((mean[i].argmax(-1) == y).float().mean()))
                                     for i, t in enumerate(m["step"])]
        rows["lr"] = [(int(t), float(v)) for t, v in zip(m["step"], m["lr"])]
        out[job] = rows
    return out


def assert_same(got: dict, want: dict, rtol=1e-5):
    assert sorted(got) == sorted(want)
    for job in want:
        assert sorted(got[job]) == sorted(want[job]), job
        for tag, curve in want[job].items():
            steps, vals = zip(*got[job][tag])
            assert list(steps) == [s for s, _ in curve], (job, tag)
            np.testing.assert_allclose(vals, [v for _, v in curve], rtol=rtol, atol=1e-6, err_msg=f"{job} {tag}")


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("tool", list(READERS))
def test_live_logs_read_back_with_the_tools_reader(tracked, tool):
    run, _ = tracked
    want = expected(run)
    assert {"test_loss/seed0", "test_acc/seed1", "test_loss/mean", "test_acc/ensemble"} <= set(want[JOBS[0]])
    assert_same(READERS[tool](run.path), want)


@pytest.mark.parametrize("tool", list(READERS))
def test_export_writes_the_same_records(tracked, tool):
    run, exported = tracked
    assert_same(READERS[tool](exported), READERS[tool](run.path), rtol=1e-7)


def test_ray_worker_logs_the_same_curves_in_another_grouping(tracked, tmp_path):
    ray = pytest.importorskip("ray")
    run, _ = tracked
    (tmp_path / "r.toml").write_text(RECIPE.format(loggers='["tensorboard"]').replace("vectorized", "loop"))
    owned = not ray.is_initialized()
    if owned:
        ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        from widthkit.executors import RayExecutor
        train_ladder(tmp_path / "r.toml", tmp_path / "run", executor=RayExecutor())
    finally:
        if owned:
            ray.shutdown()
    # one member at a time: the mean and ensemble are logged when the job's last member reaches the step
    assert_same(read_tensorboard(tmp_path / "run"), read_tensorboard(run.path), rtol=1e-4)


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    (tmp_path / "r.toml").write_text(RECIPE.format(loggers='["wandb"]'))
    assert main(["train", str(tmp_path / "r.toml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'widthkit[wandb]'" in err
    assert main(["export", str(tmp_path / "run"), "--to", "wandb"]) == 2
    assert main(["train", str(tmp_path / "r.toml"), "--set", "train.loggers=['tensorbord']",
                 "--out", str(tmp_path / "r2")]) == 2
    assert "tensorboard" in capsys.readouterr().err
