"""``lr-phase``: lazy / catapult / divergent phases of full-batch GD vs learning rate and width.

Lewkowycz et al. 2020: learning rates are measured against lambda_0, the NTK's top eigenvalue at init;
the lazy|catapult boundary is predicted at 2/lambda_0 and the maximal rate at 4/lambda_0 for the
two-layer linear net (larger for ReLU nets).  The analysis trains its own members from the recipe, one
init per width, on the first ``n_train`` training examples, then brackets both boundaries by bisection to a
relative tolerance ``tol`` for every seed (each seed with its own lambda_0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fmt
from ..dynamics import LRPhaseResult, lr_phase
from ..dynamics.catapult import PHASES
from ..dynamics.setup import member, subset
from ..ladder import load_recipe_task
from ..plots import figure, save, width_colors
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

PHASE_COLORS = {"lazy": "tab:blue", "catapult": "tab:orange", "divergent": "tab:red"}
PHASE_DIAGRAM, LOSS_CURVES, SHARPNESS = "phase_diagram.png", "loss_curves.png", "sharpness_accuracy.png"
NOTES = ("full-batch GD on the first n_train training examples; lambda_0 is measured on those same n_train examples "
         "(the full batch GD sees); lr grid in units of 2/lambda_0 on the first seed (the phase diagram); boundaries "
         "in units of 1/lambda_0, bisected per width and seed to the relative tolerance tol and averaged over seeds "
         "(lazy/catapult predicted at 2, eta_max at 4 for the two-layer linear model, larger for ReLU nets)")


@dataclass
class LRPhaseOptions:
    """The ``[lr_phase]`` recipe table, the ``widthkit lr-phase`` flags and the keyword arguments."""

    widths: list[int] = opt([], "widths to scan (empty: the recipe's model.widths)")
    lrs: list[float] = opt([0.5, 0.9, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0], "learning rates in units of 2/lambda_0")
    steps: int = opt(200, "full-batch GD steps per run")
    n_train: int = opt(256, "full batch: the first n_train training examples")
    lambda_every: int = opt(5, "track the NTK top eigenvalue every lambda_every steps (0: off)")
    lambda_steps: int = opt(60, "track it during the first lambda_steps steps (0: only at init and at the end)")
    seeds: list[int] = opt([0, 1, 2], "member seeds (inits): the grid runs on the first, every seed is bisected")
    tol: float = opt(0.02, "bisect each boundary to this relative bracket width (0: read them off the grid only)")


def _pm(mean: float | None, std: float | None) -> str:
    return fmt.num(mean) + (f" ± {fmt.num(std)}" if mean is not None and std else "")


@register_analysis
class LRPhase(Analysis):
    name = "lr-phase"
    order = 40
    help = "learning-rate phase diagram (lazy / catapult / divergent) in units of 2/lambda_0, per width"
    Options = LRPhaseOptions
    Result = LRPhaseResult
    smoke = dict(widths=[16], lrs=[0.5, 20.0], steps=5, n_train=32, lambda_steps=0, seeds=[0], tol=0.3)
    needs = "recipe"
    in_study = False

    def compute(self, subject: Subject, options: LRPhaseOptions) -> LRPhaseResult:
        r = subject.recipe
        task = load_recipe_task(r)
        x, y = subset(task, options.n_train)
        return lr_phase(lambda w, s: member(r, w, s, task), (x, y, task.x_test, task.y_test),
                        widths=options.widths or r.model.widths, lrs=options.lrs, steps=options.steps,
                        loss=r.train.loss, lambda_every=options.lambda_every, lambda_steps=options.lambda_steps,
                        seeds=options.seeds, tol=options.tol)

    def plot(self, result: LRPhaseResult, folder: Path) -> list[Path]:
        """Phase diagram; loss curves per phase at the widest width; final sharpness and test accuracy vs lr."""
        folder = Path(folder)
        fig, ax = figure(1, 1, (5.0, 3.4))
        a = ax[0][0]
        for i, wp in enumerate(result.per_width):
            for r in wp.runs:
                a.scatter(r.lr_lambda, i, c=PHASE_COLORS[r.phase], s=60, marker="s")
            est = [x.estimate for x in wp.boundaries if x.estimate is not None]
            a.scatter(est, [i] * len(est), c="k", s=80, marker="|", zorder=3)
        for ph, c in PHASE_COLORS.items():
            a.scatter([], [], c=c, marker="s", label=ph)
        for x, ls in ((2, "--"), (4, ":")):
            a.axvline(x, color="k", ls=ls, lw=0.8)
        a.set_yticks(range(len(result.per_width)), [str(w.width) for w in result.per_width])
        a.set_xscale("log")
        a.set_xlabel(r"learning rate $\times\ \lambda_0$")
        a.set_ylabel("width")
        a.set_title("GD phases (dashed: 2/$\\lambda_0$, dotted: 4/$\\lambda_0$, |: bisected)", fontsize=9)
        a.legend(fontsize=7, loc="upper left")
        paths = [save(fig, folder / PHASE_DIAGRAM)]

        wp = result.per_width[-1]
        fig, ax = figure(3, 1, (3.6, 3.0))
        for j, ph in enumerate(PHASES):
            a = ax[0][j]
            runs = [r for r in wp.runs if r.phase == ph]
            cmap = width_colors(range(max(len(runs), 1)))
            for i, r in enumerate(runs):
                L = np.asarray(r.loss, float)
                a.plot(L / L[0], color=cmap[i], label=f"{r.lr_lambda:.2g}/$\\lambda_0$")
            a.set_yscale("log")
            a.set_title(f"{ph} (width {wp.width})", fontsize=9)
            a.set_xlabel("step")
            a.set_ylabel("loss / initial loss")
            if runs:
                a.legend(fontsize=6)
        paths.append(save(fig, folder / LOSS_CURVES))

        fig, ax = figure(2, 1, (4.2, 3.2))
        a = ax[0][0]
        colors = width_colors([w.width for w in result.per_width])
        for w in result.per_width:
            ok = [r for r in w.runs if r.final_lambda is not None]
            a.plot([r.lr_lambda for r in ok], [r.final_lambda / w.lambda0 for r in ok], "o-", color=colors[w.width],
                   label=f"n={w.width}")
        grid = np.geomspace(min(result.lrs) * 2, max(result.lrs) * 2, 100)
        a.plot(grid, 2 / grid, "k--", lw=0.8, label=r"$2/\eta$")
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel(r"$\eta\,\lambda_0$")
        a.set_ylabel(r"final $\lambda$ / $\lambda_0$")
        a.legend(fontsize=7)
        a = ax[0][1]
        for w in result.per_width:
            ok = [r for r in w.runs if r.test_acc is not None]
            if ok:
                a.plot([r.lr_lambda for r in ok], [r.test_acc for r in ok], "o-", color=colors[w.width],
                       label=f"n={w.width}")
        a.axvline(2, color="k", ls="--", lw=0.8)
        a.set_xscale("log")
        a.set_xlabel(r"$\eta\,\lambda_0$")
        a.set_ylabel("final test accuracy")
        paths.append(save(fig, folder / SHARPNESS))
        return paths

    def blocks(self, result: LRPhaseResult, folder: Path) -> list[Block]:
        folder, pw = Path(folder), result.per_width
        b = Block("lr-phase", f"Learning-rate phases ({result.loss}, {result.steps} full-batch GD steps on "
                  f"{result.n_train} examples)", notes={"convention": result.convention, "notes": NOTES,
                                                         "phase rule": result.classifier})
        n = f"{result.n_train} examples"
        b.tables.append(Table(
            f"Per width, learning rates in units of 1/λ0 (lazy|catapult predicted at 2, η_max at 4 for the "
            f"two-layer linear net); boundaries bisected to {fmt.pct(result.tol)} and averaged over seeds "
            f"{result.seeds} (± std); λ0 of the first seed, measured on {n}",
            ["width", f"λ0 ({n})", "2/λ0", "lazy|catapult", "max stable (grid)", "η_max", "grid phases"],
            [[str(w.width), fmt.num(w.lambda0, 4), fmt.num(w.critical_lr, 4),
              _pm(w.lazy_catapult_boundary, w.lazy_catapult_std), fmt.num(w.max_stable_lr),
              _pm(w.eta_max, w.eta_max_std), " ".join(f"{r.lr_lambda:.3g}:{r.phase[0]}" for r in w.runs)]
             for w in pw]))
        if any(w.boundaries for w in pw):
            b.tables.append(Table(
                f"Bisected boundaries per width and seed: the bracket lo to hi in units of 1/λ0 (λ0 on {n}), "
                "and the extra training runs it cost",
                ["width", "seed", "λ0", "boundary", "lo", "hi", "estimate", "runs", "note"],
                [[str(w.width), str(x.seed), fmt.num(x.lambda0, 4), x.name, fmt.num(x.lo), fmt.num(x.hi),
                  fmt.num(x.estimate), str(x.runs), x.note] for w in pw for x in w.boundaries]))
        bound = [w.lazy_catapult_boundary for w in pw if w.lazy_catapult_boundary is not None]
        emax = [w.eta_max for w in pw if w.eta_max is not None]
        phase = (f"lazy|catapult boundary at ηλ0 = {', '.join(fmt.num(x) for x in bound) or 'not reached'} "
                 f"(prediction: 2) and divergence at ηλ0 = {', '.join(fmt.num(x) for x in emax) or 'not reached'} "
                 f"over widths {[w.width for w in pw]}")
        b.lines.append(f"phase rule: {result.classifier}")
        b.lines.append(phase)

        wide = pw[-1]
        n = {ph: sum(r.phase == ph for r in wide.runs) for ph in PHASES}
        cat = [r.max_loss_ratio for r in wide.runs if r.phase == "catapult"]
        curves = (f"width {wide.width}: {n['lazy']} lazy, {n['catapult']} catapult, {n['divergent']} divergent runs"
                  + (f"; catapult runs first rise up to {fmt.num(max(cat))}× the initial loss" if cat else ""))

        caught = [r for w in pw for r in w.runs if r.phase == "catapult"]
        below = sum(bool(r.final_lambda_below_2_over_lr) for r in caught)
        best = max((r for w in pw for r in w.runs if r.test_acc is not None), key=lambda r: r.test_acc, default=None)
        sharp = ((f"after a catapult the final λ is below 2/η in {below} of {len(caught)} runs" if caught
                  else "no run catapulted")
                 + (f"; best test accuracy {fmt.pct(best.test_acc)} at ηλ0 = {fmt.num(best.lr_lambda)}"
                    if best else ""))
        b.figures = [Figure(folder / name, text) for name, text in
                     ((PHASE_DIAGRAM, phase), (LOSS_CURVES, curves), (SHARPNESS, sharp)) if (folder / name).exists()]
        return [b]
