"""Packed hyper-parameter sweep vs the same sweep as separate jobs, side by side in one run.

A learning-rate sweep (``--lrs`` values x ``--seeds`` seeds) of an MLP on digits is trained twice per
width with :func:`widthkit.train_ladder`, end to end (probe, training, evaluation, shards): packed (one job
per width: lr x seeds members in one stacked group, the default) and unpacked (``pack=False``: one job per
grid point, as widthkit did before).  A short untimed run of each first pays the imports and first
calls.  Rounds alternate the two so a busy moment hits both; the best round of each counts.  The two
runs' final weights are compared, so the speed-up is for the same result.

    python bench/hp_sweep.py [--widths 8 16 32 64] [--lrs 8] [--seeds 4] [--steps 1000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine, update_results
from widthkit.ladder import train_ladder
from widthkit.progress import quiet


def recipe(width: int, lrs: list[float], seeds: int, steps: int) -> dict:
    return {"name": "hp-sweep-bench", "model": {"family": "mlp", "widths": [width], "depth": 2},
            "param": {"kind": "mup", "base_width": 16}, "data": {"task": "digits", "batch_size": 64},
            "train": {"steps": steps, "seeds": seeds, "eval_every": 100, "checkpoint_every": 0},
            "optim": {"name": "adam", "lr": lrs}}


def timed(raw: dict, out: Path, pack: bool):
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run = train_ladder(raw, out, pack=pack)
    return time.perf_counter() - t0, run


def max_weight_diff(a, b, width: int, seeds: int, points: range) -> float:
    """Largest difference of any final weight between the two runs, over grid ``points`` and seeds."""
    diff = 0.0
    for i in points:
        for s in range(seeds):
            sa, sb = a.select(i).member_state(width, s), b.select(i).member_state(width, s)
            diff = max(diff, max(float((sa[k] - sb[k]).abs().max()) for k in sa))
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--lrs", type=int, default=8, help="learning rates, a factor 2 apart from 2^-12")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md alone")
    a = ap.parse_args()
    lrs = [2.0 ** (k - 12) for k in range(a.lrs)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, quiet():
        for pack in (True, False):  # warm-up: imports, data loading and first calls land on neither side
            timed(recipe(a.widths[0], lrs, a.seeds, 10), Path(tmp) / "warm-up", pack)
        for w in a.widths:
            raw = recipe(w, lrs, a.seeds, a.steps)
            best = {True: np.inf, False: np.inf}
            runs = {}
            for _ in range(a.rounds):
                for pack in (True, False):
                    t, runs[pack] = timed(raw, Path(tmp) / f"w{w}-{pack}", pack)
                    best[pack] = min(best[pack], t)
            strategy = next(iter(runs[True].index["jobs"].values()))["strategy"]["strategy"]
            low = max_weight_diff(runs[True], runs[False], w, a.seeds, range(len(lrs) // 2))
            diff = max_weight_diff(runs[True], runs[False], w, a.seeds, range(len(lrs)))
            rows.append((w, strategy, best[True], best[False], best[False] / best[True], low, diff))
            print(f"width {w}: packed {best[True]:.1f}s ({strategy}), separate {best[False]:.1f}s, "
                  f"speed-up {best[False] / best[True]:.1f}x, max weight difference {low:.1e} (lower half of "
                  f"the lrs), {diff:.1e} (all)", flush=True)
    total = (sum(r[2] for r in rows), sum(r[3] for r in rows))
    worst = max(r[6] for r in rows)
    agreement = ("a packed member's final weights equal, bit for bit, those it gets in its own job (last two "
                 "columns: per-member hyper-parameters are kept in double precision and rounded once, as a job's "
                 "python floats are)." if worst == 0 else
                 f"their final weights differ by float rounding, at most {worst:.0e} (last two columns).")
    table = "\n".join(f"| {w} | {st} | {p:.1f} | {s:.1f} | **{r:.1f}x** | {lo:.0e} | {d:.0e} |"
                      for w, st, p, s, r, lo, d in rows)
    section = (
        f"`python bench/hp_sweep.py --widths {' '.join(map(str, a.widths))} --lrs {a.lrs} --seeds {a.seeds} "
        f"--steps {a.steps} --rounds {a.rounds}` ({machine()}; the 2-core machine was shared with other jobs, "
        "runs held a shared lock so no other benchmark ran at the same time).  A muP MLP on digits, Adam, "
        f"{a.lrs} learning rates x {a.seeds} seeds, {a.steps} steps, trained end to end by `train_ladder` "
        "(probe, training, evaluation every 100 steps, shards): packed into one job per width vs one job per "
        "grid point (`pack=False`); best of the interleaved rounds, after an untimed warm-up run of each.  Both "
        "train the same members: " + agreement + "\n\n"
        "| width | packed strategy | packed (s) | separate jobs (s) | speed-up | max weight diff., lower half of "
        "the lrs | max weight diff., all lrs |\n"
        "|---|---|---|---|---|---|---|\n" + table +
        f"\n| **all** | | **{total[0]:.1f}** | **{total[1]:.1f}** | **{total[1] / total[0]:.1f}x** | | |")
    print(section)
    if not a.no_record:
        update_results("## Packed hyper-parameter sweeps", section)


if __name__ == "__main__":
    main()
