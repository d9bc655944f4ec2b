"""``widthkit transfer-bench SUITE``: train source ladders if needed, transfer each to its target, one table.

SUITE is ``builtin`` (digits 0-4 -> 5-9, MNIST-1D 0-4 -> 5-9, teacher -> perturbed teacher; CPU, minutes),
``external`` (CIFAR-10 -> CIFAR-100 and CIFAR-100 coarse -> fine; needs the datasets under ``--root``), or a
TOML file with ``[[task]]`` tables: ``name``, ``source`` (a recipe path, relative to the suite file),
``target`` (a task spec) and optional ``layer``, ``probe``, ``shots``, ``draws``.
"""
from __future__ import annotations

import time
import tomllib
from pathlib import Path

NAME = "transfer-bench"
HELP = "Transfer benchmark: several source -> target tasks, target accuracy vs width in one table and plot."
SUITES = ("builtin", "external")
TASK_KEYS = ("name", "source", "target", "layer", "probe", "shots", "draws")


def recipes_dir() -> Path:
    """The folder of shipped recipes and suites (package data, so also in an installed wheel)."""
    from ..recipe import find_recipe
    return find_recipe("transfer-builtin").parent


def load_suite(suite: str) -> list[dict]:
    """Tasks of a suite: dicts with name, source (absolute recipe path), target and probe options."""
    from ..errors import WidthkitError, did_you_mean
    if suite in SUITES:
        path = recipes_dir() / f"transfer-{suite}.toml"
    else:
        path = Path(suite)
        if not path.exists():
            raise WidthkitError(f"suite '{suite}' is neither {' nor '.join(SUITES)} nor an existing TOML file"
                                f"{did_you_mean(suite, SUITES)}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise WidthkitError(f"suite file '{path}' is not valid TOML: {e}") from None
    tasks = data.get("task")
    if not isinstance(tasks, list) or not tasks:
        raise WidthkitError(f"suite file '{path}' lists no tasks; add [[task]] tables with source and target")
    out = []
    for i, t in enumerate(tasks):
        for k in t:
            if k not in TASK_KEYS:
                raise WidthkitError(f"unknown key '{k}' in task {i + 1} of '{path}'{did_you_mean(k, TASK_KEYS)}; "
                                    f"valid: {', '.join(TASK_KEYS)}")
        for k in ("source", "target"):
            if not t.get(k):
                raise WidthkitError(f"task {i + 1} of '{path}' has no '{k}'")
        src = Path(t["source"])
        src = src if src.is_absolute() else path.parent / src
        out.append({"name": t.get("name") or f"{Path(t['source']).stem} -> {t['target']}", "source": src,
                    "target": t["target"], "layer": t.get("layer"), "probe": t.get("probe"),
                    "shots": list(t.get("shots", [])), "draws": t.get("draws")})
    return out


def add_arguments(p) -> None:
    p.add_argument("suite", help="builtin | external | a suite TOML file")
    p.add_argument("--runs", default="runs/transfer-bench", help="folder for the source ladders (reused)")
    p.add_argument("--root", default=None, help="dataset folder for external data (sets data.root)")
    p.add_argument("--probe", default=None, choices=["logistic", "linear-sgd", "ridge"],
                   help="override every task's probe")
    p.add_argument("--out", default=None, help="folder for table JSON and plot (default: RUNS/results)")
    p.add_argument("--json", action="store_true", help="print all results as JSON on stdout")


def run_suite(suite: str, runs: str | Path, root: str | None = None, probe: str | None = None) -> tuple[list, list]:
    """Train missing sources (resumable) and transfer each task; returns ([(name, TransferResult)], errors)."""
    from ..analyses.transfer import transfer
    from ..errors import WidthkitError
    from ..ladder import train_ladder
    from ..progress import info, warn
    from ..recipe import load_recipe
    tasks = load_suite(suite)
    overrides = [f"data.root={root}"] if root else None
    done, errors = [], []
    for t in tasks:
        t0 = time.time()
        try:
            recipe = load_recipe(t["source"], overrides)
            run_dir = Path(runs) / recipe.name
            info(f"[{t['name']}] source ladder {run_dir}")
            run = train_ladder(str(t["source"]), run_dir, overrides=overrides, resume=True)
            res = transfer(run, target=t["target"], layer=t["layer"], probe=probe or t["probe"],
                           shots=t["shots"], draws=t["draws"])
        except WidthkitError as e:
            warn(f"task '{t['name']}' skipped: {e}")
            errors.append((t["name"], str(e)))
            continue
        info(f"[{t['name']}] done in {time.time() - t0:.0f} s")
        done.append((t["name"], res))
    return done, errors


def run(args) -> int:
    import json

    from ..atomic import atomic_write_text
    from ..errors import WidthkitError
    from ..analyses.transfer import plot_bench
    from ..progress import info
    from ..results import to_jsonable

    t0 = time.time()
    done, errors = run_suite(args.suite, args.runs, args.root, args.probe)
    if not done:
        raise WidthkitError(errors[0][1] if len(errors) == 1 else
                            f"every task failed; first: {errors[0][0]}: {errors[0][1]}")
    out = Path(args.out) if args.out else Path(args.runs) / "results"
    payload = {"suite": args.suite, "seconds": time.time() - t0,
               "tasks": {n: r.to_dict() for n, r in done}, "errors": dict(errors)}
    atomic_write_text(out / "transfer_bench.json", json.dumps(to_jsonable(payload), indent=1))
    plot_bench(done, out / "transfer_bench.png")
    if args.json:
        print(json.dumps(to_jsonable(payload), indent=1))
    else:
        _bench_table(done, errors)
        info(f"wrote {out / 'transfer_bench.json'} and {out / 'transfer_bench.png'} "
             f"({time.time() - t0:.0f} s)")
    return 0 if not errors else 1


def _bench_table(done, errors) -> None:
    """One row per (task, width): mean ± std over seeds."""
    from rich.table import Table

    from ..table import console
    t = Table(title="transfer bench (mean ± std over seeds)")
    for c in ("task", "width", "source acc", "target acc", "few-shot", "input R^2", "10-NN matched"):
        t.add_column(c, justify="left" if c == "task" else "right")
    for name, r in done:
        for i, p in enumerate(r.per_width):
            fs = "  ".join(f"{k}:{p.few_shot[k].acc_mean:.3f}" for k in r.shots) or "-"
            t.add_row(name if i == 0 else "", str(p.width), f"{p.source_acc_mean:.3f}±{p.source_acc_std:.3f}",
                      f"{p.target_acc_mean:.3f}±{p.target_acc_std:.3f}", fs, f"{p.recon_r2_mean:.3f}",
                      f"{p.knn_acc_matched:.3f}")
        t.add_row("", "trend", f"{r.source_trend.slope:+.3f}/doubling",
                  f"{r.target_trend.slope:+.3f}±{r.target_trend.slope_err:.3f}", "", "", "", end_section=True)
    for name, e in errors:
        t.add_row(name, "-", "skipped", e[:70])
    console().print(t)
