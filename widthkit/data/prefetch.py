"""Compute ``fn(step)`` for the next steps in a background thread while the caller trains on this one.

``fn`` must be a pure function of ``step`` (widthkit's batches are: each step's samples come from a generator
seeded by the step), so results are identical whatever the timing, the depth or the order of requests.
The worker thread runs torch single-threaded: small sampling ops are far faster without OpenMP wake-ups,
and the training step keeps the other cores (intra-op thread counts are per thread under OpenMP).
"""
from __future__ import annotations

import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, TypeVar

import torch

T = TypeVar("T")


class Prefetch(Generic[T]):
    """``prefetch(step)`` returns ``fn(step)``, then queues ``fn(step+1) .. fn(step+depth)`` in one worker thread.

    ``depth=0`` computes inline (no thread).  Requests out of order are served too (a queued step is reused, a
    missing one computed); queued steps behind the request are dropped.
    """

    def __init__(self, fn: Callable[[int], T], depth: int = 2):
        self.fn, self.depth = fn, depth
        self._queued: dict[int, Future] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="widthkit-prefetch", initializer=torch.set_num_threads,
                                        initargs=(1,)) if depth > 0 else None
        self._closer = weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True) \
            if self._pool is not None else None

    def __call__(self, step: int) -> T:
        if self._pool is None:
            return self.fn(step)
        fut = self._queued.pop(step, None) or self._pool.submit(self.fn, step)
        for s in [s for s in self._queued if s < step]:
            self._queued.pop(s).cancel()
        for s in range(step + 1, step + 1 + self.depth):
            if s not in self._queued:
                self._queued[s] = self._pool.submit(self.fn, s)
        return fut.result()

    def close(self) -> None:
        """Drop queued work and stop the thread (also done when the object is garbage-collected)."""
        self._queued.clear()
        if self._closer is not None:
            self._closer()
