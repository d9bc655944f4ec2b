"""Benchmark: online data at compute speed (issue 16), today's code and ours, side by side in one run.

    python bench/online_speed.py --lock /tmp/widthkit-heavy.lock   # generator + mnist1d-online widths 16-64
    python bench/online_speed.py --steps 100 --rounds 2 --today-rounds 0 --no-write  # a quick look at ours

1. Samples per second of mnist1d's own per-sample ``transform`` (what the online sampler called before) and of
   the batched torch transform behind ``task.sample`` now, interleaved rounds, both single-threaded.
2. Whole ``recipes/mnist1d-online.toml`` jobs (``train_members``: probe, training, evaluation) at widths 16-64,
   ``--steps`` steps each, as the issue measured them (``data.shared_batches=true``; ``--no-shared`` for one
   stream per member).  "Today" is the code as it was when issue 16 was filed (revision ``--today``, checked
   out with ``git archive`` into a temporary folder), "now" this tree's; each job runs in a fresh process with
   ``PYTHONPATH`` on its tree and is timed inside it around ``train_members`` (the task is built before).  For
   "now" also: the time the step loop waited for data, the time spent making batches (in the prefetch thread),
   the strategy probe and the evaluations.  A third way ("free") feeds the now job one chunk of batches drawn in
   advance at every step, so 1 - free / now is all that data costs the job; it runs the probe too, but trains
   with the now job's choice (strategy, threads, layout), so the two differ in their data only.  ``--rounds``
   interleaved rounds of now and free jobs, today's (long) jobs in the first ``--today-rounds``; medians.

Writes the tables under "## Online data" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from common import machine, publish  # noqa: E402  (bench/ is the script's folder)

HEADING = "## Online data"
RECIPE = ROOT / "recipes" / "mnist1d-online.toml"
TODAY = "260584e"  # the parent of issue 16's first commit: the code the issue measured
WAYS = ("today", "now", "free")


def per_sample_sampler():
    """The sampler as it was: mnist1d's per-sample transform, seeded through numpy's global RNG."""
    from mnist1d.data import get_dataset_args

    from widthkit.data.mnist1d import _mnist1d_fixed_default, _mnist1d_raw
    from widthkit.data.source import numpy_seed
    args, d = get_dataset_args(), _mnist1d_fixed_default()

    def sampler(n: int, generator: torch.Generator):
        y = torch.randint(10, (n,), generator=generator)
        with numpy_seed(int(torch.randint(2 ** 31 - 1, (1,), generator=generator))):
            raw = _mnist1d_raw(y.numpy(), args)
        return torch.as_tensor((raw - d["mean"]) / d["std"], dtype=torch.float32).reshape(n, 1, -1), y
    return sampler


def generator_rows(rounds: int) -> list[dict]:
    """Samples per second: the per-sample transform, the batched one at 128 and 1024 samples a call, and as the
    trainer calls it (8 steps of 128, each from its own generator, in one call)."""
    from widthkit.build import load_recipe_task
    from widthkit.recipe import load_recipe
    task = load_recipe_task(load_recipe(RECIPE))
    old = per_sample_sampler()
    steps = lambda n, g: task.sample_many(n // 8, [g] * 8)  # noqa: E731  (8 generators' draws, one transform)
    ways = {"per-sample (mnist1d transform)": (old, 256), "batched, batch 128": (task.sample, 128),
            "batched, 8 steps of 128 (as trained)": (steps, 1024), "batched, batch 1024": (task.sample, 1024)}
    rates = {k: [] for k in ways}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for r in range(rounds):
        for name, (fn, n) in ways.items():
            g = torch.Generator().manual_seed(r)
            reps = 1 if fn is old else max(1, 40000 // n)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(n, g)
            rates[name].append(reps * n / (time.perf_counter() - t0))
    torch.set_num_threads(threads)
    base = statistics.median(rates["per-sample (mnist1d transform)"])
    rows = [{"way": k, "rate": statistics.median(v), "ratio": statistics.median(v) / base} for k, v in rates.items()]
    for r in rows:
        print(f"{r['way']:38s} {r['rate']:12,.0f} samples/s  x{r['ratio']:.0f}", flush=True)
    return rows


# ------------------------------------------------------------------------------- one job, in a fresh process
CLOCKS = dict.fromkeys(("waited", "generated", "probe", "evaluate"), 0.0)  # seconds, this process's job


@contextlib.contextmanager
def clock(total: str):
    """Add the time spent inside the block to ``CLOCKS[total]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        CLOCKS[total] += time.perf_counter() - t0


def instrument(trainer, free: bool, choice: dict | None) -> None:
    """Patch this tree's trainer to add up the step loop's wait for data, the generation time (in whichever
    thread), the strategy probe and the evaluations; with ``free``, every chunk of batches is one drawn once.
    ``choice`` (strategy, threads, layout) replaces the probe's, which still runs."""
    def clocked(fn, total: str):
        def run(*a, **k):
            with clock(total):
                out = fn(*a, **k)
            return {**out, **choice} if choice and total == "probe" else out
        return run

    class TimedBatches(trainer.Batches):
        fixed = None

        def _draw(self, chunk):
            if free:
                if self.fixed is None:
                    self.fixed = super()._draw(0)
                return self.fixed
            with clock("generated"):
                return super()._draw(chunk)

        def __call__(self, step):
            with clock("waited"):
                return super().__call__(step)

    trainer.Batches = TimedBatches
    trainer.probe_strategy = clocked(trainer.probe_strategy, "probe")
    trainer.evaluate = clocked(trainer.evaluate, "evaluate")


def job_main(spec: dict) -> dict:
    """One job (``spec``: way, width, steps, shared) with whichever widthkit is on ``PYTHONPATH``; its wall time
    around ``train_members`` and, for this tree's code, what went to data, the probe and evaluation (seconds)."""
    import widthkit.trainer as trainer
    from widthkit.build import build_member, load_recipe_task
    from widthkit.recipe import load_recipe
    if not Path(trainer.__file__).is_relative_to(os.environ["PYTHONPATH"]):
        raise SystemExit(f"the job ran {trainer.__file__}, not the code under {os.environ['PYTHONPATH']}")
    steps = spec["steps"]
    recipe = load_recipe(RECIPE, overrides=[f"train.steps={steps}", f"train.eval_every={max(steps // 10, 1)}",
                                            f"data.shared_batches={str(spec['shared']).lower()}"])
    task = load_recipe_task(recipe)
    if spec["way"] != "today":
        instrument(trainer, free=spec["way"] == "free", choice=spec.get("choice"))
    t0 = time.perf_counter()
    _, record, _ = trainer.train_members(recipe, spec["width"], recipe.train.seeds, task, build_member=build_member)
    wall = time.perf_counter() - t0
    return {"wall": wall, "wait": CLOCKS["waited"], "gen": CLOCKS["generated"], "probe": CLOCKS["probe"],
            "eval": CLOCKS["evaluate"], "strategy": record.get("strategy"),
            "channels_last": record.get("channels_last"), "threads": record.get("threads")}


def run_job(tree: Path, way: str, width: int, steps: int, shared: bool, choice: dict | None, lock: str) -> dict:
    """:func:`job_main` in a fresh process on ``tree``'s code (holding the file lock ``lock``, if any)."""
    spec = json.dumps({"way": way, "width": width, "steps": steps, "shared": shared, "choice": choice})
    env = dict(os.environ, PYTHONPATH=str(tree))
    with held(lock):
        out = subprocess.run([sys.executable, __file__, "--job", spec], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{way} job at width {width} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def held(lock: str):
    """Hold the exclusive file lock ``lock`` ("": none), as ``flock`` does: one benchmark at a time."""
    if not lock:
        yield
        return
    import fcntl
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------- the jobs, side by side
def recipe_rows(widths, a, today: Path) -> list[dict]:
    """Per width, ``a.rounds`` interleaved rounds of now and free jobs, today's in the first ``a.today_rounds``.
    Medians over the rounds; the data cost is the median of each round's own 1 - free / now."""
    trees = {"today": today, "now": ROOT, "free": ROOT}
    rows = []
    for w in widths:
        runs = {way: [] for way in WAYS}
        for r in range(a.rounds):  # interleaved: a busy moment of the shared machine hits every way alike
            for way in WAYS[r >= a.today_rounds:]:  # the free job takes the now job's choice: they differ in data only
                now = runs["now"][-1] if way == "free" else {}
                choice = {k: now[k] for k in ("strategy", "threads", "channels_last") if now.get(k) is not None}
                runs[way].append(run_job(trees[way], way, w, a.steps, not a.no_shared, choice, a.lock))
        walls = {way: [r["wall"] for r in v] for way, v in runs.items()}
        med = lambda xs: statistics.median(xs) if xs else math.nan  # noqa: E731
        now = sorted(runs["now"], key=lambda r: r["wall"])[len(runs["now"]) // 2]  # the median job
        row = {"width": w, "now": now, "walls": walls, "today_s": med(walls["today"]), "now_s": med(walls["now"]),
               "free_s": med(walls["free"]), "wait": med([r["wait"] / r["wall"] for r in runs["now"]]),
               "gen": med([r["gen"] / r["wall"] for r in runs["now"]]),
               "data_cost": med([1 - f["wall"] / n["wall"] for n, f in zip(runs["now"], runs["free"])])}
        row["speedup"] = row["today_s"] / row["now_s"]
        rows.append(row)
        print(f"width {w:4d}: today {row['today_s']:6.1f} s | now {row['now_s']:6.1f} s (data wait {row['wait']:.1%}, "
              f"generation {row['gen']:.1%} of the job, in the background; probe {now['probe']:.1f} s, evaluation "
              f"{now['eval']:.1f} s, steps {1e3 * steps_s(now) / a.steps:.1f} ms/step) | free data {row['free_s']:6.1f}"
              f" s (data costs {row['data_cost']:.1%}) | x{row['speedup']:.1f}  (all rounds: {walls}; now jobs' "
              f"choices: {[(r['strategy'], r['threads'], r['channels_last']) for r in runs['now']]})", flush=True)
    return rows


def steps_s(run: dict) -> float:
    """Seconds of a job outside its probe and evaluations: the training steps (data waits included)."""
    return run["wall"] - run["probe"] - run["eval"]


def markdown(a, gen, rows) -> str:
    cmd = (f"python bench/online_speed.py --steps {a.steps} --rounds {a.rounds} --today-rounds {a.today_rounds}"
           f"{' --no-shared' if a.no_shared else ''}{' --lock ' + a.lock if a.lock else ''}")
    out = [f"`{cmd}` ({machine()}; the 2-core machine was shared with other agents' work; every job and the "
           "generator rounds held the shared benchmark lock, so no other benchmark ran at the same time, but "
           "absolute times vary).", "",
           "mnist1d samples per second, median of interleaved rounds, single-threaded:", "",
           "| generator | samples / s | vs per-sample |", "|---|---|---|"]
    out += [f"| {r['way']} | {r['rate']:,.0f} | **{r['ratio']:.0f}x** |" for r in gen]
    out += ["", f"`recipes/mnist1d-online.toml` jobs ({a.steps} steps x 4 seeds, evaluation every "
            f"{max(a.steps // 10, 1)} steps, shared_batches={'false' if a.no_shared else 'true'}), each in a fresh process, timed around "
            f"`train_members`: today = the code when issue 16 was filed (revision {a.today}); now = this tree. "
            f"{a.rounds} interleaved rounds of now and free jobs, today's jobs in the first {a.today_rounds}; "
            "medians over the rounds. \"Data wait\" is the now job's step loop blocked on data, \"generation\" the "
            "time spent making batches (in the prefetch thread, overlapping the steps), both as shares of the job's "
            "wall time.", "",
            "\"Probe + eval\" is the median now job's strategy probe and its evaluations; \"steps\" the rest of it "
            "(building the members, the training steps, data waits included) per step.  \"Free data\" is the same "
            "job fed one chunk of batches drawn in advance at every step (it runs the probe too, but trains with the "
            "choice of strategy, threads and layout of the same round's now job), and \"data cost\" = 1 - free / "
            "now, the median of the rounds' own: all that generating the data costs the job, wait and competition "
            "for the 2 cores included.",
            "", "| width | strategy (threads) | today (s) | now (s) | speed-up | data wait | generation | "
            "probe + eval (s) | steps (ms/step) | free data (s) | data cost |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = r["now"]
        layout = ", NHWC" if n["channels_last"] else ""
        out.append(f"| {r['width']} | {n['strategy']}{layout} ({n['threads']}) | {r['today_s']:.1f} | "
                   f"{r['now_s']:.1f} | **{r['speedup']:.1f}x** | {r['wait']:.1%} | {r['gen']:.1%} | "
                   f"{n['probe']:.1f} + {n['eval']:.1f} | {1e3 * steps_s(n) / a.steps:.1f} | {r['free_s']:.1f} | "
                   f"{r['data_cost']:.1%} |")
    out += ["", "All rounds (s): " + "; ".join(
        f"width {r['width']}: " + ", ".join(f"{way} {' '.join(f'{t:.1f}' for t in r['walls'][way])}"
                                            for way in WAYS)
        for r in rows) + "."]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="16,32,64")
    ap.add_argument("--steps", type=int, default=600, help="training steps per job")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (generator, now and free jobs)")
    ap.add_argument("--today-rounds", type=int, default=3, help="rounds that also run today's job (the first ones)")
    ap.add_argument("--lock", default="", help="a file lock each job (and the generator rounds) holds, as flock")
    ap.add_argument("--today", default=TODAY, help="the revision to compare with (git, in this repository)")
    ap.add_argument("--no-shared", action="store_true", help="one data stream per member")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    a = ap.parse_args(argv)
    with held(a.lock):
        gen = generator_rows(a.rounds)
    with tempfile.TemporaryDirectory(prefix="widthkit-today-") as tmp:  # today's tree, no worktree left behind
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.today], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        rows = recipe_rows([int(w) for w in a.widths.split(",") if w], a, Path(tmp))
    text = markdown(a, gen, rows)
    publish(HEADING, text, not a.no_write)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    if len(sys.argv) == 3 and sys.argv[1] == "--job":
        print(json.dumps(job_main(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.path.insert(0, str(ROOT))  # the driver runs this tree's widthkit
    sys.exit(main())
