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
                   help="where jobs run: local (default, this process), ray (a Ray cluster, one task per job) or "
                        "slurm (one Slurm job per ladder job, a job array, through submitit)")
    ray = p.add_argument_group("ray executor")
    ray.add_argument("--address", default=None,
                     help="Ray cluster to join: auto (this node's cluster) or HEAD:6379; default: a local Ray "
                          "instance (or RAY_ADDRESS)")
    ray.add_argument("--cpus-per-job", type=float, default=None,
                     help="CPUs (torch threads) per job (default 1; ray and slurm)")
    ray.add_argument("--gpus-per-job", type=float, default=None,
                     help="GPUs per job: ray, may be fractional (default: by job size when the cluster has GPUs); "
                          "slurm, whole GPUs (default 0)")
    ray.add_argument("--max-retries", type=int, default=None,
                     help="ray: reruns of a job whose worker died (default 2); slurm: requeues after preemption or "
                          "time-out (default 3); each continues from the job's checkpoint")
    slurm = p.add_argument_group("slurm executor (submitit)")
    slurm.add_argument("--partition", default=None, help="Slurm partition")
    slurm.add_argument("--time", type=float, default=None, help="minutes per job (default 60); requeued past it")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per job in GB")
    slurm.add_argument("--array-parallelism", type=int, default=None, help="jobs of the array running at once")
    slurm.add_argument("--slurm", dest="slurm_options", action="append", default=[], metavar="KEY=VALUE",
                       help="another submitit slurm_KEY parameter, e.g. --slurm account=proj --slurm qos=high")
    slurm.add_argument("--slurm-cluster", default=None, choices=["slurm", "local"],
                       help="local: run the jobs as local processes through submitit (to try a setup)")
    p.add_argument("--strategy", default=None, help="override the ensemble strategy: vectorized, loop, chunk:N")
    p.add_argument("--seeds-per-job", type=int, default=None, help="split each width's seeds into jobs of N")
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
    shared = {"--cpus-per-job": args.cpus_per_job, "--gpus-per-job": args.gpus_per_job,
              "--max-retries": args.max_retries}
    only = {"ray": {"--address": args.address},
            "slurm": {"--partition": args.partition, "--time": args.time, "--mem-gb": args.mem_gb,
                      "--array-parallelism": args.array_parallelism, "--slurm": args.slurm_options or None,
                      "--slurm-cluster": args.slurm_cluster}}
    for name, flags in only.items():
        given = [flag for flag, value in flags.items() if value is not None]
        if given and args.executor != name:
            raise WidthkitError(f"{', '.join(given)} only apply to --executor {name}; add it or drop them")
    given = [flag for flag, value in shared.items() if value is not None]
    if given and args.executor == "local":
        raise WidthkitError(f"{', '.join(given)} only apply to --executor ray or slurm; add one or drop them")
    options = dict(num_cpus=args.cpus_per_job, num_gpus=args.gpus_per_job, max_retries=args.max_retries)
    if args.executor == "slurm":
        bad = [o for o in args.slurm_options if "=" not in o]
        if bad:
            raise WidthkitError(f"--slurm takes KEY=VALUE, got '{bad[0]}'; e.g. --slurm account=proj")
        options.update(partition=args.partition, time=args.time, mem_gb=args.mem_gb,
                       array_parallelism=args.array_parallelism, cluster=args.slurm_cluster,
                       slurm=dict(o.split("=", 1) for o in args.slurm_options) or None)
    else:
        options.update(address=args.address)
    executor = get_executor(args.executor, **options)  # None values: the executor's defaults
    run_ = train_ladder(args.recipe, out, overrides=args.overrides, resume=args.resume, executor=executor,
                        strategy=args.strategy, seeds_per_job=args.seeds_per_job)
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
