"""Live tracking: each job logs its evaluations to TensorBoard, Weights & Biases and MLflow.

``train.loggers = ["tensorboard", "wandb", "mlflow"]`` (any subset) opens one tracking run per job
(grid point, width, seed group), named by the job id (``p00-w00256-s0-3``), tagged with the recipe
name, parameterization, width and seeds, with the resolved recipe as its config.  At every evaluation
it logs, at the training step:

* ``{metric}/seed{S}`` for every member S, metric in ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``;
* ``{metric}/mean``: the mean over the members that did not diverge;
* ``test_loss/ensemble``, ``test_acc/ensemble``: the ensemble of the job's members (outputs averaged,
  logits for cross-entropy);
* ``lr``.

The prefix before ``/`` is the panel group in TensorBoard and W&B.  Non-finite values (a diverged member,
the train loss before the first step) are left out.  Everything is written under the run directory and
works offline: ``RUN/tensorboard/<job>`` event files, W&B offline runs in ``RUN/wandb`` (unless
``WANDB_MODE`` says otherwise; ``wandb sync`` uploads them), an MLflow file store in ``RUN/mlruns``
(unless ``MLFLOW_TRACKING_URI`` names another).  Loggers are opened inside the job, so Ray and Slurm
workers log too.  ``widthkit export`` replays a finished store through the same :class:`JobLogger`.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .engine import member_losses
from .errors import optional_import, unknown
from .recipe import Recipe
from .store import open_run

LOGGERS = ("tensorboard", "wandb", "mlflow")
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclass
class JobInfo:
    """What names and tags a job's tracking run: its id, recipe, width, seeds and run directory."""

    job_id: str
    recipe: Recipe
    width: int
    seeds: list[int]
    run_dir: Path
    point_key: str = ""

    @property
    def tags(self) -> dict[str, str]:
        return {"recipe": self.recipe.name, "param": self.recipe.param.kind, "width": str(self.width),
                "seeds": ",".join(map(str, self.seeds)), "point": self.point_key or "-"}

    @property
    def config(self) -> dict:
        return {**self.recipe.to_dict(), "job": {"id": self.job_id, "width": self.width, "seeds": self.seeds,
                                                  "point": self.point_key}}


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"steps": 10}} -> {"train.steps": "10"}`` (lists as JSON)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def member_values(seeds: list[int], row: dict[str, np.ndarray], lr: float) -> dict[str, float]:
    """``{metric}/seed{S}`` and ``lr`` at one evaluation; ``row`` maps each of :data:`METRICS` to [E] over ``seeds``."""
    values = {"lr": float(lr)}
    for name in METRICS:
        values.update({f"{name}/seed{s}": float(x) for s, x in zip(seeds, np.asarray(row[name], np.float64))})
    return _finite(values)


def job_values(row: dict[str, np.ndarray], outs: np.ndarray, targets: np.ndarray, loss: str) -> dict[str, float]:
    """``{metric}/mean`` over the members that did not diverge and the ensemble's ``test_loss``/``test_acc``.

    ``row``: metric -> [E] over all the job's members; ``outs`` [E,N,K] their test outputs; ``targets`` [N]
    labels or [N,K] regression targets.  The ensemble averages outputs (logits for cross-entropy).
    """
    values = {}
    for name in METRICS:
        v = np.asarray(row[name], np.float64)
        if np.isfinite(v).any():
            values[f"{name}/mean"] = float(v[np.isfinite(v)].mean())
    out = torch.from_numpy(np.asarray(outs, dtype=np.float32))
    out = out[torch.isfinite(out).flatten(1).all(1)]
    if len(out):
        mean = out.mean(0, keepdim=True)
        y = torch.as_tensor(np.array(targets))[None]
        values["test_loss/ensemble"] = float(member_losses(mean, y, loss)[0])
        if y.dtype == torch.int64:
            values["test_acc/ensemble"] = float((mean.argmax(-1) == y).float().mean())
    return _finite(values)


def _finite(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if math.isfinite(v)}


# ------------------------------------------------------------------------------------- backends
class _TensorBoard:
    """One event-file directory per job: ``RUN/tensorboard/<job>`` (``tensorboard --logdir RUN/tensorboard``)."""

    def __init__(self, job: JobInfo):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard extra (check_loggers)
        self.writer = SummaryWriter(log_dir=str(job.run_dir / "tensorboard" / job.job_id))
        self.writer.add_text("recipe", "```\n" + json.dumps(job.config, indent=1) + "\n```")
        self.writer.add_text("tags", " | ".join(f"{k}: {v}" for k, v in job.tags.items()))

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """One W&B run per job: project = recipe name, group = grid point, name = job id, offline by default."""

    def __init__(self, job: JobInfo):
        import wandb
        job.run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=job.recipe.name, group=job.point_key or job.recipe.name, name=job.job_id,
                              job_type="train", config=job.config, dir=str(job.run_dir),
                              tags=[job.recipe.param.kind, f"width={job.width}"],
                              mode=os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    """One MLflow run per job in experiment = recipe name, params = the flattened recipe (client API only,
    so runs in one process never share global state)."""

    def __init__(self, job: JobInfo):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the file store: offline, no server, no database; MLflow 3 wants it opted into
            uri = (job.run_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        exp = self._experiment(job.recipe.name)
        tags = {"mlflow.runName": job.job_id, **{f"widthkit.{k}": v for k, v in job.tags.items()}}
        self.run_id = self.client.create_run(exp, run_name=job.job_id, tags=tags).info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(job.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, json.dumps(job.config, indent=1), "recipe.json")

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric
        ts = int(1000 * time.time())
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


def check_loggers(names: list[str]) -> None:
    """Every name is a known logger and its extra is installed (one-line error otherwise)."""
    for n in names:
        if n not in _BACKENDS:
            raise unknown("logger in train.loggers", n, LOGGERS)
        optional_import(n, n, f"train.loggers = ['{n}']")  # each extra is named after its module


class JobLogger:
    """Fans one job's evaluations out to its tracking runs (see the module docstring for the names).

    A job resumed from its checkpoint opens new tracking runs (same names) that continue from that step.

    ``targets`` [N] (labels) or [N, K] and ``loss`` give the ensemble's loss.  Use as a context manager;
    :meth:`eval` is the trainer's ``on_eval`` hook, :meth:`log` takes one evaluation of any members.
    """

    def __init__(self, names: list[str], job: JobInfo, targets: np.ndarray):
        check_loggers(names)
        self.job, self.targets, self.loss = job, targets, job.recipe.train.loss
        self.backends = []
        try:
            for n in names:
                self.backends.append(_BACKENDS[n](job))
        except BaseException:
            self.close()
            raise
        self._pending: dict[int, list] = {}  # step -> (seeds, rows, outputs) of member groups until all are in

    def log(self, step: int, seeds: list[int], row: dict[str, np.ndarray], lr: float, outs: np.ndarray) -> None:
        """One evaluation of members ``seeds`` (``row``: metric -> [E], ``outs`` [E,N,K]) at ``step``.

        Logged once every member of the job has been evaluated at ``step``: at once, unless the trainer
        splits the job into groups (strategy ``loop`` or ``chunk:N``); then as the last group reaches it.
        So each tool receives one record per step, in step order (W&B drops steps that go back).
        """
        parts = self._pending.setdefault(step, [])
        parts.append((list(seeds), row, np.asarray(outs)))
        if sum(len(s) for s, _, _ in parts) < len(self.job.seeds):
            return
        del self._pending[step]
        rows = {k: np.concatenate([np.asarray(r[k]) for _, r, _ in parts]) for k in METRICS}
        values = member_values([s for ss, _, _ in parts for s in ss], rows, lr)
        values.update(job_values(rows, np.concatenate([o for _, _, o in parts]), self.targets, self.loss))
        for b in self.backends:
            b.log(step, values)

    def eval(self, step: int, seeds: list[int], res) -> None:
        """The trainer's hook: the newest evaluation of :class:`widthkit.trainer.MemberResults` ``res``."""
        self.log(step, seeds, {k: getattr(res, k)[-1] for k in METRICS}, res.lr[-1], res.logits[-1])

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []

    def __enter__(self) -> "JobLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def export_run(run, to: str, out: str | Path | None = None) -> Path:
    """Write a finished run's curves to ``to`` (a logger name) under ``out`` (default ``RUN/export``).

    Replays every finished job's stored evaluations through :class:`JobLogger`, so the tracking runs
    hold the same names, tags, config and values a live ``train.loggers`` run logs (``out`` takes the
    run directory's place: ``out/tensorboard/<job>``, ``out/wandb``, ``out/mlruns``).  Returns ``out``.
    """
    check_loggers([to])
    run = open_run(run) if isinstance(run, (str, Path)) else run
    out = Path(out) if out is not None else run.path / "export"
    for p in range(len(run.points)):
        view = run.select(p)
        jobs = sorted(((k, j) for k, j in view.index["jobs"].items() if j["point"] == p),
                      key=lambda kj: (kj[1]["width"], kj[1]["seeds"][0]))
        for w in view.widths:
            m, outs, steps = view.metrics(w), view.all_logits(w), view.logit_steps(w)
            wjobs = [(k, j) for k, j in jobs if j["width"] == w]
            order = [s for _, j in wjobs for s in j["seeds"]]  # the store's member order for this width
            for k, j in wjobs:
                rows = [order.index(s) for s in j["seeds"]]
                info = JobInfo(k, view.recipe, w, j["seeds"], out, view.point_key)
                with JobLogger([to], info, view.targets()) as log:
                    for i, step in enumerate(m["step"]):
                        li = int(np.nonzero(steps == step)[0][0])
                        log.log(int(step), j["seeds"], {n: m[n][rows, i] for n in METRICS}, float(m["lr"][i]),
                                outs[rows, li])
    return out
