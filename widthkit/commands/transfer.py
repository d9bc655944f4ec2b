"""``widthkit transfer RUN --target TASK``: fit a new last layer on frozen features of every width."""
from __future__ import annotations

from pathlib import Path

NAME = "transfer"
HELP = "Last-layer transfer to a new task per width and seed (Gilboa & Gur-Ari 2019), plus information probes."


def add_arguments(p) -> None:
    p.add_argument("run", help="run directory (from 'widthkit train')")
    p.add_argument("--target", default=None, help="target task, e.g. digits:5-9 (default: recipe [transfer] target)")
    p.add_argument("--layer", default=None, help="module name whose output is the feature (default: penultimate)")
    p.add_argument("--probe", default=None, choices=["logistic", "linear-sgd", "ridge"], help="new last layer")
    p.add_argument("--shots", type=int, nargs="*", default=None, help="few-shot sizes K (examples per class)")
    p.add_argument("--draws", type=int, default=None, help="few-shot draws per K")
    p.add_argument("--no-information", action="store_true", help="skip the R^2 and k-NN information probes")
    p.add_argument("--out", default=None, help="folder for the plot and JSON (default: RUN/transfer)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _f(x, e=None) -> str:
    from ..table import cell
    return cell(x, e, ".3f", ".3f")


def print_table(res, title: str | None = None) -> None:
    from ..table import show
    from rich.table import Table
    t = Table(title=title or f"transfer {res.source_task} -> {res.target} ({res.probe}, {res.layer})")
    cols = ["width", "seeds", "source acc", "target acc", "target loss"] + [f"{k}-shot" for k in res.shots] + \
        ["input R^2", "10-NN", "10-NN matched"]
    for c in cols:
        t.add_column(c, justify="right")
    for p in res.per_width:
        t.add_row(str(p.width), str(len(p.seeds)), _f(p.source_acc_mean, p.source_acc_std),
                  _f(p.target_acc_mean, p.target_acc_std), _f(p.target_loss_mean, p.target_loss_std),
                  *[_f(p.few_shot[k]["acc_mean"], p.few_shot[k]["acc_std"]) for k in res.shots],
                  _f(p.recon_r2_mean, p.recon_r2_std), _f(p.knn_acc_mean), _f(p.knn_acc_matched))
    show(t, res.summary)


def run(args) -> int:
    from ..analysis.transfer import transfer
    from ..plots.transfer import plot_transfer
    from ..progress import info
    from ..store import open_run

    r = open_run(args.run)
    res = transfer(r, target=args.target, layer=args.layer, probe=args.probe, shots=args.shots or (),
                   draws=args.draws, information=False if args.no_information else None)
    out = Path(args.out) if args.out else Path(args.run) / "transfer"
    res.save(out / "transfer.json")
    plot_transfer(res, out / "transfer.png")
    if args.json:
        print(res.to_json())
    else:
        print_table(res)
        info(f"wrote {out / 'transfer.json'} and {out / 'transfer.png'}")
    return 0
