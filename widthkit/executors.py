"""Executors run ladder jobs: ``local`` (in this process, the default), ``ray`` (a Ray cluster) and ``slurm``
(one Slurm job per ladder job, through submitit).

An executor has one method, ``run(jobs, fn, on_done)``: it calls ``fn(job)`` for every
job somewhere, and ``on_done(job, record)`` in the driver as each one finishes, so
the driver can record finished work in the index right away.  A job that fails
with an exception the user did not cause gets ``on_done(job, failed_record(...))``
and the others go on; the driver reports every failed job at the end.  A
:class:`WidthkitError` inside a job is a user mistake that every job would repeat,
so it stops the whole run at once.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import traceback
from typing import Callable

from .errors import WidthkitError, unknown
from .progress import info, is_quiet, quiet as quiet_mode, warn

RAY_INSTALL = "the ray executor needs Ray: pip install 'widthkit[ray]' (in a checkout: pip install -e '.[ray]')"


def one_line(exc: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, shortened to ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def failed_record(error: str, tb: str = "") -> dict:
    """The index record of a failed job: its one-line error and, for debugging, the traceback."""
    return {"status": "failed", "error": error, "traceback": tb}


class LocalExecutor:
    """Runs jobs one after another in this process."""

    name = "local"

    def run(self, jobs: list, fn: Callable, on_done: Callable) -> None:
        for job in jobs:
            try:
                record = fn(job)
            except WidthkitError:
                raise
            except Exception as e:  # a bug or a resource fault in this job: record it, train the others
                warn(f"job {job.id} failed: {one_line(e)}; going on with the other jobs")
                record = failed_record(one_line(e), traceback.format_exc())
            on_done(job, record)


# ------------------------------------------------------------------------ ray
def gpu_share(member_params: int) -> float:
    """GPUs one job asks for, from its size (parameters per member times members).

    Small jobs cannot keep a GPU busy, so several share one: below 1M member-parameters
    a job takes 1/8 of a GPU, below 10M 1/4, below 100M 1/2, else a whole GPU.
    Unknown size (0) takes a whole GPU.
    """
    if member_params <= 0:
        return 1.0
    for limit, share in ((1_000_000, 0.125), (10_000_000, 0.25), (100_000_000, 0.5)):
        if member_params < limit:
            return share
    return 1.0


def _ray_job(fn: Callable, job, num_cpus: float, num_gpus: float, quiet: bool) -> dict:
    """Runs in a Ray worker: give torch the job's CPUs as threads, run ``fn(job)``, and
    add where it ran to its record (host, CPUs, GPU share and the GPU ids Ray assigned).

    Worker processes are reused across tasks, so threads are set per task; the
    trainer's probe then chooses between 1 thread and these.
    """
    import ray
    import torch
    torch.set_num_threads(max(1, int(num_cpus)))
    with quiet_mode(quiet):
        record = fn(job)
    record["ray"] = {"host": socket.gethostname(), "cpus": num_cpus, "gpus": num_gpus,
                     "gpu_ids": [str(i) for i in ray.get_gpu_ids()]}
    return record


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, when nothing listens at ``HOST:PORT`` (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise WidthkitError(f"--address '{address}' is not auto or HOST:PORT (e.g. 10.0.0.1:6379); "
                            "pass the address `ray start --head` printed")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise WidthkitError(f"cannot reach a Ray cluster at --address {address} ({reason}); start one there with "
                            f"`ray start --head --port {port}` (other nodes: `ray start --address {hostport}`), "
                            "or leave --address out to start a local Ray instance") from None


class RayExecutor:
    """Runs each job as one Ray task, on a Ray cluster or a local Ray instance.

    ``address``: ``None`` starts a local Ray instance (or joins the one ``RAY_ADDRESS``
    or ``ray start`` on this machine names), ``"auto"`` joins the cluster this node
    belongs to, ``"HOST:PORT"`` a given head node.  An already initialized Ray in
    this process is used as it is.  ``num_cpus``: CPUs per job (default 1, so Ray packs
    jobs; torch in the job gets as many threads).  ``num_gpus``: GPUs per job; by
    default jobs whose recipe device is ``cuda``/``auto`` get :func:`gpu_share` of a GPU
    when the cluster has GPUs, and none otherwise; ``train.device = "cpu"`` never asks.  ``max_retries``: how often Ray
    reruns a job whose worker died (process killed, node lost); a rerun resumes from
    the job's checkpoint in ``RUN/ckpt`` (shared storage on a real cluster).
    Exceptions raised by a job are not retried: the job is marked failed.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None,
                 max_retries: int = 2, init_kwargs: dict | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise WidthkitError(RAY_INSTALL) from None
        if num_cpus is not None and num_cpus <= 0:
            raise WidthkitError(f"--cpus-per-job must be positive, got {num_cpus}")
        if num_gpus is not None and (num_gpus < 0 or (num_gpus > 1 and num_gpus != int(num_gpus))):
            raise WidthkitError(f"--gpus-per-job must be a fraction up to 1 or a whole number, got {num_gpus}")
        if max_retries < 0:
            raise WidthkitError(f"--max-retries must be 0 or more, got {max_retries}")
        self.address = address
        self.num_cpus = 1.0 if num_cpus is None else float(num_cpus)
        self.num_gpus = num_gpus
        self.max_retries = int(max_retries)
        self.init_kwargs = dict(init_kwargs or {})
        self._owns_ray = False  # whether this executor called ray.init (and so shuts Ray down)
        target = address or os.environ.get("RAY_ADDRESS")
        if target:  # join a named cluster now, so a wrong address fails before anything is written
            if target != "auto":
                _check_reachable(target)
            self._connect()

    # ------------------------------------------------------------ cluster
    def _connect(self) -> None:
        """Initialize Ray unless it already is (in this process, e.g. by the user)."""
        import ray
        if ray.is_initialized():
            return
        kwargs = {"logging_level": logging.WARNING, **self.init_kwargs}
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            kwargs.setdefault("include_dashboard", False)
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError) as e:
            where = f"--address {self.address}" if self.address else f"RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}"
            why = "" if self.address == "auto" else f" ({' '.join(str(e).split())[:160]})"
            raise WidthkitError(f"no Ray cluster found at {where}{why}; start one with `ray start --head` "
                                "(other nodes: `ray start --address HEAD:6379`), or leave --address out "
                                "to start a local Ray instance") from None
        self._owns_ray = True

    def _resources(self, jobs: list, cluster_gpus: float) -> list[tuple[object, float]]:
        """(job, GPUs) per job: the rule of :func:`gpu_share` unless ``num_gpus`` is given."""
        out = []
        for job in jobs:
            device = str(job.recipe.get("train", {}).get("device", "auto"))
            wants = device.startswith("cuda") or (device == "auto" and (cluster_gpus > 0 or self.num_gpus))
            gpus = 0.0
            if wants:
                gpus = self.num_gpus if self.num_gpus is not None else gpu_share(job.params)
            if gpus and device.startswith("cuda:"):  # Ray shows the worker only its own GPU(s)
                train = {**job.recipe["train"], "device": "cuda"}
                job = dataclasses.replace(job, recipe={**job.recipe, "train": train})
            out.append((job, float(gpus)))
        return out

    def _warn_infeasible(self, ray, resources) -> None:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        max_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
        max_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
        need_gpu = max((g for _, g in resources), default=0)
        if self.num_cpus > max_cpu:
            warn(f"no Ray node has {self.num_cpus:g} CPUs (largest: {max_cpu:g}); jobs wait until one joins. "
                 "Lower --cpus-per-job or add nodes (Ctrl-C stops)")
        if need_gpu > max_gpu:
            warn(f"jobs ask for {need_gpu:g} GPU but no Ray node has that many (largest: {max_gpu:g}); they wait "
                 "until one joins. Lower --gpus-per-job, set train.device = \"cpu\", or add GPU nodes (Ctrl-C stops)")

    # ---------------------------------------------------------------- run
    def run(self, jobs: list, fn: Callable, on_done: Callable) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError
        self._connect()
        try:
            cluster = ray.cluster_resources()
            resources = self._resources(jobs, cluster.get("GPU", 0.0))
            self._warn_infeasible(ray, resources)
            info(f"ray: {len(jobs)} jobs on {cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs "
                 f"({self.num_cpus:g} CPU per job, up to {self.max_retries} retries after a worker dies)")
            task = ray.remote(_ray_job)
            refs = {}
            for job, gpus in resources:
                ref = task.options(name=f"widthkit:{job.id}", num_cpus=self.num_cpus, num_gpus=gpus,
                                   max_retries=self.max_retries, retry_exceptions=False) \
                    .remote(fn, job, self.num_cpus, gpus, is_quiet())
                refs[ref] = job
            try:
                while refs:
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                    for ref in ready:
                        job = refs.pop(ref)
                        try:
                            record = ray.get(ref)
                        except RayTaskError as e:  # the job raised: not retried, its error is final
                            cause = e.cause if e.cause is not None else e
                            if isinstance(cause, WidthkitError):
                                raise WidthkitError(str(cause)) from None
                            warn(f"job {job.id} failed: {one_line(cause)}; going on with the other jobs")
                            record = failed_record(one_line(cause), str(e))
                        except RayError as e:  # worker or node died more often than max_retries allows
                            msg = f"{type(e).__name__} after {self.max_retries} retries: {' '.join(str(e).split())}"
                            warn(f"job {job.id} failed: {msg[:240]}")
                            record = failed_record(msg[:240], str(e))
                        on_done(job, record)
            except BaseException:  # Ctrl-C, a user error in a job, or a failing on_done
                self._stop(ray, refs, on_done)
                raise
        finally:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False

    @staticmethod
    def _stop(ray, refs: dict, on_done: Callable) -> None:
        """Record jobs that already finished, then cancel the rest (their checkpoints stay)."""
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0) if refs else ([], [])
        for ref in ready:
            try:
                on_done(refs.pop(ref), ray.get(ref, timeout=5))
            except Exception:  # noqa: BLE001 - best effort: --resume also finds these shards
                pass
        for ref in refs:
            ray.cancel(ref, force=True)
        t0 = time.time()
        while refs and time.time() - t0 < 2:  # let the cancellations land before the driver exits
            done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0.2)
            for ref in done:
                refs.pop(ref)


EXECUTORS = {"local": LocalExecutor, "ray": RayExecutor}


def get_executor(spec=None, **options):
    """An executor from a name (``"local"``, ``"ray"``), an object with ``run``, or None (local).

    ``options`` (None values ignored) go to the executor's constructor, e.g.
    ``get_executor("ray", address="auto", num_cpus=2)``.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if spec is None:
        spec = "local"
    if not isinstance(spec, str):
        return spec
    if spec not in EXECUTORS:
        raise unknown("executor", spec, list(EXECUTORS))
    if spec == "local" and options:
        raise WidthkitError(f"the local executor takes no options (got {', '.join(sorted(options))}); "
                            "they apply to the 'ray' and 'slurm' executors")
    return EXECUTORS[spec](**options)


# ------------------------------------------------------------------------ slurm
SLURM_INSTALL = "the slurm executor needs submitit: pip install 'widthkit[slurm]' (in a checkout: pip install -e '.[slurm]')"


class _SlurmJob:
    """What one Slurm job runs: ``fn(job)`` with the job's CPUs as torch threads, its outcome as a record.

    submitit calls :meth:`checkpoint` when Slurm preempts the job or its time runs out, and requeues the
    returned submission; the rerun continues from the job's own checkpoint in ``RUN/ckpt``.  Errors come
    back as records (a :class:`WidthkitError` flagged as the user's), so the driver sees their type.
    """

    def __init__(self, fn: Callable, job, num_cpus: int, quiet: bool):
        self.fn, self.job, self.num_cpus, self.quiet = fn, job, num_cpus, quiet

    def __call__(self) -> dict:
        import submitit
        import torch
        torch.set_num_threads(self.num_cpus)
        env = submitit.JobEnvironment()
        try:
            with quiet_mode(self.quiet):
                record = self.fn(self.job)
        except WidthkitError as e:
            return {"status": "user-error", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a bug or resource fault: this job fails, the others go on
            return failed_record(one_line(e), traceback.format_exc())
        record["slurm"] = {"job_id": str(env.job_id), "host": socket.gethostname(), "cpus": self.num_cpus}
        return record

    def checkpoint(self):
        import submitit
        return submitit.helpers.DelayedSubmission(self)


class SlurmExecutor:
    """Runs each job as one Slurm job (a job array), through submitit, without Ray.

    ``partition``, ``time`` (minutes per job), ``num_cpus`` (CPUs per job, torch threads; default 1),
    ``num_gpus`` (whole GPUs per job; default 0), ``mem_gb``, ``max_retries`` (requeues after a
    preemption or time-out, each continuing from the job's checkpoint; default 3), ``array_parallelism``
    (jobs of the array running at once), ``slurm`` (other submitit ``slurm_*`` parameters without the
    prefix, e.g. ``{"account": "x", "qos": "y"}``).  ``cluster``: ``None`` submits to Slurm; ``"local"``
    runs the jobs as local processes with the same requeue machinery (to try a setup; the tests use it).
    submitit's files (scripts, logs) go to ``RUN/slurm``.  The driver polls until every job is done and
    records each one in the index as it finishes; Ctrl-C cancels the jobs not yet finished.
    """

    name = "slurm"

    def __init__(self, partition: str | None = None, time: float = 60, num_cpus: float | None = None,
                 num_gpus: float | None = None, mem_gb: float | None = None, max_retries: int = 3,
                 array_parallelism: int | None = None, slurm: dict | None = None, cluster: str | None = None,
                 poll_s: float = 2.0):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise WidthkitError(SLURM_INSTALL) from None
        if num_cpus is not None and (num_cpus < 1 or num_cpus != int(num_cpus)):
            raise WidthkitError(f"--cpus-per-job must be a whole number >= 1 on Slurm, got {num_cpus}")
        if num_gpus is not None and (num_gpus < 0 or num_gpus != int(num_gpus)):
            raise WidthkitError(f"--gpus-per-job must be a whole number on Slurm (GPUs are not shared), got {num_gpus}")
        if time <= 0 or max_retries < 0:
            raise WidthkitError(f"--time must be positive and --max-retries 0 or more, got {time} and {max_retries}")
        if cluster not in (None, "slurm", "local", "debug"):
            raise unknown("submitit cluster", cluster, ["slurm", "local", "debug"])
        self.cluster = cluster
        self.num_cpus = int(num_cpus or 1)
        self.params = {"timeout_min": time, "cpus_per_task": self.num_cpus, "gpus_per_node": int(num_gpus or 0),
                       "slurm_partition": partition, "mem_gb": mem_gb, "slurm_array_parallelism": array_parallelism,
                       **{f"slurm_{k}": v for k, v in (slurm or {}).items()}}
        self.max_retries = int(max_retries)
        self.poll_s = poll_s
        self.submitted: dict[str, object] = {}  # job id -> submitit job (the test interrupts one)

    def _executor(self, folder):
        import shutil

        import submitit
        cluster = self.cluster or "slurm"
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise WidthkitError("--executor slurm submits with sbatch, which is not on this machine's PATH; run "
                                "the driver on a Slurm login node (or try the setup locally with `cluster='local'`)")
        ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=self.max_retries,
                                   local_max_num_timeout=self.max_retries)
        params = {k: v for k, v in self.params.items() if v is not None}
        if self.cluster in ("local", "debug"):
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        try:
            ex.update_parameters(name="widthkit", **params)
        except (ValueError, TypeError) as e:
            raise WidthkitError(f"submitit refused a Slurm option ({' '.join(str(e).split())[:200]}); "
                                "check --slurm KEY=VALUE names (submitit's slurm_* parameters)") from None
        return ex

    def run(self, jobs: list, fn: Callable, on_done: Callable) -> None:
        from submitit.core.utils import UncompletedJobError
        ex = self._executor(os.path.join(jobs[0].run_dir, "slurm", "%j") if jobs else "slurm")
        with ex.batch():
            handles = [(job, ex.submit(_SlurmJob(fn, job, self.num_cpus, is_quiet()))) for job in jobs]
        self.submitted = {job.id: h for job, h in handles}
        info(f"slurm: submitted {len(jobs)} jobs as array {handles[0][1].job_id.split('_')[0] if handles else '-'} "
             f"({self.num_cpus} CPU per job, up to {self.max_retries} requeues after preemption or time-out)")
        pending = {job.id: (job, h) for job, h in handles}
        try:
            while pending:
                for key in [k for k, (_, h) in pending.items() if h.done()]:
                    job, h = pending.pop(key)
                    try:
                        record = h.result()
                    except UncompletedJobError as e:  # killed, out of memory, or out of requeues
                        msg = " ".join(str(e).split())
                        warn(f"job {job.id} failed: {msg[:200]}")
                        record = failed_record(msg[:240], str(e))
                    if record.get("status") == "user-error":
                        raise WidthkitError(record["error"])
                    if record.get("status") == "failed":
                        warn(f"job {job.id} failed: {record['error']}; going on with the other jobs")
                    on_done(job, record)
                if pending:
                    time.sleep(self.poll_s)
        except BaseException:  # Ctrl-C, a user error in a job, or a failing on_done: stop the rest
            for _, h in pending.values():
                h.cancel(check=False)
            raise


EXECUTORS["slurm"] = SlurmExecutor
