"""Benchmark: the ensemble engine vs the plain PyTorch way (a loop over E nn.Modules and optimizers).

    python bench/ensemble_speed.py                 # steps, memory and the full quick-start ladder
    python bench/ensemble_speed.py --ladder-steps 300 --no-write   # quicker look

Three measurements, each with ours and the plain loop interleaved in the same run:
1. One training step of the quick-start MLP (recipes/quickstart.toml: muP, SGD+momentum,
   batch 64 on 8x8 digits) at widths 16..1024 with ``--members`` members, and of the
   Myrtle CNN.  Ours is what the trainer does: the strategy (group size and CPU
   threads) from its measured probe.  The plain way is E ``nn.Module`` s each with its
   own ``torch.optim.SGD`` (same per-layer lr scales), stepped one after another at
   torch's default thread count; it is also timed single-threaded, and the ratio
   against the faster of the two is printed, so the loop gets its best setting too.
2. Peak memory (RSS high-water mark above the process before the models were built,
   in a fresh subprocess per measurement): parameters, optimizer state and activations.
3. The whole quick-start ladder end to end (every width, its seeds, evaluation every
   ``eval_every`` steps): ``train_members`` vs the plain loop, width by width.

Both ways run in one process with the same malloc: by default widthkit's (``widthkit.malloc``, which the
trainer sets on CPU: freed memory stays in the process, so steps do not fault in fresh pages); ``--malloc
system`` leaves glibc's default for both.

Writes the tables under "## Ensemble engine" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import machine, publish  # noqa: E402

from widthkit import malloc  # noqa: E402
from widthkit.engine import Ensemble, lr_at  # noqa: E402
from widthkit.ladder import build_member, load_recipe_task  # noqa: E402
from widthkit.recipe import load_recipe  # noqa: E402
from widthkit.trainer import (Batches, _group_sizes, eval_steps, probe_strategy, total_steps,  # noqa: E402
                              train_members)

HEADING = "## Ensemble engine"
GPU_HEADING = "## Ensemble engine on GPU"
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
DEFAULT_THREADS = torch.get_num_threads()
DEVICE = torch.device("cpu")
AUTOCAST: torch.dtype | None = None  # --bf16: both ways run under torch.autocast(bfloat16)


def _autocast():
    return torch.autocast(DEVICE.type, dtype=AUTOCAST) if AUTOCAST else contextlib.nullcontext()


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def bench_recipe(family: str, members: int, steps: int | None = None):
    sets = [f"train.seeds={members}"]
    if family == "cnn":
        sets += ["model.family=cnn", "model.depth=5", "model.activation=relu"]
    if steps:
        sets += [f"train.steps={steps}"]
    return load_recipe(QUICKSTART, overrides=sets)


# ----------------------------------------------------------------- the two ways
class Plain:
    """The plain way: E modules, each with its own torch.optim.SGD, stepped in a Python loop."""

    def __init__(self, models, scales, recipe):
        self.models = models
        o = recipe.optim
        self.opts = [torch.optim.SGD([{"params": [p], "lr": o.lr * scales.get(n, 1.0), "scale": scales.get(n, 1.0)}
                                      for n, p in m.named_parameters()], lr=o.lr, momentum=o.momentum,
                                     nesterov=o.nesterov, weight_decay=o.weight_decay) for m in models]

    def step(self, x, y, lr):
        for m, opt, xi, yi in zip(self.models, self.opts, x, y):
            for g in opt.param_groups:
                g["lr"] = lr * g["scale"]
            m.train()
            opt.zero_grad(set_to_none=True)
            with _autocast():
                out = m(xi)
            F.cross_entropy(out.float(), yi).backward()
            opt.step()


class Ours:
    """The engine as the trainer runs it: members grouped and threaded as its probe chose."""

    def __init__(self, models, scales, recipe, record):
        k = _group_sizes(record["strategy"], len(models))
        self.groups = [list(range(i, min(i + k, len(models)))) for i in range(0, len(models), k)]
        self.ens = [Ensemble([models[i] for i in g], scales, recipe.optim, recipe.train.loss, DEVICE, AUTOCAST,
                             channels_last=record.get("channels_last", False)) for g in self.groups]
        self.threads = record.get("threads", DEFAULT_THREADS)

    def step(self, x, y, lr):
        for g, ens in zip(self.groups, self.ens):
            ens.step(x[g[0]:g[-1] + 1], y[g[0]:g[-1] + 1], lr)


def setup(recipe, width, task):
    seeds = recipe.train.seeds
    built = [build_member(recipe, width, s, task) for s in seeds]
    models = [m.to(DEVICE) for m, _ in built]
    scales = built[0][1].lr_scales()
    batches = Batches(recipe, task, seeds, DEVICE)
    return models, scales, batches


def choose(recipe, width, task, models, scales, batches) -> dict:
    return probe_strategy(lambda idx: [copy.deepcopy(models[i]) for i in idx],
                          lambda idx: {"lr_scales": scales, "optim": recipe.optim}, recipe, batches,
                          DEVICE)


def time_steps(way, batches, steps: int, threads: int, start: int = 0) -> float:
    torch.set_num_threads(threads)
    try:
        x, y = batches(start)
        way.step(x, y, 1e-3)  # warm-up
        _sync()
        t0 = time.perf_counter()
        for s in range(start + 1, start + 1 + steps):
            x, y = batches(s)
            way.step(x, y, 1e-3)
        _sync()
        return (time.perf_counter() - t0) / steps
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


def step_rows(family, widths, members, steps, rounds) -> list[dict]:
    rows = []
    for w in widths:
        recipe = bench_recipe(family, members)
        task = load_recipe_task(recipe)
        models, scales, batches = setup(recipe, w, task)
        record = choose(recipe, w, task, models, scales, batches)
        ours = Ours([copy.deepcopy(m) for m in models], scales, recipe, record)
        plain = Plain([copy.deepcopy(m) for m in models], scales, recipe)
        single = Plain([copy.deepcopy(models[0])], scales, recipe)  # one model: E x its step is the ideal
        t = {"ours": [], "plain": [], "plain1": [], "single": []}
        for r in range(rounds):  # interleaved, so load changes hit both alike
            t["ours"].append(time_steps(ours, batches, steps, ours.threads, r * (steps + 1)))
            t["plain"].append(time_steps(plain, batches, steps, DEFAULT_THREADS, r * (steps + 1)))
            t["plain1"].append(time_steps(plain, batches, steps, 1, r * (steps + 1)) if DEVICE.type == "cpu"
                               else t["plain"][-1])  # CPU threads do not matter on a GPU
            t["single"].append(time_steps(single, batches, steps, DEFAULT_THREADS, r * (steps + 1)))
        med = {k: statistics.median(v) for k, v in t.items()}
        row = {"family": family, "width": w, "members": members, "strategy": record["strategy"],
               "channels_last": record.get("channels_last", False),
               "threads": record.get("threads"), "ours_ms": 1e3 * med["ours"], "plain_ms": 1e3 * med["plain"],
               "plain1_ms": 1e3 * med["plain1"], "speedup": med["plain"] / med["ours"],
               "speedup_best_plain": min(med["plain"], med["plain1"]) / med["ours"],
               "throughput": batches.B * members / med["ours"], "vs_single": med["ours"] / (members * med["single"])}
        print(f"{family} width {w:5d}: ours {row['ours_ms']:8.2f} ms ({row['strategy']}, {row['threads']} thr) | "
              f"plain {row['plain_ms']:8.2f} ms, 1 thread {row['plain1_ms']:8.2f} ms | "
              f"x{row['speedup']:.1f} (x{row['speedup_best_plain']:.1f} vs best plain) | ours / (E x single) "
              f"{row['vs_single']:.2f}", flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------ memory
def _rss_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(family, width, members, way, strategy, threads, channels_last) -> float:
    """(In a fresh process.)  Peak RSS in MiB above the process before the models were built."""
    recipe = bench_recipe(family, members)
    task = load_recipe_task(recipe)
    Batches(recipe, task, recipe.train.seeds, torch.device("cpu"))(0)
    tiny = torch.nn.Linear(2, 2)  # torch.optim's first step imports ~140 MiB of modules (sympy...): not the loop's
    warm = torch.optim.SGD(tiny.parameters(), lr=0.1)
    tiny(torch.zeros(1, 2)).sum().backward()
    warm.step()
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    base = _rss_kb("VmRSS")
    models, scales, batches = setup(recipe, width, task)
    runner = Plain(models, scales, recipe) if way == "plain" else \
        Ours(models, scales, recipe, {"strategy": strategy, "threads": threads, "channels_last": channels_last})
    time_steps(runner, batches, 3, threads)
    return (_rss_kb("VmHWM") - base) / 1024


def memory_rows(step_results) -> list[dict]:
    rows = []
    for r in step_results:
        peak = {}
        for way in ("ours", "plain"):
            out = subprocess.run([sys.executable, __file__, "--_memory", json.dumps(
                [r["family"], r["width"], r["members"], way, r["strategy"], r["threads"] or DEFAULT_THREADS,
                 r["channels_last"]])],
                capture_output=True, text=True, check=True, env=os.environ)
            peak[way] = float(out.stdout.strip().splitlines()[-1])
        rows.append({"family": r["family"], "width": r["width"], "strategy": r["strategy"],
                     "ours_mb": peak["ours"], "plain_mb": peak["plain"], "ratio": peak["ours"] / peak["plain"]})
        print(f"{r['family']} width {r['width']:5d}: peak memory ours {peak['ours']:7.1f} MiB, plain "
              f"{peak['plain']:7.1f} MiB (x{rows[-1]['ratio']:.2f})", flush=True)
    return rows


# ------------------------------------------------------------------------ ladder
def plain_train(recipe, width, task) -> None:
    """Train every seed of one width the plain way, with the same schedule, data and evaluation."""
    total = total_steps(recipe, task)
    evals = set(eval_steps(recipe, total))
    for s in recipe.train.seeds:
        model, table = build_member(recipe, width, s, task)
        plain = Plain([model], table.lr_scales(), recipe)
        batches = Batches(recipe, task, [s], torch.device("cpu"))
        for step in range(total + 1):
            if step in evals:
                model.eval()
                with torch.no_grad():
                    out = model(task.x_test)
                    F.cross_entropy(out, task.y_test), (out.argmax(-1) == task.y_test).float().mean()
            if step == total:
                break
            x, y = batches(step)
            plain.step(x, y, lr_at(step, recipe.optim, total))


def ladder_rows(steps: int | None) -> list[dict]:
    recipe = load_recipe(QUICKSTART, overrides=[f"train.steps={steps}"] if steps else [])
    task = load_recipe_task(recipe)
    rows = []
    for w in recipe.model.widths:
        t0 = time.perf_counter()
        _, record, _ = train_members(recipe, w, recipe.train.seeds, task, build_member=build_member)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain_train(recipe, w, task)
        plain = time.perf_counter() - t0
        rows.append({"width": w, "strategy": record["strategy"], "ours_s": ours, "plain_s": plain})
        print(f"ladder width {w:5d}: ours {ours:6.1f} s ({record['strategy']}) | plain {plain:6.1f} s | "
              f"x{plain / ours:.1f}", flush=True)
    return rows


# -------------------------------------------------------------------------- main
def markdown(args, steps, mem, ladder) -> str:
    flags = f" --device {DEVICE.type}" + (" --bf16" if AUTOCAST else "") if DEVICE.type != "cpu" else ""
    flags += " --malloc system" if args.malloc == "system" else ""
    out = [f"`python bench/ensemble_speed.py --members {args.members} --steps {args.steps} --rounds {args.rounds}"
           f"{flags}` ({machine()}; the machine was shared with other jobs). Per-step times are medians of {args.rounds} interleaved rounds of {args.steps} "
           "steps; ours uses the strategy and thread count the trainer's probe picks; \"plain\" is E `nn.Module`s "
           f"with their own `torch.optim.SGD` at torch's default {DEFAULT_THREADS} threads, \"plain 1t\" the same "
           "loop single-threaded (CPU only); \"ours / (E x single)\" compares ours with E times one model's step."
           + (" Both ways run under bf16 autocast." if AUTOCAST else "")
           + (" Both ways run with glibc's default malloc (`--malloc system`)." if args.malloc == "system" else
              " Both ways run with the malloc setting the trainer makes on CPU (`widthkit.malloc`: freed memory "
              "stays in the process)."), "",
           "| model | width | strategy (threads) | ours ms/step | plain ms/step | plain 1t ms/step | "
           "speed-up vs plain | vs best plain | ours / (E x single) | samples x members / s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in steps:
        layout = ", NHWC" if r["channels_last"] else ""
        out.append(f"| {r['family']} | {r['width']} | {r['strategy']}{layout} ({r['threads']}) | {r['ours_ms']:.2f} | "
                   f"{r['plain_ms']:.2f} | {r['plain1_ms']:.2f} | **{r['speedup']:.1f}x** | "
                   f"{r['speedup_best_plain']:.1f}x | {r['vs_single']:.2f} | {r['throughput']:,.0f} |")
    if mem:
        out += ["", "Peak memory (RSS high-water mark above the process before the models were built: parameters, "
                "optimizer state, activations), one fresh process per cell:", "",
                "| model | width | strategy | ours MiB | plain MiB | ours / plain |", "|---|---|---|---|---|---|"]
        out[-2:-2] = ["Vectorized convs keep every member's activations at once (the grouped-convolution plan "
                      "keeps no batched copy, unlike vmap's conv rule); `train.memory_budget_mb` caps the group "
                      "size by the measured activation memory "
                      "(`tests/test_trainer.py::test_memory_budget_caps_the_group_size`).", ""]
        out += [f"| {r['family']} | {r['width']} | {r['strategy']} | {r['ours_mb']:.1f} | {r['plain_mb']:.1f} | "
                f"{r['ratio']:.2f} |" for r in mem]
    if ladder:
        ours, plain = sum(r["ours_s"] for r in ladder), sum(r["plain_s"] for r in ladder)
        out += ["", f"Whole quick-start ladder ({len(ladder)} widths x 4 seeds, "
                f"{args.ladder_steps or 'all 1500'} steps, evaluation included), width by width:", "",
                "| width | strategy | ours (s) | plain (s) | speed-up |", "|---|---|---|---|---|"]
        out += [f"| {r['width']} | {r['strategy']} | {r['ours_s']:.1f} | {r['plain_s']:.1f} | "
                f"{r['plain_s'] / r['ours_s']:.1f}x |" for r in ladder]
        out.append(f"| **all** | | **{ours:.0f}** | **{plain:.0f}** | **{plain / ours:.1f}x** |")
        wide = ladder[-1]
        out += ["", f"The widest width is compute-bound (the same FLOPs either way): it takes {wide['plain_s']:.0f} s "
                f"the plain way and {wide['ours_s']:.0f} s ours, so even with every narrower width free the "
                f"end-to-end ratio could not exceed {plain / wide['ours_s']:.1f}x on this machine."]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--widths", default="16,32,64,128,256,512,1024", help="MLP widths")
    ap.add_argument("--cnn-widths", default="16,32,64,128", help="Myrtle CNN widths ('' to skip)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ladder-steps", type=int, default=0, help="steps of the end-to-end ladder (0: the recipe's)")
    ap.add_argument("--no-ladder", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on cuda: step times only)")
    ap.add_argument("--bf16", action="store_true", help="both ways under bfloat16 autocast (GPU)")
    ap.add_argument("--malloc", choices=["kept", "system"], default="kept",
                    help="both ways with widthkit's malloc setting (the trainer's) or glibc's default")
    ap.add_argument("--_memory", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    global DEVICE, AUTOCAST
    DEVICE, AUTOCAST = torch.device(a.device), torch.bfloat16 if a.bf16 else None
    if a.malloc == "system":
        os.environ["WIDTHKIT_MALLOC"] = "system"  # the trainer (ladder) and the memory subprocesses too
    malloc.keep_freed_memory()
    if DEVICE.type != "cpu":
        a.no_memory = a.no_ladder = True  # RSS and the CPU ladder say nothing about a GPU
    if a._memory:
        print(measure_memory(*json.loads(a._memory)))
        return 0
    widths = {"mlp": [int(w) for w in a.widths.split(",") if w],
              "cnn": [int(w) for w in a.cnn_widths.split(",") if w]}
    steps = [r for fam, ws in widths.items() for r in step_rows(fam, ws, a.members, a.steps, a.rounds)]
    mem = [] if a.no_memory else memory_rows(steps)
    ladder = [] if a.no_ladder else ladder_rows(a.ladder_steps or None)
    text = markdown(a, steps, mem, ladder)
    publish(HEADING if DEVICE.type == "cpu" else GPU_HEADING, text, not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
