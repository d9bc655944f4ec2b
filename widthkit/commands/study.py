"""``widthkit study RECIPE``: train the ladder, run every analysis that applies, write report.html."""
from __future__ import annotations

NAME = "study"
HELP = "train a ladder (resuming), run every analysis that applies and write one HTML report"


def add_arguments(p) -> None:
    p.add_argument("recipe", help="TOML recipe (see recipes/)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=0.05 or --set 'study.skip=[\"atlas\"]'")
    p.add_argument("--executor", default="local", help="where training jobs run: local (default)")
    p.add_argument("--no-resume", action="store_true",
                   help="refuse to continue a run already in --out (default: resume it)")
    p.add_argument("--redo", action="store_true", help="recompute analyses even when their inputs are unchanged")
    p.add_argument("--json", action="store_true", help="print the study result as JSON on stdout (nothing else)")


def run(args) -> int:
    from ..studies import study
    from .train import default_out
    out = args.out or default_out(args.recipe, args.overrides)
    res = study(args.recipe, out, overrides=args.overrides, resume=not args.no_resume, executor=args.executor,
                quiet=args.json, redo=args.redo)
    if args.json:
        print(res.to_json())
    return 0
