"""``widthkit lr-phase RECIPE``: lazy / catapult / divergent phases of GD vs learning rate and width."""
from __future__ import annotations

from pathlib import Path

NAME = "lr-phase"
HELP = "learning-rate phase diagram (lazy / catapult / divergent) in units of 2/lambda_0, per width"


def _floats(text: str) -> list[float]:
    from ..errors import WidthkitError
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise WidthkitError(f"expected numbers separated by commas, got '{text}'") from None


def add_arguments(p) -> None:
    p.add_argument("recipe", help="TOML recipe (see recipes/catapult-mlp.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set dynamics.n_train=128 (repeatable)")
    p.add_argument("--widths", type=_floats, default=None, help="comma-separated widths (default: the recipe's)")
    p.add_argument("--lrs", type=_floats, default=None,
                   help="comma-separated learning rates in units of 2/lambda_0 (default: dynamics.lrs)")
    p.add_argument("--steps", type=int, default=None, help="full-batch GD steps per run")
    p.add_argument("--seed", type=int, default=0, help="member seed (the init)")
    p.add_argument("--out", default=None, help="folder for JSON and plots (default: runs/<name>/lr_phase)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args) -> int:
    from ..dynamics import lr_phase
    from ..plots.dynamics import plot_lr_phase
    from ..progress import info
    from ..recipe import resolve_recipe

    r = resolve_recipe(args.recipe, args.overrides)
    res = lr_phase(r, widths=[int(w) for w in args.widths] if args.widths else None, lrs=args.lrs,
                   steps=args.steps, seed=args.seed)
    out = Path(args.out) if args.out else Path("runs") / r.name / "lr_phase"
    res.save(out / "lr_phase.json")
    paths = plot_lr_phase(res, out)
    if args.json:
        print(res.to_json())
        return 0
    print(f"lr phases ({res.loss}, {res.steps} full-batch GD steps on {res.n_train} examples); "
          "lr in units of 1/lambda_0")
    print(f"{'width':>6} {'lambda0':>9} {'2/lambda0':>9} {'lazy|cat':>9} {'max stable':>10} {'eta_max':>8}  phases")
    for w in res.per_width:
        f = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
        phases = " ".join(f"{r.lr_lambda:.3g}:{r.phase[0]}" for r in w.runs)
        print(f"{w.width:>6} {w.lambda0:>9.4g} {w.critical_lr:>9.4g} {f(w.lazy_catapult_boundary):>9} "
              f"{f(w.max_stable_lr):>10} {f(w.eta_max):>8}  {phases}")
    print(f"convention: {res.convention}")
    info(f"wrote {out / 'lr_phase.json'} and {len(paths)} plots in {out}")
    return 0
