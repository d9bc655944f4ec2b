"""Train the members (seeds) of one width with the ensemble engine.

:func:`train_members` chooses how to group members (all at once, in chunks, or one
by one) from a short measured probe, trains each group with :class:`Ensemble`,
evaluates every member on the test set on a step grid (keeping the test outputs
for later point-wise analyses; see :mod:`widthkit.grid`), keeps weight snapshots at the
``train.snapshots`` steps (:mod:`widthkit.snapshots`), and checkpoints so an interrupted job resumes from
its last checkpoint rather than from step 0.

Every source of randomness (init, batches, dropout masks) is a pure function of
(recipe seed, member seed, step) through :func:`widthkit.seeds.derive_seed`, so results
do not depend on the grouping, and a resumed job continues exactly.
"""
from __future__ import annotations

import dataclasses
import io
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import compiled, grid, malloc, snapshots
from .atomic import atomic_write_bytes
from .data import Task
from .data.prefetch import Prefetch, chunk_steps
from .engine import Ensemble, lr_at, member_losses
from .errors import RecipeError
from .param import ParamTable
from .progress import bar, info, warn
from .recipe import Recipe, check_strategy
from .seeds import derive_seed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"recipe key 'train.device' is '{name}' but no CUDA GPU is available; use device = "
                          "\"auto\" or \"cpu\"")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RecipeError("recipe key 'train.device' is 'mps' but this machine has no MPS; use device = \"auto\"")
    return dev


def total_steps(recipe: Recipe, task: Task) -> int:
    if recipe.train.epochs > 0:
        return max(1, int(round(recipe.train.epochs * steps_per_epoch(recipe, task))))
    return recipe.train.steps


def batch_size(recipe: Recipe, task: Task) -> int:
    n = len(task.x_train)
    return n if recipe.data.batch_size == 0 else min(recipe.data.batch_size, n)


def steps_per_epoch(recipe: Recipe, task: Task) -> int:
    return max(1, len(task.x_train) // batch_size(recipe, task))


def check_recipe_task(recipe: Recipe, task: Task) -> None:
    """Recipe values that only make sense against the task, checked before any job starts.

    A one-class task and a warmup longer than training are RecipeErrors; a batch size above the training
    set is clamped (said here, and recorded as the job record's ``batch_size``).
    """
    if task.y_train.dtype == torch.int64 and task.num_classes < 2:
        raise RecipeError(f"task '{recipe.data.task}' has {task.num_classes} class; classification needs at least "
                          "two: choose more classes in recipe key 'data.task'")
    total = total_steps(recipe, task)
    if recipe.optim.warmup_steps >= total:
        raise RecipeError(f"recipe key 'optim.warmup_steps' is {recipe.optim.warmup_steps}, but training has only "
                          f"{total} steps; make it shorter than training")
    if recipe.data.batch_size > len(task.x_train):
        warn(f"recipe key 'data.batch_size' is {recipe.data.batch_size}, above the {len(task.x_train)} training "
             f"samples; using full batches of {len(task.x_train)} (recorded as the jobs' batch_size)")


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (MemAvailable for the CPU), or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kb * 1024
    except (OSError, StopIteration, ValueError):
        return None


def check_fits(recipe: Recipe, width: int, params: int) -> None:
    """Refuse a width whose one member cannot fit, before anything is allocated.

    Lower bound of one member's training memory: weights, gradients and optimizer state, 4 bytes each
    (activations come on top), against the free memory of the training device.
    """
    try:
        device = resolve_device(recipe.train.device)
    except RecipeError:  # a GPU the driver lacks: the workers (Ray) may have it, and check it themselves
        return
    free = available_bytes(device)
    states = {"sgd": 1 if recipe.optim.momentum else 0}.get(recipe.optim.name, 2)
    need = params * 4 * (2 + states)
    if free is not None and need > free:
        raise RecipeError(f"recipe key 'model.widths': width {width} needs at least {need / 2**30:.1f} GiB for "
                          f"one member ({params:,} parameters) but {device.type} has {free / 2**30:.1f} GiB "
                          "free; use smaller widths")


def eval_steps(recipe: Recipe, total: int) -> list[int]:
    """Steps at which members are evaluated: the ``eval_every`` grid (0 and the last included) and every
    ``snapshots`` step (so each snapshot has its test outputs)."""
    return sorted(set(grid.steps(recipe.train.eval_every, total, "train.eval_every"))
                  | set(grid.steps(recipe.train.snapshots, total, "train.snapshots")))


class Batches:
    """Per-member minibatches as a pure function of (member seed, step).

    Finite tasks: each member walks its own permutation of the training set, fresh
    every epoch.  Online tasks: each member draws fresh samples every step.  With
    ``data.shared_batches`` every member gets the same batches, so members differ only
    in their initialization (the ensemble variance is then init variance alone).
    Online batches are drawn at least ``prefetch`` steps ahead in a background thread (0: inline),
    :func:`~widthkit.data.prefetch.chunk_steps` steps per batched call; each is a pure function of
    its step, so neither the timing nor the chunking changes them.
    """

    def __init__(self, recipe: Recipe, task: Task, seeds: list[int], device: torch.device, prefetch: int = 2):
        self.task, self.seeds, self.device = task, seeds, device
        self.recipe_seed = recipe.seed
        self.B = batch_size(recipe, task)
        self.online = recipe.data.online
        self.shared = recipe.data.shared_batches
        self.streams = ["shared"] if self.shared else list(dict.fromkeys(seeds))  # one stream per distinct order
        # a packed sweep repeats its seeds once per grid point: each stream is drawn once, then copied
        self._pick = None if self.shared or len(self.streams) == len(seeds) else \
            torch.tensor([self.streams.index(s) for s in seeds], device=device)
        self.spe = steps_per_epoch(recipe, task)
        self._perm_epoch = -1
        self._perms: torch.Tensor | None = None
        if not self.online:
            self.x = task.x_train.to(device)
            self.y = task.y_train.to(device)
        else:
            self.chunk = chunk_steps(self.B, 4 * math.prod(task.in_shape), len(self.streams))
            self._online = Prefetch(self._draw, -(-prefetch // self.chunk))

    def _draw(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh samples of every stream at the ``chunk``'s steps, [steps, streams, B, ...] (on the CPU, pinned
        for a GPU); each step's from its own generator, all made in one batched call per stream."""
        steps = range(chunk * self.chunk, (chunk + 1) * self.chunk)
        xs, ys = zip(*(self.task.sample_many(self.B, [torch.Generator().manual_seed(
            derive_seed(self.recipe_seed, s, "online", step)) for step in steps]) for s in self.streams))
        x, y = (torch.stack([t.reshape(len(steps), self.B, *t.shape[1:]) for t in ts], 1) for ts in (xs, ys))
        if self.device.type == "cuda":  # page-locked, so the copy to the GPU does not block the step loop
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def close(self) -> None:
        """Stop drawing ahead (online tasks)."""
        if self.online:
            self._online.close()

    def _permutations(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            n = len(self.task.x_train)
            perms = [torch.randperm(n, generator=torch.Generator().manual_seed(
                derive_seed(self.recipe_seed, s, "data", epoch))) for s in self.streams]
            self._perms, self._perm_epoch = torch.stack(perms).to(self.device), epoch
        return self._perms

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.online:
            chunk, k = divmod(step, self.chunk)
            x, y = (t[k].to(self.device, non_blocking=True) for t in self._online(chunk))
        else:
            epoch, pos = divmod(step, self.spe)
            idx = self._permutations(epoch)[:, pos * self.B:(pos + 1) * self.B]
            x, y = self.x[idx], self.y[idx]
        if self.shared:
            n = len(self.seeds)
            x, y = x.expand(n, *x.shape[1:]), y.expand(n, *y.shape[1:])
        elif self._pick is not None:
            x, y = x[self._pick], y[self._pick]
        return x, y


@dataclass
class MemberResults:
    """Everything recorded for a group of members (stacked along the member axis)."""

    seeds: list[int]
    steps: list[int] = field(default_factory=list)            # eval steps
    train_loss: list[np.ndarray] = field(default_factory=list)  # per eval: [E]
    train_acc: list[np.ndarray] = field(default_factory=list)
    test_loss: list[np.ndarray] = field(default_factory=list)
    test_acc: list[np.ndarray] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)      # per eval: [E, N, K]
    diverged_step: np.ndarray | None = None                     # [E] step it diverged at, -1 if it did not
    diverged_reason: list[str] = field(default_factory=list)    # [E] "", "nan", "loss-bound" or "chance"
    state: dict | None = None                                   # final stacked weights and buffers
    snapshot_steps: list[int] = field(default_factory=list)     # steps of the snapshots (before the last)
    snapshots: list[dict] = field(default_factory=list)         # per snapshot: {name: tensor [E, ...]} (storage dtype)

    @staticmethod
    def concat(parts: list["MemberResults"]) -> "MemberResults":
        """Join groups of members (same eval steps) along the member axis."""
        cat = lambda name: [np.concatenate(v, axis=0) for v in zip(*(getattr(p, name) for p in parts))]  # noqa
        out = MemberResults(seeds=[s for p in parts for s in p.seeds], steps=parts[0].steps, lr=parts[0].lr)
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "logits"):
            setattr(out, name, cat(name))
        out.diverged_step = np.concatenate([p.diverged_step for p in parts])
        out.diverged_reason = [r for p in parts for r in p.diverged_reason]
        out.state = {k: np.concatenate([p.state[k] for p in parts]) for k in parts[0].state}
        out.snapshot_steps = parts[0].snapshot_steps
        out.snapshots = [{k: torch.cat([p.snapshots[j][k] for p in parts]) for k in snap}
                         for j, snap in enumerate(parts[0].snapshots)]
        return out

    def to_plain(self) -> dict:
        """Plain types and tensors only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "logits"):
            out[name] = [t(a) for a in out[name]]
        out["diverged_step"] = None if self.diverged_step is None else t(self.diverged_step)
        out["state"] = None if self.state is None else {k: t(v) for k, v in self.state.items()}
        return out

    @staticmethod
    def from_plain(d: dict) -> "MemberResults":
        """Inverse of :meth:`to_plain`."""
        d = dict(d)
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "logits"):
            d[name] = [a.numpy() for a in d[name]]
        if d["diverged_step"] is not None:
            d["diverged_step"] = d["diverged_step"].numpy()
        if d["state"] is not None:
            d["state"] = {k: v.numpy() for k, v in d["state"].items()}
        return MemberResults(**d)

    def take(self, members: slice, lr: list[float]) -> "MemberResults":
        """The results of ``members`` (a slice of the member axis), whose lr at each eval step is ``lr``."""
        out = MemberResults(seeds=self.seeds[members], steps=self.steps, lr=lr)
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "logits"):
            setattr(out, name, [v[members] for v in getattr(self, name)])
        out.diverged_step, out.diverged_reason = self.diverged_step[members], self.diverged_reason[members]
        out.state = {k: v[members] for k, v in self.state.items()}
        out.snapshot_steps = self.snapshot_steps
        out.snapshots = [{k: v[members] for k, v in snap.items()} for snap in self.snapshots]
        return out


def mark_diverged(res: MemberResults, recipe: Recipe, task: Task) -> None:
    """Set ``res.diverged_step`` / ``diverged_reason`` [E] from the engine's NaN/inf steps and the recorded curves.

    Besides a NaN/inf loss ("nan", from the engine), a member is diverged when its loss at the last
    evaluation exceeds ``train.divergence_factor`` x its initial test loss ("loss-bound", from the step it
    stayed above the bound; a transient spike that comes back, a catapult, is not divergence), or when a
    classifier stays at chance: test accuracy within 3 binomial standard errors of 1/K at every evaluation
    after step 0 while its final test loss is no lower than its initial one ("chance", at the last step).
    """
    step = np.asarray(res.diverged_step, np.int64).copy()
    reason = ["nan" if s >= 0 else "" for s in step]
    test = np.stack(res.test_loss, 1)                        # [E, S]
    train = np.stack(res.train_loss, 1)
    worst = np.fmax(test, train)                             # NaN only where both are
    initial = test[:, 0]
    k = recipe.train.divergence_factor
    chance = task.y_test.dtype == torch.int64 and len(res.steps) > 1
    if chance:
        p, n = 1.0 / task.num_classes, len(task.y_test)
        acc = np.stack(res.test_acc, 1)[:, 1:]
        stuck = np.all(acc <= p + 3 * math.sqrt(p * (1 - p) / n), 1) & (test[:, -1] >= initial)
    for e in range(len(step)):
        if reason[e]:
            continue
        if k and initial[e] > 0 and worst[e, -1] > k * initial[e]:
            below = np.flatnonzero(~(worst[e] > k * initial[e]))  # the last evaluation within the bound
            step[e], reason[e] = res.steps[below[-1] + 1 if len(below) else 0], "loss-bound"
            continue
        if chance and stuck[e]:
            step[e], reason[e] = res.steps[-1], "chance"
    res.diverged_step, res.diverged_reason = step, reason


def eval_lr(step: int, optim, total: int) -> float:
    """The learning rate recorded at eval ``step``: the next step's, 0 after the last."""
    return lr_at(step, optim, total) if step < total else 0.0


def evaluate(ens: Ensemble, task: Task, loss: str, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test outputs [E,N,K], loss [E] and accuracy [E] for every member (plain module path)."""
    x = task.x_test.to(ens.device)
    y = task.y_test.to(ens.device)
    outs = torch.stack([torch.cat([ens.member_forward(i, x[j:j + batch]) for j in range(0, len(x), batch)])
                        for i in range(ens.size)]).float()
    yy = y.unsqueeze(0).expand(ens.size, *y.shape)
    with torch.no_grad():
        losses = member_losses(outs, yy, loss)
        acc = (outs.argmax(-1) == yy).float().mean(1) if y.dtype == torch.int64 else torch.full_like(losses, math.nan)
    return outs.cpu().numpy(), losses.cpu().numpy(), acc.cpu().numpy()


def _autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    if recipe.train.dtype == "bfloat16":
        if device.type == "cuda":
            return torch.bfloat16
        info("train.dtype = bfloat16 applies on GPU only; training in float32 on CPU")
    return None


def _group_sizes(strategy: str, n: int) -> int:
    if strategy == "vectorized":
        return n
    if strategy == "loop":
        return 1
    return min(int(strategy.split(":")[1]), n)


def activation_bytes(ens: Ensemble, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one training forward of ``ens`` (its activation memory).

    Counted exactly, from the tensors saved for backward (each storage once), so it is
    the same on every device and needs no allocator statistics.
    """
    views: dict[tuple, set] = {}

    def pack(t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        views.setdefault(key, set()).add((t.storage_offset(), t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        member_losses(ens.forward(x, train=True).float(), y, ens.loss).sum()
    own = {(p.untyped_storage().data_ptr(), p.device.type) for p in ens.params.values()}
    # a storage counts once, by the parts of it that were saved (a view of the input is not all of it)
    return int(sum(sum(n for _, n in v) for k, v in views.items() if k not in own))  # weights are not activations


def max_group(make_members, hparams, recipe: Recipe, batches: Batches, device) -> tuple[int, float]:
    """Largest group whose activations fit ``train.memory_budget_mb``, and MB per member.

    ``hparams(idx)`` gives the :class:`Ensemble` keyword arguments (lr scales, optimizer specs, epsilon
    scales) of members ``idx``; so do the other functions' here."""
    n = len(batches.seeds)
    if not recipe.train.memory_budget_mb:
        return n, math.nan
    k = min(n, 2)  # two members, so vmap's batched layout is part of the per-member cost
    ens = Ensemble(make_members(list(range(k))), loss=recipe.train.loss, device=device, **hparams(list(range(k))))
    x, y = batches(0)
    per = activation_bytes(ens, x[:k], y[:k]) / k / 2**20
    return max(1, min(n, int(recipe.train.memory_budget_mb // max(per, 1e-9)))), per


def _strategy_name(k: int, n: int) -> str:
    return "vectorized" if k == n else "loop" if k == 1 else f"chunk:{k}"


THREADS_MARGIN = 1.2  # more CPU threads must win the probe by 20%: on a shared machine they can lose 10x later
PROBE_MIN_S = 0.02  # each probe timing spans at least this long: a few sub-millisecond steps are mostly noise


def probe_strategy(make_members, hparams, recipe: Recipe, batches: Batches, device, steps: int = 3,
                   pinned: int | None = None, compile_mode: str = "auto", job_steps: int = 0) -> dict:
    """Time a few real steps (``steps``, and at least ``PROBE_MIN_S``) per (group size, CPU threads, conv
    layout); pick the fastest per member-step.

    Group sizes are all members, half, and one, each capped by ``train.memory_budget_mb``
    (or only the ``pinned`` group size); on CPU, 1 thread and all threads are
    tried too, because tiny ops run far faster single-threaded (no OpenMP wake-ups), and
    more threads are chosen only if they win by ``THREADS_MARGIN``;
    conv nets are timed with NCHW and NHWC feature maps.  Then the winner's step is
    compiled (:mod:`widthkit.compiled`) if ``compile_mode`` is ``"compile"``, or if it is
    ``"auto"`` and compiling could pay over the ``job_steps`` steps; it is kept only if it does.
    """
    n = len(batches.seeds)
    max_threads = torch.get_num_threads()
    thread_options = sorted({1, max_threads}) if device.type == "cpu" else [max_threads]
    per_member_mb = math.nan
    if pinned is not None:
        sizes = [pinned]
    else:
        cap, per_member_mb = max_group(make_members, hparams, recipe, batches, device)
        sizes = sorted({min(k, cap) for k in (n, max(n // 2, 1), 1)}, reverse=True)
    budget = {} if not recipe.train.memory_budget_mb else {
        "memory_budget_mb": recipe.train.memory_budget_mb, "activation_mb_per_member": round(per_member_mb, 3)}
    if len(sizes) * len(thread_options) == 1 and compile_mode != "compile":
        return {"strategy": _strategy_name(sizes[0], n), **budget}
    x0, y0 = batches(0)
    timings = {}
    try:
        for k in sizes:
            ens = Ensemble(make_members(list(range(k))), loss=recipe.train.loss, device=device,
                           autocast_dtype=_autocast_dtype(recipe, device), **hparams(list(range(k))))
            x, y = x0[:k], y0[:k]
            lr = ens.member_lrs(0, max(job_steps, 1)) * 1e-6  # tiny, but each member's own (a packed sweep)
            for _ in range(2):  # two interleaved rounds, best of each: a busy moment hits one, not both
                for threads in thread_options:
                    torch.set_num_threads(threads)
                    for layout in ens.conv_layouts:
                        ens.channels_last = layout
                        ens.step(x, y, lr)  # warm-up
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        t0, done = time.perf_counter(), 0
                        while done < steps or time.perf_counter() - t0 < PROBE_MIN_S:
                            ens.step(x, y, lr)
                            done += 1
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        t = (time.perf_counter() - t0) / done / k
                        timings[(k, threads, layout)] = min(t, timings.get((k, threads, layout), math.inf))
    finally:
        torch.set_num_threads(max_threads)
    best = min(timings, key=lambda key: timings[key] * (THREADS_MARGIN if key[1] > 1 else 1.0))
    best_k, best_threads, best_layout = best
    layouts = {"channels_last": best_layout} if len({key[2] for key in timings}) > 1 else {}
    record = {"strategy": _strategy_name(best_k, n), "threads": best_threads, **layouts,
              "probe_seconds_per_member_step": {f"{k}x{t}" + ("-cl" if cl else ""): v
                                                for (k, t, cl), v in timings.items()}, **budget}
    record.update(compiled.decide(
        lambda: Ensemble(make_members(list(range(best_k))), loss=recipe.train.loss, device=device,
                         autocast_dtype=_autocast_dtype(recipe, device), channels_last=best_layout,
                         **hparams(list(range(best_k)))),
        x0[:best_k], y0[:best_k], recipe.optim.lr * 1e-6, timings[best] * best_k, job_steps, compile_mode,
        best_threads, device))
    return record


def train_members(recipe: Recipe, width: int, seeds: list[int], task: Task, *, build_member,
                  ckpt_path: Path | None = None, strategy: str | None = None,
                  label: str = "", on_eval=None, stop_at: int | None = None) -> tuple[MemberResults, dict, ParamTable]:
    """Train ``seeds`` at ``width``; returns results, the strategy record and the param table.

    ``build_member(recipe, width, seed, task) -> (model, ParamTable)`` builds one
    initialized member.  With ``ckpt_path``, state is saved every
    ``train.checkpoint_every`` steps and a later call resumes from it.  ``on_eval(step, seeds, results)``
    is called after each evaluation of a group of members (live tracking, :mod:`widthkit.tracking`).
    ``stop_at``: stop after that many steps, keeping the weights then (the schedule is the full run's).
    """
    results, record, tables = train_points([recipe], width, seeds, task, build_member=build_member,
                                           ckpt_path=ckpt_path, strategy=strategy, label=label, on_eval=on_eval,
                                           stop_at=stop_at)
    return results[0], record, tables[0]


def train_points(recipes: list[Recipe], width: int, seeds: list[int], task: Task, *, build_member,
                 ckpt_path: Path | None = None, strategy: str | None = None,
                 label: str = "", on_eval=None, stop_at: int | None = None,
                 ) -> tuple[list[MemberResults], dict, list[ParamTable]]:
    """Train ``seeds`` at ``width`` for several grid points at once (a packed sweep).

    The ``recipes`` (grid points) differ only in per-member keys (learning rate, weight decay,
    init and output scales), so their P x S members (point-major) train as one stacked group
    whose members carry their own hyper-parameters; the probe and memory budget see all of them.
    Returns per point its results and param table, and the one strategy record.  ``on_eval`` and
    ``stop_at`` as in :func:`train_members` (``on_eval`` sees the stacked members, point-major).
    """
    recipe = recipes[0]
    device = resolve_device(recipe.train.device)
    kept = device.type == "cpu" and malloc.keep_freed_memory()  # before the probe, so it times what training gets
    total = total_steps(recipe, task)
    evals = eval_steps(recipe, total)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    S = len(seeds)
    member_seeds = seeds * len(recipes)
    tables = [build_member(r, width, seeds[0], task)[1] for r in recipes]

    def make_members(idx: list[int]) -> list[nn.Module]:
        return [build_member(recipes[i // S], width, member_seeds[i], task)[0] for i in idx]

    def hparams(idx: list[int]) -> dict:
        return {"lr_scales": [tables[i // S].lr_scales() for i in idx], "optim": [recipes[i // S].optim for i in idx],
                "eps_scales": [tables[i // S].eps_scales() for i in idx]}

    all_batches = Batches(recipe, task, member_seeds, device)
    if ckpt is not None:
        record = ckpt["record"]
    else:
        group, mode = compiled.split_strategy(check_strategy(strategy or recipe.train.strategy, "`strategy`"))
        pinned = None if group == "auto" else _group_sizes(group, len(member_seeds))
        record = probe_strategy(make_members, hparams, recipe, all_batches, device, pinned=pinned,
                                compile_mode=mode, job_steps=total)
    all_batches.close()
    record["group_size"] = k = _group_sizes(record["strategy"], len(member_seeds))
    record["batch_size"] = all_batches.B  # the batch size used (data.batch_size clamped to the training set)
    if kept:
        record["malloc"] = "kept"  # freed memory stays in the process (widthkit.malloc)
    groups = [list(range(i, min(i + k, len(member_seeds)))) for i in range(0, len(member_seeds), k)]
    done: list[MemberResults] = [MemberResults.from_plain(d) for d in ckpt["done"]] if ckpt is not None else []
    autocast = _autocast_dtype(recipe, device)
    desc = label or f"width {width}"
    threads_before = torch.get_num_threads()
    if record.get("threads"):
        torch.set_num_threads(record["threads"])
    try:
        _train_groups(recipe, task, member_seeds, groups, done, ckpt, ckpt_path, record, make_members, hparams,
                      device, autocast, total, evals, f"{desc} ({len(member_seeds)} members, {record['strategy']})",
                      on_eval, stop_at)
    finally:
        torch.set_num_threads(threads_before)
    joined = MemberResults.concat(done)
    return [joined.take(slice(p * S, (p + 1) * S), [eval_lr(t, r.optim, total) for t in joined.steps])
            for p, r in enumerate(recipes)], record, tables


def _train_groups(recipe, task, seeds, groups, done, ckpt, ckpt_path, record, make_members, hparams, device,
                  autocast, total, evals, desc, on_eval=None, stop_at=None) -> None:
    """Train the groups not yet in ``done`` (appending to it), resuming from ``ckpt``."""
    snaps = snapshots.snapshot_steps(recipe, total)  # each is checkpointed at once: a killed job keeps it
    with bar(desc, total * len(seeds)) as pbar:
        pbar.advance(total * sum(len(r.seeds) for r in done))
        for group in groups[len(done):]:
            gseeds = [seeds[i] for i in group]
            ens = Ensemble(make_members(group), loss=recipe.train.loss, device=device, autocast_dtype=autocast,
                           noise_seeds=[derive_seed(recipe.seed, s, "dropout") for s in gseeds],
                           channels_last=record.get("channels_last", False), **hparams(group))
            if record.get("compile"):
                compiled.enable(ens)
            res = MemberResults(seeds=gseeds)
            batches = Batches(recipe, task, gseeds, device)
            start = 0
            loss_sum = torch.zeros(len(group), device=device)
            acc_sum = torch.zeros(len(group), device=device)
            n_since = 0
            if ckpt is not None and ckpt.get("current") is not None:
                cur = ckpt["current"]
                ens.load_state_dict(cur["ensemble"])
                res, start = MemberResults.from_plain(cur["results"]), cur["step"]
                loss_sum, acc_sum, n_since = cur["loss_sum"].to(device), cur["acc_sum"].to(device), cur["n_since"]
                pbar.advance(start * len(group))
            ckpt = None
            for step in range(start, total + 1):
                took = step in snaps and (not res.snapshot_steps or res.snapshot_steps[-1] != step)
                if took:
                    res.snapshot_steps.append(step)
                    res.snapshots.append(snapshots.take({**ens.state_dict()["params"], **ens.buffers},
                                                        recipe.train.snapshot_dtype))
                if step in evals and (not res.steps or res.steps[-1] != step):
                    outs, tl, ta = evaluate(ens, task, recipe.train.loss, recipe.train.eval_batch_size)
                    res.steps.append(step)
                    res.lr.append(eval_lr(step, recipe.optim, total))
                    denom = max(n_since, 1)
                    res.train_loss.append((loss_sum / denom).cpu().numpy() if n_since else tl * math.nan)
                    res.train_acc.append((acc_sum / denom).cpu().numpy() if n_since else tl * math.nan)
                    res.test_loss.append(tl)
                    res.test_acc.append(ta)
                    res.logits.append(outs.astype(np.float32))
                    loss_sum.zero_(), acc_sum.zero_()
                    n_since = 0
                    if on_eval is not None:
                        on_eval(step, gseeds, res)
                if step == total or step == stop_at:
                    break
                if ckpt_path is not None and (took or recipe.train.checkpoint_every and step > start and
                                              step % recipe.train.checkpoint_every == 0):
                    _save_ckpt(ckpt_path, record, done, {"ensemble": ens.state_dict(), "results": res.to_plain(),
                                                         "step": step,
                                                         "loss_sum": loss_sum, "acc_sum": acc_sum,
                                                         "n_since": n_since})
                x, y = batches(step)
                losses, correct = ens.step(x, y, ens.member_lrs(step, total))
                loss_sum += losses
                acc_sum += correct
                n_since += 1
                pbar.advance(len(group))
            batches.close()
            res.diverged_step = ens.diverged_step.cpu().numpy()
            mark_diverged(res, recipe, task)
            res.state = {k: v.detach().cpu().numpy() for k, v in ens.state_dict()["params"].items()}
            res.state.update({k: v.cpu().numpy() for k, v in ens.buffers.items()})
            done.append(res)
            if ckpt_path is not None and len(done) < len(groups):
                _save_ckpt(ckpt_path, record, done, None)


CKPT_FORMAT = "widthkit-ckpt"


def _save_ckpt(path: Path, record: dict, done: list, current: dict | None) -> None:
    """Write a job checkpoint atomically: plain types and tensors only (loadable with ``weights_only=True``).

    Serialized in memory first, so a full disk surfaces as the atomic writer's one-line "disk full" error
    rather than ``torch.save``'s ``RuntimeError``.
    """
    buf = io.BytesIO()
    torch.save({"format": CKPT_FORMAT, "record": record, "done": [r.to_plain() for r in done],
                "current": current}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict | None:
    """A job checkpoint written by :func:`_save_ckpt`, or None when there is none or it is unusable.

    Read with ``torch.load(weights_only=True)``: a checkpoint is a file in a possibly shared run directory,
    so a pickle asking for any code is refused.  A refused, foreign or damaged file is never deleted: it is
    moved aside to ``<name>.refused`` with a warning, and the job restarts from step 0.
    """
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")  # CPU first: written on any node
        if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
            raise ValueError("not a widthkit checkpoint")
        return ckpt
    except Exception as e:  # noqa: BLE001 - a parser fed arbitrary bytes fails in arbitrary ways
        why = "a pickle that asks for code: refused" if isinstance(e, pickle.UnpicklingError) else \
            str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        aside = path.with_name(path.name + ".refused")
        path.replace(aside)
        warn(f"checkpoint '{path}' is unusable ({why}); moved it to '{aside.name}', its job restarts from step 0")
        return None
