"""Benchmark: the ensemble step with glibc's default malloc vs widthkit's (``widthkit.malloc``), side by side.

    python bench/malloc_speed.py                      # CNN widths 16-64 and MLP widths 256-512, 8 members
    python bench/malloc_speed.py --cases cnn:32 --rounds 5 --no-write

Each measurement is a fresh process (malloc's settings are per process): the engine's vectorized step on all
members (NHWC feature maps for CNNs) at 2 threads, so the only difference is malloc; ``WIDTHKIT_MALLOC=system``
leaves glibc's default.  Rounds alternate the two ways; medians of the per-process step times (after 3 warm-up
steps) and of the minor page faults per step.  Writes "## Malloc" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, publish  # noqa: E402

HEADING = "## Malloc"


def child(family: str, width: int, members: int, steps: int) -> dict:
    """(In a fresh process.)  ms per step and page faults per step of the vectorized engine step."""
    from ensemble_speed import DEVICE, bench_recipe, setup

    from widthkit import malloc
    from widthkit.engine import Ensemble
    from widthkit.ladder import load_recipe_task
    kept = malloc.keep_freed_memory()
    torch.set_num_threads(2)
    recipe = bench_recipe(family, members)
    models, scales, batches = setup(recipe, width, load_recipe_task(recipe))
    ens = Ensemble(models, scales, recipe.optim, recipe.train.loss, DEVICE, channels_last=family == "cnn")
    x, y = batches(0)
    for _ in range(3):
        ens.step(x, y, 1e-3)
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for s in range(1, steps + 1):
        x, y = batches(s)
        ens.step(x, y, 1e-3)
    return {"kept": kept, "ms": 1e3 * (time.perf_counter() - t0) / steps,
            "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / steps}


def measure(case: str, way: str, members: int, steps: int) -> dict:
    family, width = case.split(":")
    env = {**os.environ, "WIDTHKIT_MALLOC": "system" if way == "system" else ""}
    out = subprocess.run([sys.executable, __file__, "--_child", json.dumps([family, int(width), members, steps])],
                         capture_output=True, text=True, check=True, env=env).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["kept"] == (way == "widthkit"), res  # the child really ran with the malloc it was given
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="cnn:16,cnn:32,cnn:64,mlp:256,mlp:512", help="family:width, comma-separated")
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        print(json.dumps(child(*json.loads(a._child))))
        return 0
    rows = []
    for case in a.cases.split(","):
        got = {"system": [], "widthkit": []}
        for _ in range(a.rounds):
            for way in got:
                got[way].append(measure(case, way, a.members, a.steps))
        med = {w: {k: statistics.median(r[k] for r in rs) for k in ("ms", "faults")} for w, rs in got.items()}
        rows.append((case, med))
        print(f"{case}: glibc default {med['system']['ms']:.2f} ms ({med['system']['faults']:.0f} faults/step), "
              f"widthkit {med['widthkit']['ms']:.2f} ms ({med['widthkit']['faults']:.0f} faults/step): "
              f"x{med['system']['ms'] / med['widthkit']['ms']:.2f}", flush=True)
    lines = [f"`python bench/malloc_speed.py --members {a.members} --steps {a.steps} --rounds {a.rounds}` ({machine()}; "
             "the machine was shared with other jobs). One vectorized engine step of all members (NHWC for CNNs, "
             "2 threads) in a fresh process per measurement, glibc's default malloc (`WIDTHKIT_MALLOC=system`) "
             "against widthkit's, alternating; medians of the rounds.", "",
             "| model | width | default ms/step | default page faults/step | widthkit ms/step | "
             "widthkit page faults/step | speed-up |", "|---|---|---|---|---|---|---|"]
    for case, med in rows:
        family, width = case.split(":")
        s, w = med["system"], med["widthkit"]
        lines.append(f"| {family} | {width} | {s['ms']:.2f} | {s['faults']:,.0f} | {w['ms']:.2f} | {w['faults']:,.0f} | "
                     f"**{s['ms'] / w['ms']:.2f}x** |")
    text = "\n".join(lines)
    publish(HEADING, text, not a.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
