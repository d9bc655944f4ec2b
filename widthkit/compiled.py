"""A compiled training step: ``torch.compile`` of the ensemble's whole step.

One graph holds the forward, the loss and accuracy, the divergence bookkeeping, the backward
(``torch.autograd.grad`` traced with dynamo's ``trace_autograd_ops``) and the optimizer's ``_foreach`` update,
so inductor fuses the ~100 small eager ops of a narrow step into a few generated kernels (C++/OpenMP on CPU,
Triton on GPU); on CUDA, ``mode="reduce-overhead"`` replays them as CUDA graphs, which removes the per-kernel
launch cost that dominates narrow widths.  The learning rate, step and Adam's bias corrections enter as tensors,
so one graph serves every step.  Only the batched plan (MLP, conv1d and buffer-free CNN families) is compiled.

Compiling costs seconds to minutes, so :func:`probe_compile` times it and decides by the job's length: compile
when ``compile_s + steps * compiled_s < steps * eager_s``.  If compiling fails or loses, the step stays eager
and the reason is recorded and printed once.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from .engine import Ensemble
from .progress import info

# before measuring: a cold compile of the whole step on 2 busy cores (10-16 s measured in a fresh process for the
# narrow MLP and conv1d steps, bench/compile_speed.py --cold; 42 s under heavier load), taken at its slow end so a
# wasted compile is rare; the probe then measures the real one
EST_COMPILE_S = {"cpu": 45.0, "cuda": 30.0}
# the most a compiled step saves of the eager one, for deciding to try: 43% measured on CPU (narrow MLPs; the
# conv1d step gains 4%, compute-bound steps nothing), more on GPU where CUDA graphs remove every launch
MAX_GAIN = {"cpu": 0.43, "cuda": 0.75}
RECOMPILE_LIMIT = 64  # graphs of the compiled step kept per process (dynamo's default, 8, would fall back to eager)


def split_strategy(strategy: str) -> tuple[str, str]:
    """``"vectorized+compile"`` -> ``("vectorized", "compile")``; no suffix means ``"auto"``."""
    group, _, mode = strategy.partition("+")
    return group, mode or "auto"


def compile_mode(device: torch.device) -> str:
    """CUDA graphs on GPU (narrow widths are launch-bound there); inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def can_compile(ens: Ensemble) -> bool:
    return ens._plan is not None


def worth_trying(eager_s: float, steps: int, device: torch.device) -> bool:
    """Could compiling pay at all: the most a compiled step could save over the job exceeds a typical compile."""
    kind = "cpu" if device.type == "cpu" else "cuda"
    return MAX_GAIN[kind] * eager_s * steps > EST_COMPILE_S[kind]


def pays(eager_s: float, compiled_s: float, compile_s: float, steps: int) -> bool:
    """Compile when it is faster per step and its cost is repaid within the job's ``steps``."""
    return compiled_s < eager_s and compile_s + steps * compiled_s < steps * eager_s


def enable(ens: Ensemble, backend: str = "inductor") -> None:
    """Swap the ensemble's whole training step for a compiled one (``backend="eager"``: trace only)."""
    mode = compile_mode(ens.device) if backend == "inductor" else None
    if mode == "reduce-overhead":  # weights and optimizer state change in place: graphs use them where they are
        for p in [*ens.params.values(), *(s for states in ens.state.values() for s in states)]:
            torch._dynamo.mark_static_address(p)
    step = torch.compile(ens._train_step, backend=backend, mode=mode, dynamic=False)

    graphs = mode == "reduce-overhead"

    def traced(*args):  # the backward is part of the graph; one graph per shape (a ladder's widths), not 8 at most
        with torch._dynamo.config.patch(trace_autograd_ops=True, recompile_limit=RECOMPILE_LIMIT):
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = step(*args)
        if graphs:  # a replay reuses the last one's output memory: keep what outlives the step as copies
            ens.alive, ens.diverged_step = ens.alive.clone(), ens.diverged_step.clone()
            out = tuple(o.clone() for o in out)
        return out
    ens._step = traced


def disable(ens: Ensemble) -> None:
    ens._step = ens._train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def probe_compile(ens: Ensemble, x: torch.Tensor, y: torch.Tensor, lr: float, eager_s: float, steps: int,
                  forced: bool = False, timed_steps: int = 3) -> dict:
    """Compile ``ens``'s step, time the compile (first call) and ``timed_steps`` steps; keep it if it pays over
    ``steps`` (or if ``forced`` and it works).  Returns the record entries; leaves ``ens`` eager if not kept."""
    try:
        enable(ens)
        t0 = time.perf_counter()
        for _ in range(2):  # the first call compiles (CUDA graphs record on the second)
            ens.step(x, y, lr)
        _sync(ens.device)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(timed_steps):
            ens.step(x, y, lr)
        _sync(ens.device)
        compiled_s = (time.perf_counter() - t0) / timed_steps
    except Exception as exc:  # noqa: BLE001  (compilers fail in many ways; eager always works)
        disable(ens)
        note = f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); training eager"
        info(note)
        return {"compile": False, "compile_note": note}
    keep = forced or pays(eager_s, compiled_s, compile_s, steps)
    rec = {"compile": keep, "compile_seconds": round(compile_s, 2), "compiled_seconds_per_step": compiled_s,
           "eager_seconds_per_step": eager_s}
    if not keep:
        disable(ens)
        rec["compile_note"] = (f"compiling took {compile_s:.0f} s for {eager_s * 1e3:.2f} -> {compiled_s * 1e3:.2f} "
                               f"ms per step: it would not pay over {steps} steps; training eager")
        info(rec["compile_note"])
    return rec


def decide(make_ensemble: Callable[[], Ensemble], x: torch.Tensor, y: torch.Tensor, lr: float, eager_s: float,
           steps: int, mode: str, threads: int, device: torch.device) -> dict:
    """The strategy probe's compile decision for a job of ``steps`` steps whose eager step takes ``eager_s``:
    ``mode`` "eager" never compiles, "compile" always tries, "auto" tries when it could pay.  Returns the record
    entries (none when compiling was not considered)."""
    if mode == "eager" or (mode == "auto" and not worth_trying(eager_s, steps, device)):
        return {}
    ens = make_ensemble()
    if not can_compile(ens):
        return {"compile": False, "compile_note": "only the batched plan (MLP, conv1d, CNN without BatchNorm) "
                                                  "is compiled"}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return probe_compile(ens, x, y, lr, eager_s, steps, forced=mode == "compile")
    finally:
        torch.set_num_threads(before)
