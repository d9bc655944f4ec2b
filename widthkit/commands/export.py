"""`widthkit export RUN --to tensorboard|wandb|mlflow [DIR]`: a finished run's curves, after the fact."""
from __future__ import annotations

NAME = "export"
HELP = "write a finished run's curves to TensorBoard, W&B (offline) or MLflow (file store)"


def add_arguments(p) -> None:
    from ..tracking import LOGGERS
    p.add_argument("run", help="run directory (from `widthkit train`)")
    p.add_argument("dir", nargs="?", default=None,
                   help="where tensorboard/, wandb/ or mlruns/ go (default: RUN/export)")
    p.add_argument("--to", required=True, choices=LOGGERS, help="the tracking tool")


def run(args) -> int:
    from ..progress import info
    from ..tracking import export_run
    out = export_run(args.run, args.to, args.dir)
    where = {"tensorboard": "tensorboard --logdir {}/tensorboard", "wandb": "wandb sync {}/wandb/offline-run-*",
             "mlflow": "mlflow ui --backend-store-uri {}/mlruns"}[args.to]
    info(f"exported to {out}; view with `{where.format(out)}`")
    return 0
