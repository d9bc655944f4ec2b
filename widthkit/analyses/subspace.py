"""``subspace``: the gradient's overlap with the top-k Hessian eigenspace over training, and projected SGD.

Gur-Ari, Roberts & Dyer 2018: after a short warm-up most of the gradient lies in the top-k Hessian
eigenspace (k = number of classes).  With ``projected``, Song, Ahn & Yun 2024: SGD restricted to that
subspace (top-only) stalls while SGD with it removed (bulk-only) trains about as well as plain SGD.
The analysis trains one member of the recipe with plain SGD at the recipe's lr and batch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fmt
from ..dynamics import ProjectedSGD, SubspaceTrack, projected_sgd, track_subspace
from ..plots import figure, save
from ..results import Result
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

SUBSPACE, PROJECTED = "subspace.png", "projected.png"


@dataclass
class SubspaceOptions:
    """The ``[subspace]`` recipe table, the ``widthkit subspace`` flags and the keyword arguments."""

    width: int = opt(0, "width of the member (0: the recipe's narrowest)")
    seed: int = opt(0, "member seed (init and minibatch order)")
    steps: int = opt(0, "SGD steps (0: the recipe's train.steps)")
    every: int = opt(0, "measure every N steps (0: steps/20)")
    k: int = opt(0, "subspace dimension (0: the number of classes)")
    hessian_batch: int = opt(512, "Hessian and gradient on the first N training examples")
    projected: bool = opt(False, "also train top-only and bulk-only projected SGD (Song, Ahn & Yun 2024)")
    refresh: int = opt(10, "projected SGD recomputes the top subspace every N steps")


@dataclass
class SubspaceResult(Result):
    """The overlap over training, and the projected-SGD loss curves when ``projected`` was asked for."""

    track: SubspaceTrack
    projected: ProjectedSGD | None = None


@register_analysis
class Subspace(Analysis):
    name = "subspace"
    order = 50
    help = "overlap of the gradient with the top-k Hessian eigenspace over training (and projected SGD)"
    Options = SubspaceOptions
    Result = SubspaceResult
    smoke = dict(steps=4, every=2, hessian_batch=64, projected=True, refresh=2)
    needs = "recipe"
    in_study = False

    def compute(self, subject: Subject, options: SubspaceOptions) -> SubspaceResult:
        kw = dict(width=options.width, seed=options.seed, steps=options.steps, every=options.every, k=options.k,
                  hessian_batch=options.hessian_batch)
        track = track_subspace(subject.recipe, **kw)
        proj = projected_sgd(subject.recipe, refresh=options.refresh, **kw) if options.projected else None
        return SubspaceResult(track, proj)

    def plot(self, result: SubspaceResult, folder: Path) -> list[Path]:
        """Overlap with the top-k subspace vs a random k-dim one, and subspace stability; projected SGD."""
        folder, t = Path(folder), result.track
        fig, ax = figure(2, 1, (4.2, 3.2))
        a = ax[0][0]
        a.plot(t.steps, t.overlap_sq, "o-", label=r"top-$k$: $\|P_k g\|^2/\|g\|^2$")
        a.plot(t.steps, t.overlap, "s-", ms=3, label=r"top-$k$: $\|P_k g\|/\|g\|$")
        a.plot(t.steps, t.random_overlap_sq, "x-", color="gray", label="random k-dim subspace")
        a.axhline(t.random_expected, color="gray", ls=":", lw=0.8)
        a.set_yscale("log")
        a.set_xlabel("step")
        a.set_ylabel("gradient fraction")
        a.set_title(f"width {t.width}, k={t.k}, P={t.num_params}", fontsize=9)
        a.legend(fontsize=7)
        a = ax[0][1]
        a.plot(t.steps[1:], t.stability_prev[1:], "o-", label="vs previous")
        a.plot(t.steps, t.stability_final, "s-", label="vs final")
        a.set_ylim(0, 1.05)
        a.set_xlabel("step")
        a.set_ylabel("subspace stability")
        a.legend(fontsize=7)
        paths = [save(fig, folder / SUBSPACE)]
        p = result.projected
        if p is not None:
            fig, ax = figure(2, 1, (4.2, 3.2))
            for v, L in p.train_loss.items():
                ax[0][0].plot(p.steps, L, label=v)
                ax[0][1].plot(p.steps, p.test_acc[v], label=v)
            ax[0][0].set_yscale("log")
            ax[0][0].set_xlabel("step")
            ax[0][0].set_ylabel("train loss")
            ax[0][0].set_title(f"projected SGD, k={p.k}", fontsize=9)
            ax[0][0].legend(fontsize=7)
            ax[0][1].set_xlabel("step")
            ax[0][1].set_ylabel("test accuracy")
            paths.append(save(fig, folder / PROJECTED))
        return paths

    def blocks(self, result: SubspaceResult, folder: Path) -> list[Block]:
        folder, t = Path(folder), result.track
        b = Block("subspace", f"Gradient in the top Hessian subspace (width {t.width}, k={t.k}, "
                  f"{t.num_params} parameters)",
                  notes={"notes": f"plain SGD at lr {fmt.num(t.lr)} (momentum and schedule ignored), batch size "
                                  f"{t.batch_size}, with the parameterization's lr scales; Hessian and gradient on "
                                  f"the first {t.hessian_batch} training examples"})
        idx = sorted(set(np.linspace(0, len(t.steps) - 1, min(len(t.steps), 10)).round().astype(int).tolist()))
        b.tables.append(Table(
            "Overlap ‖P_k g‖²/‖g‖² of the gradient with the top-k eigenspace (some of the measured steps)",
            ["step", "overlap", "random k-dim", "stability vs previous", "train loss", "test acc"],
            [[str(t.steps[i]), fmt.num(t.overlap_sq[i]), fmt.num(t.random_overlap_sq[i]),
              fmt.num(t.stability_prev[i]), fmt.num(t.train_loss[i], 4), fmt.pct(t.test_acc[i])] for i in idx]))
        line = (f"after step {t.steps[-1]} the gradient lies {fmt.pct(t.overlap_sq[-1])} in the top-{t.k} Hessian "
                f"subspace (mean over training {fmt.pct(np.nanmean(np.asarray(t.overlap_sq, float)))}; a random "
                f"{t.k}-dim subspace holds k/P = {t.random_expected:.1e})")
        b.lines.append(line)
        figures = [(SUBSPACE, line)]
        p = result.projected
        if p is not None:
            b.tables.append(Table(
                f"Projected SGD (top-{p.k} eigenspace refreshed every {p.refresh} steps)",
                ["variant", "train loss at start", f"train loss at step {p.steps[-1]}", "test acc"],
                [[v, fmt.num(L[0], 4), fmt.num(L[-1], 4), fmt.pct(p.test_acc[v][-1])]
                 for v, L in p.train_loss.items()]))
            figures.append((PROJECTED, f"train loss after {p.steps[-1]} steps: "
                            + ", ".join(f"{v} {fmt.num(L[-1], 4)}" for v, L in p.train_loss.items())))
        b.figures = [Figure(folder / name, text) for name, text in figures if (folder / name).exists()]
        return [b]
