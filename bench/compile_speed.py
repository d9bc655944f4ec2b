"""Benchmark: the compiled training step (``widthkit.compiled``) against the eager one, side by side.

    python bench/compile_speed.py                  # quick-start MLP widths 16, 128 (8 members), conv1d 64 (4)
    python bench/compile_speed.py --no-write
    python bench/compile_speed.py --cold            # compile with an empty inductor cache (a fresh install)

For each model: eager and compiled per-step times (median of interleaved rounds, at the thread count the
strategy probe picks), the compile time (first calls; inductor's on-disk cache as found, or empty with
``--cold``), and the number of steps after which compiling pays: ``compile_s / (eager_s - compiled_s)``.
Also checks that the two give the same losses.  Writes the table under "## Compiled step" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import machine, publish  # noqa: E402

from widthkit import compiled  # noqa: E402
from widthkit.build import build_member, load_recipe_task  # noqa: E402
from widthkit.engine import Ensemble  # noqa: E402
from widthkit.recipe import load_recipe  # noqa: E402
from widthkit.trainer import Batches, probe_strategy  # noqa: E402

HEADING = "## Compiled step"
CASES = {"mlp": ("quickstart", [], 8), "conv1d": (str(ROOT / "recipes" / "mnist1d-online.toml"), [], 4)}


def timed(ens, batches, steps: int, start: int) -> float:
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        x, y = batches(s)
        ens.step(x, y, 1e-3)
    return (time.perf_counter() - t0) / steps


def row(family: str, width: int, steps: int, rounds: int) -> dict:
    spec, sets, members = CASES[family]
    recipe = load_recipe(spec, overrides=sets + [f"train.seeds={members}"])
    task = load_recipe_task(recipe)
    seeds = recipe.train.seeds
    built = [build_member(recipe, width, s, task) for s in seeds]
    scales = built[0][1].lr_scales()
    batches = Batches(recipe, task, seeds, torch.device("cpu"))
    record = probe_strategy(lambda idx: [copy.deepcopy(built[i][0]) for i in idx],
                            lambda idx: {"lr_scales": scales, "optim": recipe.optim}, recipe, batches,
                            torch.device("cpu"), compile_mode="eager")
    torch.set_num_threads(record.get("threads") or torch.get_num_threads())
    eager, comp = (Ensemble([copy.deepcopy(m) for m, _ in built], scales, recipe.optim, recipe.train.loss,
                            channels_last=record.get("channels_last", False)) for _ in range(2))
    x, y = batches(0)
    compiled.enable(comp)
    t0 = time.perf_counter()
    same = [torch.allclose(comp.step(x, y, 1e-3)[0], eager.step(x, y, 1e-3)[0], rtol=1e-4, atol=1e-5)
            for _ in range(2)]  # the first compiled calls compile
    compile_s = time.perf_counter() - t0
    t = {"eager": [], "compiled": []}
    for r in range(rounds):
        t["eager"].append(timed(eager, batches, steps, 1 + r * steps))
        t["compiled"].append(timed(comp, batches, steps, 1 + r * steps))
    e, c = (statistics.median(t[k]) for k in ("eager", "compiled"))
    out = {"family": family, "width": width, "members": members, "threads": record.get("threads"), "eager_ms": e * 1e3,
           "compiled_ms": c * 1e3, "compile_s": compile_s, "same": all(same),
           "break_even": compile_s / (e - c) if c < e else float("inf")}
    print(f"{family} width {width}: eager {out['eager_ms']:.2f} ms, compiled {out['compiled_ms']:.2f} ms, compile "
          f"{compile_s:.1f} s, pays after {out['break_even']:,.0f} steps, same losses: {out['same']}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="mlp:16,mlp:128,conv1d:64")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cold", action="store_true", help="compile into an empty inductor cache")
    a = ap.parse_args(argv)
    cache = tempfile.TemporaryDirectory(prefix="widthkit-inductor-") if a.cold else None  # removed at exit
    if cache is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    where = machine()  # before the probe's thread count is applied
    rows = [row(c.split(":")[0], int(c.split(":")[1]), a.steps, a.rounds) for c in a.cases.split(",")]
    text = "\n".join([
        f"`python bench/compile_speed.py --cases {a.cases} --steps {a.steps} --rounds {a.rounds}"
        f"{' --cold' if a.cold else ''}` ({where}; the machine was shared with other jobs). The whole step (forward, "
        "loss, divergence bookkeeping, backward, optimizer update) is one compiled graph. Median of interleaved "
        "rounds; compile time " + ("with an empty inductor cache (as after a fresh install)" if a.cold else
                                   "as found (inductor's on-disk cache may be warm)") + "; \"pays after\" = compile time / time saved per step. The strategy probe "
        "compiles only when a job is that long (`widthkit.compiled.pays`).", "",
        "| model | width | members | threads | eager ms/step | compiled ms/step | speed-up | compile (s) | "
        "pays after (steps) | same losses |", "|---|---|---|---|---|---|---|---|---|---|"]
        + [f"| {r['family']} | {r['width']} | {r['members']} | {r['threads']} | {r['eager_ms']:.2f} | "
           f"{r['compiled_ms']:.2f} | {r['eager_ms'] / r['compiled_ms']:.2f}x | {r['compile_s']:.1f} | "
           f"{r['break_even']:,.0f} | {r['same']} |" for r in rows])
    publish(HEADING, text, not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
