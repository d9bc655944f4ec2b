"""The Slurm executor on a fake cluster: submitit's local executor runs the jobs as separate processes with
the requeue machinery of Slurm.  A job interrupted mid-way (the preemption / time-out signal) is requeued,
continues from its checkpoint, and the run ends with the same numbers as the local executor.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import torch

from widthkit.cli import main
from widthkit.executors import SlurmExecutor
from widthkit.ladder import train_ladder

from test_executors import LONG, LONG_JOB, assert_same_run, wait_for, write_recipe

submitit = pytest.importorskip("submitit")


def test_interrupted_job_is_requeued_and_matches_the_local_run(tmp_path):
    recipe = write_recipe(tmp_path / "long.toml", {**LONG, "widths": "[512]"})  # one job of a few seconds
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Slurm jobs (1 CPU each)
    try:
        local = train_ladder(recipe, tmp_path / "local")
    finally:
        torch.set_num_threads(before)
    out = tmp_path / "slurm"
    ckpt = out / "ckpt" / f"{LONG_JOB}.pt"
    ex = SlurmExecutor(cluster="local", poll_s=0.2)
    interrupted = []

    def preempt():
        try:
            wait_for(lambda: LONG_JOB in ex.submitted, "the submission")
            wait_for(ckpt.exists, "the long job's first checkpoint")
            if (out / "shards" / f"{LONG_JOB}.h5").exists():
                raise AssertionError("the job finished before the interruption")
            controller = ex.submitted[LONG_JOB]._process.pid  # submitit's local stand-in for slurmstepd
            task = int(Path(f"/proc/{controller}/task/{controller}/children").read_text().split()[0])
            os.kill(task, signal.SIGUSR2)  # what Slurm sends before a preemption or the time limit
            interrupted.append(True)
        except AssertionError as e:
            interrupted.append(e)

    t = threading.Thread(target=preempt, daemon=True)
    t.start()
    run = train_ladder(recipe, out, executor=ex)
    t.join(timeout=5)
    assert interrupted == [True], interrupted
    record = run.index["jobs"][LONG_JOB]
    assert record["status"] == "done" and record["slurm"]["cpus"] == 1
    assert record["resumed_from"]["step"] >= 25  # requeued, continued from a checkpoint, not from step 0
    log = "".join(p.read_text() for p in sorted((out / "slurm").rglob("*_log.*")))
    assert "this job is preempted" in log and "Requeued job" in log
    assert_same_run(run, local, [512])
    assert main(["-q", "train", str(recipe), "--out", str(out), "--resume", "--executor", "slurm",
                 "--slurm-cluster", "local"]) == 0  # nothing left: --resume trains nothing


@pytest.mark.parametrize("argv,needle", [
    (["--partition", "gpu"], "--partition only apply to --executor slurm"),
    (["--executor", "slurm", "--gpus-per-job", "0.5"], "whole number on Slurm"),
    (["--executor", "slurm", "--slurm", "account"], "--slurm takes KEY=VALUE"),
    (["--executor", "slurm", "--address", "auto"], "--address only apply to --executor ray"),
])
def test_slurm_flag_mistakes_are_one_line(tmp_path, capsys, argv, needle):
    recipe = write_recipe(tmp_path / "r.toml", LONG)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
