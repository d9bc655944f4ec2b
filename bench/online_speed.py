"""Benchmark: online data at compute speed (issue 16), before and after, side by side in one run.

    python bench/online_speed.py                       # generator + recipes/mnist1d-online.toml widths 16-64
    python bench/online_speed.py --steps 100 --no-write  # quicker look

1. Samples per second of mnist1d's own per-sample ``transform`` (what the online sampler called before) and of
   the batched torch transform behind ``task.sample`` now, interleaved rounds, both single-threaded.
2. Whole ``recipes/mnist1d-online.toml`` jobs (``train_members``: probe, training, evaluation) at widths 16-64,
   ``--steps`` steps each, as the issue measured them (``data.shared_batches=true``; ``--no-shared`` for one
   stream per member).  "Before" draws with mnist1d's per-sample transform inline in the step loop, as the
   sampler did; "after" is the shipped sampler with background prefetch.  Reported per job: wall time, the
   time the step loop waited for data, and the generation time spent (in the prefetch thread, "after"); the
   median job of ``--rounds`` interleaved rounds.  A third way feeds one batch drawn in advance at every step
   (data for free), so 1 - free / after is all that data costs the after job.

Writes the tables under "## Online data" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import machine, update_results  # noqa: E402

import widthkit.trainer as trainer  # noqa: E402
from widthkit.build import build_member, load_recipe_task  # noqa: E402
from widthkit.data.mnist1d import _mnist1d_fixed_default, _mnist1d_raw  # noqa: E402
from widthkit.data.source import numpy_seed  # noqa: E402
from widthkit.recipe import load_recipe  # noqa: E402

HEADING = "## Online data"
RECIPE = ROOT / "recipes" / "mnist1d-online.toml"


def per_sample_sampler():
    """The sampler as it was: mnist1d's per-sample transform, seeded through numpy's global RNG."""
    from mnist1d.data import get_dataset_args
    args, d = get_dataset_args(), _mnist1d_fixed_default()

    def sampler(n: int, generator: torch.Generator):
        y = torch.randint(10, (n,), generator=generator)
        with numpy_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=generator))):
            raw = _mnist1d_raw(y.numpy(), args)
        return torch.as_tensor((raw - d["mean"]) / d["std"], dtype=torch.float32).reshape(n, 1, -1), y
    return sampler


def generator_rows(task, rounds: int) -> list[dict]:
    old = per_sample_sampler()
    ways = {"per-sample (mnist1d transform)": (old, 256), "batched, batch 128": (task.sample, 128),
            "batched, batch 1024": (task.sample, 1024)}
    rates = {k: [] for k in ways}
    torch.set_num_threads(1)
    for r in range(rounds):
        for name, (fn, n) in ways.items():
            g = torch.Generator().manual_seed(r)
            reps = 1 if "per-sample" in name else max(1, 20000 // n)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(n, g)
            rates[name].append(reps * n / (time.perf_counter() - t0))
    torch.set_num_threads(DEFAULT_THREADS)
    base = statistics.median(rates["per-sample (mnist1d transform)"])
    rows = [{"way": k, "rate": statistics.median(v), "ratio": statistics.median(v) / base} for k, v in rates.items()]
    for r in rows:
        print(f"{r['way']:34s} {r['rate']:12,.0f} samples/s  x{r['ratio']:.0f}", flush=True)
    return rows


CLOCKS = dict.fromkeys(("waited", "generated", "probe", "evaluate"), 0.0)  # seconds, per job


@contextlib.contextmanager
def clock(total: str):
    """Add the time spent inside the block to ``CLOCKS[total]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        CLOCKS[total] += time.perf_counter() - t0


def clocked(fn, total: str):
    def run(*a, **k):
        with clock(total):
            return fn(*a, **k)
    return run


class TimedBatches(trainer.Batches):
    """Batches that add up the step loop's wait for data and the generation time (in whichever thread)."""

    prefetch = 2

    def __init__(self, *a, **k):
        super().__init__(*a, prefetch=type(self).prefetch, **k)

    def _draw(self, step):
        with clock("generated"):
            return super()._draw(step)

    def __call__(self, step):
        with clock("waited"):
            return super().__call__(step)


def fixed_sampler(task):
    """A sampler that hands back one batch drawn in advance: the job's time with data for free."""
    batch = {}

    def sampler(n: int, generator: torch.Generator):
        if n not in batch:
            batch[n] = task.sample(n, torch.Generator().manual_seed(0))
        return batch[n]
    return sampler


def job(recipe, task, width: int, way: str) -> dict:
    """One whole job the ``way`` ("before", "after" or "free" data); its wall time and what went to data, the
    strategy probe and evaluation (seconds)."""
    TimedBatches.prefetch = 2 if way == "after" else 0
    CLOCKS.update(dict.fromkeys(CLOCKS, 0.0))
    if way != "after":
        task = dataclasses.replace(task, sampler=per_sample_sampler() if way == "before" else fixed_sampler(task))
    patched = {"Batches": TimedBatches, "probe_strategy": clocked(probe_strategy, "probe"),
               "evaluate": clocked(evaluate, "evaluate")}
    for name, fn in patched.items():  # the trainer calls these through its module names
        setattr(trainer, name, fn)
    try:
        t0 = time.perf_counter()
        _, record, _ = trainer.train_members(recipe, width, recipe.train.seeds, task, build_member=build_member)
        wall = time.perf_counter() - t0
    finally:
        trainer.Batches, trainer.probe_strategy, trainer.evaluate = Batches, probe_strategy, evaluate
    return {"wall": wall, "wait": CLOCKS["waited"], "gen": CLOCKS["generated"], "probe": CLOCKS["probe"],
            "eval": CLOCKS["evaluate"], "strategy": record["strategy"], "channels_last": record.get("channels_last"),
            "threads": record.get("threads")}


def recipe_rows(widths, steps: int, shared: bool, rounds: int) -> list[dict]:
    recipe = load_recipe(RECIPE, overrides=[f"train.steps={steps}", f"train.eval_every={max(steps // 10, 1)}",
                                            f"data.shared_batches={str(shared).lower()}"])
    task = load_recipe_task(recipe)
    rows = []
    for w in widths:
        runs = {"before": [], "after": [], "free": []}
        for _ in range(rounds):  # interleaved: a busy moment of the shared machine hits both ways alike
            for way in runs:
                runs[way].append(job(recipe, task, w, way))
        med = {way: sorted(v, key=lambda r: r["wall"])[len(v) // 2] for way, v in runs.items()}  # the median job
        b, a = med["before"], med["after"]
        rows.append({"width": w, "before": b, "after": a, "free": med["free"], "speedup": b["wall"] / a["wall"],
                     "data_cost": 1 - med["free"]["wall"] / a["wall"],
                     "after_walls": [r["wall"] for r in runs["after"]], "before_walls": [r["wall"] for r in runs["before"]]})
        print(f"width {w:4d}: before {b['wall']:6.1f} s (data wait {b['wait'] / b['wall']:.0%}) | after "
              f"{a['wall']:6.1f} s (data wait {a['wait'] / a['wall']:.1%}, generation {a['gen'] / a['wall']:.1%} "
              f"of the job, in the background; probe {a['probe']:.1f} s, evaluation {a['eval']:.1f} s, steps "
              f"{1e3 * steps_s(a) / steps:.1f} ms/step) | free data {med['free']['wall']:6.1f} s "
              f"(data costs {rows[-1]['data_cost']:.1%} of the after job) | x{rows[-1]['speedup']:.1f}  (all rounds: before "
              f"{rows[-1]['before_walls']}, after {rows[-1]['after_walls']})", flush=True)
    return rows


def steps_s(run: dict) -> float:
    """Seconds of a job outside its probe and evaluations: the training steps (data waits included)."""
    return run["wall"] - run["probe"] - run["eval"]


def markdown(a, gen, rows) -> str:
    out = [f"`python bench/online_speed.py --steps {a.steps} --rounds {a.rounds}{' --no-shared' if a.no_shared else ''}` "
           f"({machine()}; the machine was shared with other jobs, so absolute times vary).", "",
           "mnist1d samples per second, median of interleaved rounds, single-threaded:", "",
           "| generator | samples / s | vs per-sample |", "|---|---|---|"]
    out += [f"| {r['way']} | {r['rate']:,.0f} | **{r['ratio']:.0f}x** |" for r in gen]
    out += ["", f"`recipes/mnist1d-online.toml` jobs ({a.steps} steps x 4 seeds, evaluation every {max(a.steps // 10, 1)}"
            f" steps, shared_batches={'false' if a.no_shared else 'true'}; the median of {a.rounds} interleaved "
            "rounds): before = mnist1d's per-sample transform "
            "drawn inline in the step loop (the old sampler); after = the batched sampler with background prefetch. "
            "\"Data wait\" is the step loop's time blocked on data, \"generation\" the time spent making batches "
            "(in the prefetch thread, overlapping the steps).", "",
            "\"Probe + eval\" is the after job's strategy probe and its evaluations; \"steps\" the rest of it "
            "(building the members, the training steps, data waits included) per step.  \"Free data\" is the same "
            "job fed one batch drawn in advance at every step, and \"data cost\" = 1 - free / after: all that "
            "generating the data costs the job, wait and competition for the 2 cores included.",
            "", "| width | strategy (threads) | before (s) | before data wait | after (s) | after data wait | "
            "after generation | after probe + eval (s) | after steps (ms/step) | free data (s) | data cost | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, af = r["before"], r["after"]
        layout = ", NHWC" if af["channels_last"] else ""
        out.append(f"| {r['width']} | {af['strategy']}{layout} ({af['threads']}) | {b['wall']:.1f} | "
                   f"{b['wait'] / b['wall']:.0%} | {af['wall']:.1f} | {af['wait'] / af['wall']:.1%} | "
                   f"{af['gen'] / af['wall']:.1%} | {af['probe']:.1f} + {af['eval']:.1f} | "
                   f"{1e3 * steps_s(af) / a.steps:.1f} | {r['free']['wall']:.1f} | {r['data_cost']:.1%} | "
                   f"**{r['speedup']:.1f}x** |")
    return "\n".join(out)


Batches, probe_strategy, evaluate = trainer.Batches, trainer.probe_strategy, trainer.evaluate
DEFAULT_THREADS = torch.get_num_threads()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--steps", type=int, default=300, help="training steps per job")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (generator and jobs)")
    ap.add_argument("--no-shared", action="store_true", help="one data stream per member")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    a = ap.parse_args(argv)
    recipe = load_recipe(RECIPE)
    gen = generator_rows(load_recipe_task(recipe), a.rounds)
    rows = recipe_rows([int(w) for w in a.widths.split(",") if w], a.steps, not a.no_shared, a.rounds)
    text = markdown(a, gen, rows)
    print("\n" + text)
    if not a.no_write:
        update_results(HEADING, text)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
