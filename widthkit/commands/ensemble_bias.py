"""``widthkit ensemble-bias RUN``: output variance and bias of narrower width (Vyas et al. 2023)."""
from __future__ import annotations

from pathlib import Path

NAME = "ensemble-bias"
HELP = "Ensembles per width: variance ~ 1/N, infinite-ensemble loss, bias of narrower width, agreement."


def add_arguments(p) -> None:
    p.add_argument("run", help="run directory (from 'widthkit train')")
    p.add_argument("--step", type=int, default=None, help="evaluation step to analyse (default: final)")
    p.add_argument("--subsets", type=int, default=64, help="random K-subsets averaged per ensemble size K")
    p.add_argument("--average", choices=["outputs", "probs"], default="outputs",
                   help="what an ensemble averages: outputs (logits for xent; default) or probs")
    p.add_argument("--no-over-training", action="store_true",
                   help="agreement with the widest width only at the analysed step")
    p.add_argument("--out", default=None, help="folder for plots and JSON (default: RUN/ensemble_bias)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _fmt(x: float, e: float | None = None, nd: int = 4) -> str:
    from ..table import cell
    return cell(x, e, f".{nd}g")


def print_table(res) -> None:
    """The per-width results as a rich table on stdout, plus the summary lines."""
    from ..table import show
    from rich.table import Table
    t = Table(title=f"ensemble bias at step {res.step} ({res.loss}; ensembles average {res.averaged})")
    for col in ("width", "E", "single loss", "single err", f"ens(E) loss", "ens(E) err", "L_inf",
                "variance", "L_inf - L_single(wide)", "reaches wide"):
        t.add_column(col, justify="right")
    for p in res.per_width:
        t.add_row(str(p.width), str(len(p.seeds)), _fmt(p.single_loss, p.single_loss_std),
                  _fmt(p.single_error, None, 3), _fmt(p.ensemble.curve.loss[-1]),
                  _fmt(p.ensemble.curve.error[-1], None, 3), _fmt(p.ensemble.l_inf, p.ensemble.l_inf_err),
                  _fmt(p.variance, p.variance_err, 3), _fmt(p.bias_vs_single, p.ensemble.l_inf_err, 3),
                  "yes" if p.reaches_wide else "no")
    show(t, res.summary)


def run(args) -> int:
    from ..analysis.ensemble_bias import ensemble_bias
    from ..plots.ensemble_bias import plot_all
    from ..progress import info
    from ..store import open_run

    r = open_run(args.run)
    res = ensemble_bias(r, step=args.step, n_subsets=args.subsets, average=args.average,
                        over_training=not args.no_over_training)
    out = Path(args.out) if args.out else Path(args.run) / "ensemble_bias"
    res.save(out / "ensemble_bias.json")
    paths = plot_all(res, out)
    if args.json:
        print(res.to_json())
    else:
        print_table(res)
        info(f"wrote {out / 'ensemble_bias.json'} and {len(paths)} plots in {out}")
    return 0
