"""`widthkit train RECIPE`: train a width ladder into a run store."""
from __future__ import annotations

import json

NAME = "train"
HELP = "train every width (and grid point) of a recipe into a run directory"


def add_arguments(p) -> None:
    p.add_argument("recipe", help="TOML recipe (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=0.05 (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--executor", default="local",
                   help="where jobs run: local (default, this process) or ray (a Ray cluster, one task per job)")
    ray = p.add_argument_group("ray executor")
    ray.add_argument("--address", default=None,
                     help="Ray cluster to join: auto (this node's cluster) or HEAD:6379; default: a local Ray "
                          "instance (or RAY_ADDRESS)")
    ray.add_argument("--cpus-per-job", type=float, default=None, help="CPUs (torch threads) per job (default 1)")
    ray.add_argument("--gpus-per-job", type=float, default=None,
                     help="GPUs per job, may be fractional (default: by job size when the cluster has GPUs)")
    ray.add_argument("--max-retries", type=int, default=None,
                     help="reruns of a job whose worker died, from its checkpoint (default 2)")
    p.add_argument("--strategy", default=None, help="override the ensemble strategy: vectorized, loop, chunk:N")
    p.add_argument("--seeds-per-job", type=int, default=None, help="split each width's seeds into jobs of N")
    p.add_argument("--no-pack", dest="pack", action="store_false",
                   help="train every grid point of a learning-rate/weight-decay/scale sweep as its own job")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def default_out(recipe_path: str, overrides) -> str:
    from ..recipe import as_recipe_dict
    return f"runs/{as_recipe_dict(recipe_path, overrides)[1].get('name', 'ladder')}"


def run(args) -> int:
    from ..errors import WidthkitError
    from ..executors import get_executor
    from ..ladder import train_ladder
    from ..table import ladder_rows, print_ladder
    out = args.out or default_out(args.recipe, args.overrides)
    ray_flags = {"--address": args.address, "--cpus-per-job": args.cpus_per_job,
                 "--gpus-per-job": args.gpus_per_job, "--max-retries": args.max_retries}
    given = [flag for flag, value in ray_flags.items() if value is not None]
    if given and args.executor == "local":
        raise WidthkitError(f"{', '.join(given)} only apply to --executor ray; add --executor ray or drop them")
    executor = get_executor(args.executor, address=args.address, num_cpus=args.cpus_per_job,
                            num_gpus=args.gpus_per_job, max_retries=args.max_retries)  # None: the default
    run_ = train_ladder(args.recipe, out, overrides=args.overrides, resume=args.resume, executor=executor,
                        strategy=args.strategy, seeds_per_job=args.seeds_per_job, pack=args.pack)
    views = [run_.select(i) for i in range(len(run_.points))]
    if args.json:
        from ..results import to_jsonable
        print(json.dumps({"run": str(run_.path), "points": [
            {"key": v.point_key, "widths": to_jsonable(ladder_rows(v))} for v in views]}, indent=1))
    else:
        for v in views:
            print_ladder(v)
        print(f"run store: {run_.path}")
    return 0
