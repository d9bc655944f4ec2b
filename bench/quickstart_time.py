"""Time budget: the quick-start study (train and every analysis), as a new user runs it after the install.

    python bench/quickstart_time.py               # `widthkit study quickstart` in a fresh process and run directory
    python bench/quickstart_time.py --cold-numba  # also with an empty numba cache (the first study on a machine)

Runs ``widthkit study RECIPE --out TMP -q`` as a subprocess (interpreter start-up and imports included) and
prints the wall-clock time of the whole command beside the per-stage seconds the study records in
``study.json`` (training, each analysis, the report) and each width's training job from ``index.json``.
Issue 16's budget: under 60 s of work on this 2-core CPU.  Writes the result under "## Quick-start study" in
bench/RESULTS.md.  Not a ratio: a time budget, so run it alone (under the project's heavy-job lock on a
shared machine).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import machine, update_results  # noqa: E402

HEADING = "## Quick-start study"
BUDGET_S = 60.0


def run_study(recipe: str, overrides: list[str], numba_cache: str | None) -> dict:
    """One ``widthkit study`` in a fresh process and run directory: wall seconds, stage seconds, job seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        env = dict(os.environ, **({"NUMBA_CACHE_DIR": numba_cache} if numba_cache else {}))
        cmd = [sys.executable, "-m", "widthkit.cli", "study", recipe, "--out", str(out), "-q"]
        cmd += [a for o in overrides for a in ("--set", o)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        study = json.loads((out / "study.json").read_text())
        jobs = json.loads((out / "index.json").read_text())["jobs"]
        jobs = jobs if isinstance(jobs, list) else list(jobs.values())
        return {"wall": wall, "stages": study["seconds"], "jobs": {j["width"]: j["seconds"] for j in jobs},
                "failed": [a["name"] for a in study["analyses"] if a["status"] == "failed"]}


def table(runs: list[tuple[str, dict]]) -> str:
    """One row per run: the whole command, each stage, and the rest (interpreter start-up, imports, set-up)."""
    stages = [k for k in runs[0][1]["stages"] if k != "total"]
    head = ["run", "whole command (s)"] + [f"{k} (s)" for k in stages] + ["start-up and other (s)", "training per width (s)"]
    rows = [[label, f"**{r['wall']:.1f}**"] + [f"{r['stages'].get(k, 0.0):.1f}" for k in stages]
            + [f"{r['wall'] - r['stages']['total']:.1f}", ", ".join(f"{w}: {s:.1f}" for w, s in r["jobs"].items())]
            for label, r in runs]
    return "\n".join("| " + " | ".join(row) + " |" for row in [head, ["---"] * len(head)] + rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="quickstart", help="recipe file or shipped recipe name")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override K=V")
    ap.add_argument("--cold-numba", action="store_true", help="also run with an empty numba cache (UMAP compiles)")
    a = ap.parse_args()
    runs = []
    if a.cold_numba:
        with tempfile.TemporaryDirectory() as cache:
            runs.append(("first on a machine (empty numba cache)", run_study(a.recipe, a.overrides, cache)))
    runs.append(("numba cache warm", run_study(a.recipe, a.overrides, None)))
    lines = [f"`python bench/quickstart_time.py{' --cold-numba' if a.cold_numba else ''}` ({machine()}; the machine "
             "was shared with other jobs, so absolute times vary): `widthkit study "
             f"{a.recipe}{''.join(f' --set {o}' for o in a.overrides)} -q` in a fresh process and run directory, "
             f"after the install. Budget (issue 16): under {BUDGET_S:.0f} s.", ""]
    for label, r in runs:
        print(f"{label}: {r['wall']:.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in r['stages'].items())}; "
              f"training per width: {', '.join(f'{w}: {s:.1f}' for w, s in r['jobs'].items())})"
              + (f"; FAILED analyses: {r['failed']}" if r["failed"] else ""))
    lines += [table(runs), ""]
    lines.append("Reading: " + "; ".join(
        f"{label}, the whole study takes {r['wall']:.0f} s, {'within' if r['wall'] < BUDGET_S else 'over'} the "
        f"{BUDGET_S:.0f} s budget" for label, r in runs) + ".")
    update_results(HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
