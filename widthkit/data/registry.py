"""The task registry: each source module registers its builder with :func:`register_task`.

A builder is ``fn(req: Request, *, option=default, ...) -> Built`` (see :mod:`widthkit.data.source`); its
keyword-only parameters are the task's options, with their defaults and annotated types (checked by
:mod:`widthkit.validate` before the builder runs).  Raw datasets a builder reads once per process are kept in
:func:`cache` wrappers so :func:`clear_cache` can free them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from widthkit.errors import unknown
from widthkit.validate import Option, signature_options


@dataclass(frozen=True)
class TaskSource:
    """A registered task: its builder, whether it can stream (online), its options and size defaults."""

    name: str
    build: Callable
    online: bool
    options: dict[str, Option]
    n_train: int | None
    n_test: int | None


_SOURCES: dict[str, TaskSource] = {}
_CACHES: list = []


def register_task(name: str, *, online: bool = False, n_train: int | None = None, n_test: int | None = None):
    """Decorator registering builder ``fn`` as task ``name``.

    ``online``: the builder returns a sampler of fresh training data (``sampler(n, generator) -> (x, y)``, or a
    :class:`~widthkit.data.task.StagedSampler` so that several steps' samples are made in one call).
    ``n_train`` / ``n_test``: the sizes used when the user sets none (None: the whole split).
    """
    def deco(fn: Callable) -> Callable:
        if name in _SOURCES:
            raise ValueError(f"task '{name}' is already registered")
        _SOURCES[name] = TaskSource(name, fn, online, signature_options(fn), n_train, n_test)
        return fn
    return deco


def get_source(name: str) -> TaskSource:
    if name not in _SOURCES:
        raise unknown("task", name, list_tasks())
    return _SOURCES[name]


def list_tasks() -> list[str]:
    """Names accepted by :func:`widthkit.data.load_task` (before ``:CLASSES`` / ``?options``)."""
    return sorted(_SOURCES)


def online_tasks() -> list[str]:
    return sorted(n for n, s in _SOURCES.items() if s.online)


def cache(maxsize: int):
    """``functools.lru_cache(maxsize)`` whose entries :func:`clear_cache` drops."""
    def deco(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        _CACHES.append(cached)
        return cached
    return deco


def clear_cache() -> None:
    """Forget cached tasks and raw datasets (frees memory; the next load rereads files)."""
    for cached in _CACHES:
        cached.cache_clear()
