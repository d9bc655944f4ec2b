"""`widthkit coord-check RECIPE`: per-layer activation sizes across width, muP vs SP."""
from __future__ import annotations

from pathlib import Path

NAME = "coord-check"
HELP = "coordinate check: per-layer activation sizes after a few steps, flat across width under muP"


def add_arguments(p) -> None:
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--params", default="mup,sp", help="parameterizations to compare (default mup,sp)")
    p.add_argument("--out", default="coord-check")
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    import json

    from ..analysis.coord_check import coord_check, plot_coord_check
    from ..recipe import load_recipe
    from ..table import print_table
    out = Path(args.out)
    results = [coord_check(load_recipe(args.recipe, args.overrides + [f"param.kind={k}"]), steps=args.steps)
               for k in args.params.split(",")]
    for r in results:
        r.save(out / f"coord_check_{r.kind}.json")
    plot_coord_check(results, out / "coord_check.png")
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        for r in results:
            print_table(f"coord check ({r.kind}): activation RMS, widest / narrowest width",
                        ["layer", "ratio"], [[n, r.ratio[n]] for n in r.layers])
        print(f"plot: {out / 'coord_check.png'}")
    return 0
