"""Executors run ladder jobs: ``local`` (in-process, the default).

An executor has one method, ``run(jobs, fn, on_done)``: it calls ``fn(job)`` for every
job somewhere, and ``on_done(job, record)`` in the driver as each one finishes, so
the driver can record finished work in the index right away.
"""
from __future__ import annotations

from typing import Callable

from .errors import unknown


class LocalExecutor:
    """Runs jobs one after another in this process."""

    name = "local"

    def run(self, jobs: list, fn: Callable, on_done: Callable) -> None:
        for job in jobs:
            on_done(job, fn(job))


EXECUTORS = {"local": LocalExecutor}


def get_executor(spec=None, **options):
    """An executor from a name (``"local"``), an object with ``run``, or None (local)."""
    if spec is None:
        return LocalExecutor()
    if not isinstance(spec, str):
        return spec
    if spec not in EXECUTORS:
        raise unknown("executor", spec, list(EXECUTORS))
    return EXECUTORS[spec](**options)
