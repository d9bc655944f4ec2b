"""Executors and crash safety: the Ray executor equals the local one, survives killed workers
and a killed driver, cancels on Ctrl-C, and reports failing jobs in one line.

One in-process Ray instance (2 CPUs) serves the whole module; the subprocess driver of the
driver-kill test joins it by address.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

import widthkit.ladder as ladder
from widthkit import create_model
from widthkit.cli import main
from widthkit.errors import WidthkitError
from widthkit.executors import LocalExecutor, RayExecutor, get_executor, gpu_share
from widthkit.ladder import train_ladder
from widthkit.store import open_run

RECIPE = """
name = "ladder"
[model]
family = "mlp"
widths = {widths}
depth = {depth}
[param]
kind = "mup"
[data]
task = "digits"
batch_size = 32
[train]
steps = {steps}
seeds = 2
eval_every = {eval_every}
checkpoint_every = 25
strategy = "vectorized"
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
"""
SMALL = dict(widths="[8, 16, 32]", depth=2, steps=40, eval_every=20)   # three quick jobs
LONG = dict(widths="[8, 512]", depth=3, steps=200, eval_every=100)     # one quick job, one of a few seconds
LONG_JOB = "p00-w00512-s0-1"


def write_recipe(path: Path, spec: dict) -> Path:
    path.write_text(RECIPE.format(**spec))
    return path


def assert_same_run(a, b, widths):
    """Two runs hold the same members: metrics and test outputs at every eval step within 1e-6."""
    assert a.widths == b.widths == widths
    for w in widths:
        np.testing.assert_allclose(a.all_logits(w), b.all_logits(w), rtol=0, atol=1e-6)
        ma, mb = a.metrics(w), b.metrics(w)
        for k in ("train_loss", "test_loss", "test_acc"):
            np.testing.assert_allclose(ma[k], mb[k], rtol=0, atol=1e-6)
        assert not a.diverged(w).any()


def job_pids(job_id: str) -> list[int]:
    """Pids of Ray workers running ``job_id`` (Ray titles a task's process ``ray::<task name>``)."""
    title = f"ray::widthkit:{job_id}".encode()
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmd.read_bytes().split(b"\0")[0] == title:
                pids.append(int(cmd.parent.name))
        except OSError:
            pass
    return pids


def wait_for(cond, what: str, timeout: float = 90.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance in this process with 2 CPUs and one (logical) GPU, so jobs take the GPU-share
    path; workers see no real GPU and train on the CPU.  Yields its address for other drivers."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(autouse=True)
def one_thread():
    """Local runs use one torch thread, like the 1-CPU Ray jobs (and like a busy 2-core CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted local runs of both recipes: the answers every other run must reproduce."""
    d = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    small = write_recipe(d / "small.toml", SMALL)
    long = write_recipe(d / "long.toml", LONG)
    runs = {"small": (small, train_ladder(small, d / "small")), "long": (long, train_ladder(long, d / "long"))}
    torch.set_num_threads(before)
    return runs


# ------------------------------------------------------------------ equality
def test_ray_ladder_equals_local(cluster, reference, tmp_path):
    recipe, local = reference["small"]
    run = train_ladder(recipe, tmp_path / "ray", executor=RayExecutor())
    assert_same_run(run, local, [8, 16, 32])
    for job in run.index["jobs"].values():  # tiny jobs share the GPU: 1/8 each, on GPU 0
        assert job["status"] == "done" and job["ray"]["gpus"] == 0.125 and job["ray"]["gpu_ids"] == ["0"]
    assert not (tmp_path / "ray" / "ckpt").exists()


def test_truncated_shard_is_named_and_recomputed_on_ray(cluster, reference, tmp_path):
    """Extends test_foundation's truncation test: the error names the file, only that shard is
    recomputed (by Ray workers), and the recomputed members equal the originals."""
    recipe, local = reference["small"]
    out = tmp_path / "run"
    shutil.copytree(local.path, out)
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5")}
    bad = out / "shards" / "p00-w00016-s0-1.h5"
    bad.write_bytes(bad.read_bytes()[:3000])
    with pytest.raises(WidthkitError, match=re.escape(f"shard '{bad}' is ") + "(corrupt|incomplete)"):
        open_run(out).logits(16)
    run = train_ladder(recipe, out, resume=True, executor=RayExecutor())
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.h5") if p != bad} == \
        {k: v for k, v in shards.items() if k != bad.name}
    assert_same_run(run, local, [8, 16, 32])


# -------------------------------------------------------------------- faults
def test_killed_worker_is_retried_from_its_checkpoint(cluster, reference, tmp_path):
    recipe, local = reference["long"]
    out = tmp_path / "run"
    ckpt = out / "ckpt" / f"{LONG_JOB}.pt"
    killed = []

    def killer():
        try:
            pids = wait_for(lambda: job_pids(LONG_JOB), "the long job's worker")  # found early: no race later
            wait_for(ckpt.exists, "the long job's first checkpoint")
            if (out / "shards" / f"{LONG_JOB}.h5").exists():
                raise AssertionError("the job finished before the kill")
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        except AssertionError as e:
            killed.append(e)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run = train_ladder(recipe, out, executor=RayExecutor(max_retries=2))
    t.join(timeout=5)
    assert killed and isinstance(killed[0], int), f"no worker was killed: {killed}"
    record = run.index["jobs"][LONG_JOB]
    assert record["status"] == "done"
    assert record["resumed_from"]["step"] >= 25  # the retry continued from a checkpoint, not from step 0
    assert_same_run(run, local, [8, 512])


def test_sigkilled_driver_then_resume_completes(cluster, reference, tmp_path):
    """A driver (its own process, on the shared Ray cluster) dies by SIGKILL mid-ladder;
    `--resume` keeps the landed shard, resumes the unfinished job from its checkpoint,
    and the store equals an uninterrupted run."""
    recipe, local = reference["long"]
    out = tmp_path / "run"
    first = out / "shards" / "p00-w00008-s0-1.h5"
    ckpt = out / "ckpt" / f"{LONG_JOB}.pt"
    args = ["train", str(recipe), "--out", str(out), "--executor", "ray", "--address", cluster]
    log = tmp_path / "driver.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "widthkit.cli", "-q", *args], stdout=f, stderr=f)
    try:
        wait_for(lambda: first.exists() and ckpt.exists() or proc.poll() is not None, "a shard and a checkpoint")
        assert proc.poll() is None, f"the driver ended before the kill: {log.read_text()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    mtime = first.stat().st_mtime_ns
    assert main(["-q", *args, "--resume"]) == 0
    run = open_run(out)
    assert first.stat().st_mtime_ns == mtime
    assert run.index["jobs"][LONG_JOB]["resumed_from"]["step"] >= 25
    assert_same_run(run, local, [8, 512])
    assert not (out / "ckpt").exists()


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt here even when this process inherited it as ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_cancels_ray_tasks_and_exits_130(cluster, reference, tmp_path, capsys, sigint_raises):
    recipe, local = reference["long"]
    out = tmp_path / "run"
    ckpt = out / "ckpt" / f"{LONG_JOB}.pt"

    def interrupt():
        pids = wait_for(lambda: job_pids(LONG_JOB), "the long job's worker")
        wait_for(ckpt.exists, "the long job's first checkpoint")
        for pid in pids:  # freeze the job, so it cannot finish before the Ctrl-C lands (a fast machine could)
            os.kill(pid, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the main thread

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    args = ["train", str(recipe), "--out", str(out), "--executor", "ray"]
    assert main(args) == 130
    t.join(timeout=5)
    assert "interrupted" in capsys.readouterr().err
    wait_for(lambda: not job_pids(LONG_JOB), "the cancelled task to stop", timeout=10)
    time.sleep(0.5)
    assert not (out / "shards" / f"{LONG_JOB}.h5").exists() and ckpt.exists()
    assert open_run(out).index["jobs"][LONG_JOB]["status"] == "pending"
    assert main(["-q", *args, "--resume"]) == 0
    run = open_run(out)
    assert run.index["jobs"][LONG_JOB]["resumed_from"]["step"] >= 25
    assert_same_run(run, local, [8, 512])


def test_failing_jobs_are_reported_and_retried_boundedly(cluster, reference, tmp_path, monkeypatch):
    """A job that raises is tried once; one whose worker always dies is tried 1 + max_retries
    times; both are marked failed with their error, the third job lands, and the driver's
    error is one line naming both.  After the fix, --resume completes the ladder."""
    recipe, local = reference["small"]
    out, log = tmp_path / "run", tmp_path / "attempts.txt"
    real = ladder.run_job

    def faulty(job):
        with open(log, "a") as f:
            f.write(f"{job.width}\n")
        if job.width == 8:
            raise RuntimeError("injected bug at width 8")
        if job.width == 16:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job)

    monkeypatch.setattr(ladder, "run_job", faulty)  # shipped to Ray workers by value
    with pytest.raises(WidthkitError) as e:
        train_ladder(recipe, out, executor=RayExecutor(max_retries=1))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("2 of 3 jobs failed") and "--resume" in msg
    assert "p00-w00008-s0-1: RuntimeError: injected bug at width 8" in msg
    assert "p00-w00016-s0-1: WorkerCrashedError after 1 retries" in msg
    attempts = log.read_text().split()
    assert attempts.count("8") == 1 and attempts.count("16") == 2 and attempts.count("32") == 1
    jobs = open_run(out).index["jobs"]
    assert [jobs[k]["status"] for k in sorted(jobs)] == ["failed", "failed", "done"]
    assert "injected bug" in jobs["p00-w00008-s0-1"]["traceback"]
    monkeypatch.setattr(ladder, "run_job", real)
    run = train_ladder(recipe, out, resume=True, executor=RayExecutor())
    assert "error" not in run.index["jobs"]["p00-w00008-s0-1"]
    assert_same_run(run, local, [8, 16, 32])


def test_local_executor_failed_job_accounting(reference, tmp_path, monkeypatch):
    """Locally, an exception marks its job failed and the rest run; a WidthkitError (a user
    mistake every job would repeat) stops the run at once."""
    recipe, _ = reference["small"]
    real = ladder.run_job
    calls = []

    def faulty(exc):
        def fn(job):
            calls.append(job.width)
            if job.width == 16:
                raise exc
            return real(job)
        return fn

    monkeypatch.setattr(ladder, "run_job", faulty(ValueError("bad\nthing")))
    with pytest.raises(WidthkitError, match=r"^1 of 3 jobs failed \(p00-w00016-s0-1: ValueError: bad thing\)"):
        train_ladder(recipe, tmp_path / "a")
    assert calls == [8, 16, 32]
    assert open_run(tmp_path / "a").widths == [8, 32]
    calls.clear()
    monkeypatch.setattr(ladder, "run_job", faulty(WidthkitError("a user mistake")))
    with pytest.raises(WidthkitError, match="^a user mistake$"):
        train_ladder(recipe, tmp_path / "b", executor=LocalExecutor())
    assert calls == [8, 16]


def test_unreadable_checkpoint_restarts_its_job(reference, tmp_path):
    """A checkpoint that cannot be loaded would fail the job on every attempt; it is dropped and
    the job trains from step 0 to the same result."""
    recipe, local = reference["small"]
    ckpt = tmp_path / "run" / "ckpt" / "p00-w00008-s0-1.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 half a checkpoint")
    run = train_ladder(recipe, tmp_path / "run")
    assert "resumed_from" not in run.index["jobs"]["p00-w00008-s0-1"]
    assert_same_run(run, local, [8, 16, 32])


# -------------------------------------------------------------------- errors
def test_unreachable_address_is_one_line(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = write_recipe(tmp_path / "r.toml", SMALL)
    t0 = time.time()
    code = main(["train", str(recipe), "--out", str(tmp_path / "run"), "--executor", "ray",
                 "--address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and time.time() - t0 < 30
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"127.0.0.1:{port}" in err and "ray start --head" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--executor", "raay"], "unknown executor 'raay' (did you mean 'ray'?)"),
    (["--address", "auto"], "--address only apply to --executor ray"),
    (["--executor", "ray", "--address", "nohost"], "is not auto or HOST:PORT"),
    (["--executor", "ray", "--cpus-per-job", "0"], "--cpus-per-job must be positive"),
    (["--executor", "ray", "--gpus-per-job", "1.5"], "--gpus-per-job must be a fraction up to 1 or a whole number"),
])
def test_executor_flag_mistakes_are_one_line(tmp_path, capsys, argv, needle):
    recipe = write_recipe(tmp_path / "r.toml", SMALL)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_missing_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(WidthkitError, match=r"pip install 'widthkit\[ray\]'"):
        get_executor("ray")
    recipe = write_recipe(tmp_path / "r.toml", SMALL)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "the ray executor needs Ray" in err and len(err.splitlines()) == 1


def test_shard_of_another_recipe_is_refused(reference, tmp_path):
    """A run directory whose shard was written by another recipe (same job ids) is refused, not overwritten."""
    recipe, local = reference["small"]
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    foreign = out / "shards" / "p00-w00008-s0-1.h5"
    shutil.copy(local.path / "shards" / foreign.name, foreign)
    before = foreign.read_bytes()
    with pytest.raises(WidthkitError, match="comes from a different recipe.*fresh --out"):
        train_ladder(recipe, out, overrides=["optim.lr=0.02"])
    assert foreign.read_bytes() == before
    with pytest.raises(WidthkitError, match="holds a run of a different recipe"):
        train_ladder(recipe, local.path, overrides=["optim.lr=0.02"], resume=True)


def test_gpu_share_rule_and_job_size():
    shares = [gpu_share(n) for n in (0, 10_000, 999_999, 1_000_000, 5_000_000, 50_000_000, 10 ** 9)]
    assert shares == [1.0, 0.125, 0.125, 0.25, 0.25, 0.5, 1.0]
    raw = tomllib.loads(RECIPE.format(**SMALL))
    _, jobs = ladder.plan_jobs(raw, Path("unused"))
    model = create_model("mlp", width=32, in_shape=(64,), num_classes=10, depth=2)
    assert jobs[-1].params == 2 * sum(p.numel() for p in model.parameters())  # 2 seeds, meta device

    def asked(device, cluster_gpus, **options):
        raw["train"]["device"] = device
        job = ladder.plan_jobs(raw, Path("unused"))[1][0]
        (job, gpus), = RayExecutor(**options)._resources([job], cluster_gpus)
        return gpus, job.recipe["train"]["device"]

    assert asked("auto", 4) == (0.125, "auto")
    assert asked("auto", 0) == (0.0, "auto")          # no GPUs in the cluster: a CPU job
    assert asked("cpu", 4, num_gpus=0.5) == (0.0, "cpu")
    assert asked("cuda:1", 4) == (0.125, "cuda")      # Ray shows the task only the GPU it assigned
    assert asked("auto", 4, num_gpus=2) == (2.0, "auto")
