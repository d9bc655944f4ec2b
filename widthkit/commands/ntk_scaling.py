"""``widthkit ntk-scaling RECIPE``: kernel change and linearization gap vs width, with fitted exponents."""
from __future__ import annotations

from pathlib import Path

NAME = "ntk-scaling"
HELP = "||Theta_t - Theta_0||/||Theta_0|| and |f - f_lin| vs width in NTK / muP, with power-law fits"


def add_arguments(p) -> None:
    p.add_argument("recipe", help="TOML recipe (see recipes/ntk-scaling.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field (repeatable)")
    p.add_argument("--widths", default=None, help="comma-separated widths (default: the recipe's)")
    p.add_argument("--params", default=None, help="comma-separated parameterizations, e.g. ntk,mup "
                   "(default: dynamics.params or the recipe's param.kind)")
    p.add_argument("--steps", type=int, default=None, help="full-batch GD steps")
    p.add_argument("--seeds", type=int, default=None, help="inits per width (error bars from their spread)")
    p.add_argument("--out", default=None, help="folder for JSON and plot (default: runs/<name>/ntk_scaling)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args) -> int:
    from ..dynamics import ntk_scaling
    from ..errors import WidthkitError
    from ..plots.dynamics import plot_ntk_scaling
    from ..progress import info
    from ..recipe import resolve_recipe

    r = resolve_recipe(args.recipe, args.overrides)
    widths = None
    if args.widths:
        try:
            widths = [int(w) for w in args.widths.split(",") if w.strip()]
        except ValueError:
            raise WidthkitError(f"--widths takes comma-separated integers, got '{args.widths}'") from None
    params = [p.strip() for p in args.params.split(",") if p.strip()] if args.params else None
    res = ntk_scaling(r, widths, params, steps=args.steps, seeds=args.seeds)
    out = Path(args.out) if args.out else Path("runs") / r.name / "ntk_scaling"
    res.save(out / "ntk_scaling.json")
    path = plot_ntk_scaling(res, out / "ntk_scaling.png")
    if args.json:
        print(res.to_json())
        return 0
    print(f"after {res.steps} full-batch GD steps at lr = {res.lr_units} x 2/lambda_0 ({res.activation}, {res.loss})")
    for f in res.fits:
        vals = " ".join(f"{v:.3g}" for v in f.values)
        print(f"{f.param:>4} {f.quantity:>13}: exponent {f.slope:+.3f} ± {f.slope_err:.3f}   [{vals}]")
    print(res.note)
    info(f"wrote {out / 'ntk_scaling.json'} and {path}")
    return 0
