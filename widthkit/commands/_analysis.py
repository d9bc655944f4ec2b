"""One CLI command per registered analysis, generated from its contract (see ``widthkit.analyses.base``).

    widthkit NAME RUN [--point P] [--<option> VALUE ...] [--out DIR] [--json]            (needs = "run")
    widthkit NAME RECIPE [--set K=V ...] [--<option> VALUE ...] [--out DIR] [--json]     (needs = "recipe")

Outputs go to the analysis's folder of the run (of each grid point of a sweep), or ``runs/<name>/<table>``
for recipe analyses; the terminal shows the same blocks (tables and readings) as the HTML report.
"""
from __future__ import annotations

from pathlib import Path

from ..analyses.base import Analysis, Subject, check_recipe_tables, option_fields
from ._flags import add_option_flags, given_options


def add_arguments(p, a: Analysis) -> None:
    if a.needs == "run":
        p.add_argument("run", help="run directory (from `widthkit train`)")
        p.add_argument("--point", default=None,
                       help="grid point of a sweep: index or key (default: every point)")
    else:
        p.add_argument("recipe", help="TOML recipe (a path, or the name of a shipped recipe)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help=f"override a recipe field, e.g. --set {a.table}.KEY=VALUE (repeatable)")
    add_option_flags(p, option_fields(a.Options))
    p.add_argument("--out", default=None, help=f"output folder (default: the run's {a.folder}/)"
                   if a.needs == "run" else f"output folder (default: runs/<recipe name>/{a.folder})")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _subjects(a: Analysis, args) -> list[Subject]:
    if a.needs == "recipe":
        from ..recipe import load_recipe
        r = load_recipe(args.recipe, args.overrides)
        check_recipe_tables(r)
        return [Subject(r, None, Path(args.out) if args.out else Path("runs") / r.name / a.folder)]
    from ..errors import WidthkitError
    from ..store import open_run, point_folder
    run = open_run(args.run)
    if a.per_run:  # it reads every point: once, into the first point's folder
        views = [run.select(0)]
    elif args.point is not None:
        views = [run.select(int(args.point) if str(args.point).isdigit() else args.point)]
    else:
        views = [run.select(i) for i in range(len(run.points))]
    if args.out and len(views) > 1:
        raise WidthkitError(f"--out takes one grid point; add --point (0 to {len(views) - 1}) or drop --out")
    return [Subject(v.recipe, v, Path(args.out) if args.out else point_folder(v) / a.folder) for v in views]


def run(a: Analysis, args) -> int:
    from ..progress import info
    from ..table import print_blocks
    for s in _subjects(a, args):
        res, files = a.run(s, a.options(s.recipe, **given_options(args, a.Options)))
        if args.json:
            print(res.to_json())
            continue
        print_blocks(a.blocks(res, s.out), point=s.point.point_key if s.point is not None else "")
        info(f"wrote {len(files)} files in {s.out}")
    return 0
