"""``widthkit subspace RECIPE``: gradient overlap with the top Hessian subspace over training."""
from __future__ import annotations

from pathlib import Path

NAME = "subspace"
HELP = "overlap of the gradient with the top-k Hessian eigenspace over training (and projected SGD)"


def add_arguments(p) -> None:
    p.add_argument("recipe", help="TOML recipe (see recipes/subspace-digits.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set train.steps=200 (repeatable)")
    p.add_argument("--width", type=int, default=None, help="width of the member (default: the narrowest)")
    p.add_argument("--seed", type=int, default=0, help="member seed")
    p.add_argument("--steps", type=int, default=None, help="SGD steps (default: dynamics.steps or train.steps)")
    p.add_argument("--every", type=int, default=None, help="measure every N steps")
    p.add_argument("--k", type=int, default=None, help="subspace dimension (default: number of classes)")
    p.add_argument("--projected", action="store_true",
                   help="also train top-only and bulk-only projected SGD (Song, Ahn & Yun 2024)")
    p.add_argument("--out", default=None, help="folder for JSON and plots (default: runs/<name>/subspace)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def run(args) -> int:
    import json

    from ..dynamics import projected_sgd, track_subspace
    from ..plots.dynamics import plot_projected, plot_subspace
    from ..progress import info
    from ..recipe import resolve_recipe

    r = resolve_recipe(args.recipe, args.overrides)
    kw = dict(width=args.width, seed=args.seed, steps=args.steps, every=args.every, k=args.k)
    res = track_subspace(r, **kw)
    out = Path(args.out) if args.out else Path("runs") / r.name / "subspace"
    res.save(out / "subspace.json")
    paths = [plot_subspace(res, out / "subspace.png")]
    proj = None
    if args.projected:
        proj = projected_sgd(r, **kw)
        proj.save(out / "projected.json")
        paths.append(plot_projected(proj, out / "projected.png"))
    if args.json:
        d = res.to_dict()
        if proj is not None:
            d = {"subspace": d, "projected": proj.to_dict()}
        print(json.dumps(d, indent=1))
        return 0
    print(f"width {res.width}, k={res.k}, P={res.num_params}, random k/P = {res.random_expected:.2e}")
    print(f"{'step':>6} {'|Pg|^2/|g|^2':>13} {'|Pg|/|g|':>9} {'random':>9} {'stab(prev)':>10} {'loss':>8} {'acc':>6}")
    for i, t in enumerate(res.steps):
        sp = res.stability_prev[i]
        print(f"{t:>6} {res.overlap_sq[i]:>13.3f} {res.overlap[i]:>9.3f} {res.random_overlap_sq[i]:>9.2e} "
              f"{'-' if sp is None else f'{sp:.3f}':>10} {res.train_loss[i]:>8.4f} {res.test_acc[i]:>6.3f}")
    if proj is not None:
        for v, L in proj.train_loss.items():
            print(f"{v:>10}: train loss {L[0]:.4f} -> {L[-1]:.4f}, test acc {proj.test_acc[v][-1]:.3f}")
    info(f"wrote JSON and {len(paths)} plots in {out}")
    return 0
