"""Ensemble bias across widths (Vyas et al. 2023, arXiv 2305.18411).

Two finite-width effects separate a width-N network from its infinite-width limit:

* an initialization-dependent output **variance** V(N) ~ 1/N, which ensembling removes, and
* a **bias of narrower width**: even the infinite ensemble of width-N nets, L_inf(N), is worse
  than one wide net.

Operational definitions (papers.md; the paper's code is not public):

* Ensembles average the network **outputs** before the loss: logits for cross-entropy, raw
  outputs for MSE (``average="outputs"``, the default; this is the averaging under which the
  output variance V(N) is what ensembling removes).  ``average="probs"`` averages softmax
  probabilities instead (cross-entropy only).
* L(K) for K = 1..E members is the loss of the K-member ensemble averaged over K-subsets (all
  of them when there are at most ``n_subsets``, otherwise ``n_subsets`` random ones).
  L_inf(N) is the intercept of a straight-line fit of L(K) in 1/K (``widthkit.fitting.fit_line``).
  For MSE the line is exact and the intercept is the unbiased estimate of the mean-predictor
  loss.  Its error bar is the leave-one-seed-out jackknife (seed sampling) added in quadrature
  to the fit error.
* V(N) is the variance over seeds (ddof=1) of the outputs, averaged over test points and
  output coordinates; for cross-entropy the logits are first centred over classes (softmax
  ignores a common shift).  Error bar: jackknife over seeds.  Its power law in N is fitted on
  log-log axes (Vyas et al. find an exponent of about -1).
* Bias of narrower width: L_inf(N) - L_inf(N_max) and L_inf(N) - L_single(N_max).  Where at
  least four widths allow, L_inf(N) = L_wide + b N^-alpha is fitted by a grid over alpha with
  a weighted linear fit at each alpha.
* Over training (``over_training``): the variance exponent and L_inf(N) at every evaluation step that
  every width has, as one plot against step.  Point-wise agreement with the widest width over training
  lives in the ``consistency`` analysis (:mod:`widthkit.analyses.consistency`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fmt, grid
from ..errors import WidthkitError
from ..fitting import LineFit, fit_line, fit_power_law
from ..plots import figure, loglog_fit_line, save, time_axis, width_colors
from ..progress import track, warn
from ..results import Result
from ..store import analysable_widths
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

AVERAGES = ("outputs", "probs")


# ----------------------------------------------------------------------------- array-level math

def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def _targets_for(outputs: np.ndarray, targets: np.ndarray, loss: str) -> np.ndarray:
    """MSE against class labels uses one-hot targets; everything else is used as given."""
    targets = np.asarray(targets)
    if loss == "mse" and targets.ndim == 1 and outputs.shape[-1] > 1 and targets.dtype.kind in "iu":
        return np.eye(outputs.shape[-1], dtype=np.float64)[targets]
    if loss == "mse" and targets.ndim == 1:
        return targets.reshape(-1, 1).astype(np.float64)
    return targets


def loss_and_error(out: np.ndarray, targets: np.ndarray, loss: str, probs: bool = False) -> tuple[float, float]:
    """Mean test loss and top-1 error of one predictor ``out`` [N, C].

    xent: mean cross-entropy of the logits (or of probabilities when ``probs``).
    mse: mean over points of 0.5 * sum over outputs of (out - y)^2 (the usual 1/2 convention).
    The error is the top-1 error for classification targets, NaN for regression targets.
    """
    out = np.asarray(out, np.float64)
    targets = np.asarray(targets)
    if loss == "xent":
        y = targets.astype(np.int64)
        if probs:
            p = np.clip(out[np.arange(len(y)), y], 1e-300, None)
            l = float(-np.mean(np.log(p)))
        else:
            l = float(np.mean(_logsumexp(out) - out[np.arange(len(y)), y]))
    elif loss == "mse":
        t = _targets_for(out, targets, loss)
        l = float(0.5 * np.mean(np.sum((out - t) ** 2, axis=-1)))
    else:
        raise WidthkitError(f"unknown loss '{loss}'; valid: mse, xent")
    if targets.ndim == 1 and targets.dtype.kind in "iu" and out.shape[-1] > 1:
        e = float(np.mean(np.argmax(out, -1) != targets))
    else:
        e = float("nan")
    return l, e


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def _member_space(outputs: np.ndarray, loss: str, average: str) -> np.ndarray:
    """Per-member quantity that is averaged: outputs (logits) or softmax probabilities."""
    if average not in AVERAGES:
        raise WidthkitError(f"unknown ensemble average '{average}'; valid: {', '.join(AVERAGES)}")
    if average == "probs":
        if loss != "xent":
            raise WidthkitError("average='probs' needs a cross-entropy run; use average='outputs' for mse")
        return _softmax(np.asarray(outputs, np.float64))
    return np.asarray(outputs, np.float64)


def _subsets(n: int, k: int, n_subsets: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """All k-subsets of range(n) when there are at most n_subsets, else n_subsets random ones."""
    if math.comb(n, k) <= n_subsets:
        return list(itertools.combinations(range(n), k))
    return [tuple(sorted(rng.choice(n, size=k, replace=False))) for _ in range(n_subsets)]


@dataclass
class EnsembleCurve(Result):
    """Loss and error of K-member ensembles, K = 1..E, averaged over K-subsets."""

    ks: list[int]
    loss: list[float]
    loss_std: list[float]   # spread over subsets
    error: list[float]
    n_subsets: list[int]    # subsets used per K


def ensemble_curve(outputs, targets, loss: str, n_subsets: int = 64, average: str = "outputs",
                   seed: int = 0) -> EnsembleCurve:
    """L(K) and error(K) for ensembles of K of the E members in ``outputs`` [E, N, C]."""
    outputs = np.asarray(outputs)
    E = outputs.shape[0]
    space = _member_space(outputs, loss, average)
    rng = np.random.default_rng(seed)
    ks, ls, lstd, es, ns = [], [], [], [], []
    for k in range(1, E + 1):
        vals = [loss_and_error(space[list(s)].mean(0), targets, loss, probs=average == "probs")
                for s in _subsets(E, k, n_subsets, rng)]
        v = np.array(vals)
        ks.append(k)
        ls.append(float(v[:, 0].mean()))
        lstd.append(float(v[:, 0].std()))
        es.append(float(v[:, 1].mean()))
        ns.append(len(vals))
    return EnsembleCurve(ks, ls, lstd, es, ns)


@dataclass
class InfiniteEnsemble(Result):
    """L(K) = L_inf + c / K fitted in 1/K."""

    l_inf: float
    l_inf_err: float    # jackknife over seeds (+) fit error, in quadrature
    c: float            # coefficient of 1/K (the variance term)
    c_err: float
    curve: EnsembleCurve


def _fit_inf(curve: EnsembleCurve) -> LineFit:
    return fit_line(1.0 / np.asarray(curve.ks, float), curve.loss)


def infinite_ensemble(outputs, targets, loss: str, n_subsets: int = 64, average: str = "outputs",
                      seed: int = 0, jackknife: bool = True) -> InfiniteEnsemble:
    """Infinite-ensemble loss L_inf from a line fit of L(K) in 1/K, with a jackknife error bar."""
    outputs = np.asarray(outputs)
    E = outputs.shape[0]
    curve = ensemble_curve(outputs, targets, loss, n_subsets, average, seed)
    if E < 2:
        return InfiniteEnsemble(float("nan"), float("nan"), float("nan"), float("nan"), curve)
    fit = _fit_inf(curve)
    jk_err = 0.0
    if jackknife and E >= 3:
        reps = []
        for i in range(E):
            keep = [j for j in range(E) if j != i]
            c = ensemble_curve(outputs[keep], targets, loss, max(8, n_subsets // 4), average, seed + 1 + i)
            reps.append(_fit_inf(c).intercept)
        reps = np.array(reps)
        jk_err = float(np.sqrt((E - 1) / E * np.sum((reps - reps.mean()) ** 2)))
    err = float(np.hypot(jk_err, fit.intercept_err if np.isfinite(fit.intercept_err) else 0.0))
    return InfiniteEnsemble(fit.intercept, err, fit.slope, fit.slope_err, curve)


def _centred(outputs: np.ndarray, loss: str) -> np.ndarray:
    """Logits centred over classes for cross-entropy (softmax ignores a shift); outputs as is for MSE."""
    outputs = np.asarray(outputs, np.float64)
    if loss == "xent":
        return outputs - outputs.mean(-1, keepdims=True)
    return outputs


def output_variance(outputs, loss: str) -> tuple[float, float]:
    """V = variance over seeds (ddof=1) of the outputs, averaged over points and coordinates.

    Returns (V, jackknife standard error over seeds).
    """
    f = _centred(outputs, loss)
    E = f.shape[0]
    if E < 2:
        return float("nan"), float("nan")
    v = float(f.var(0, ddof=1).mean())
    if E < 3:
        return v, float("nan")
    reps = np.array([f[[j for j in range(E) if j != i]].var(0, ddof=1).mean() for i in range(E)])
    return v, float(np.sqrt((E - 1) / E * np.sum((reps - reps.mean()) ** 2)))


@dataclass
class BiasFit(Result):
    """L_inf(N) = l_wide + b * N**-alpha (grid over alpha, weighted line fit at each)."""

    l_wide: float
    l_wide_err: float
    b: float
    b_err: float
    alpha: float
    alpha_lo: float     # range of alpha with chi^2 within one (scaled) unit of the minimum
    alpha_hi: float
    chi2: float
    n: int


def fit_bias(widths, l_inf, l_inf_err=None, alphas=None) -> BiasFit | None:
    """Fit L_inf(N) = L_wide + b N^-alpha; None when fewer than 4 finite points."""
    N = np.asarray(widths, float)
    y = np.asarray(l_inf, float)
    s = None if l_inf_err is None else np.asarray(l_inf_err, float)
    ok = np.isfinite(y) & (N > 0)
    if s is not None:
        ok &= np.isfinite(s) & (s > 0)
    if ok.sum() < 4:
        return None
    N, y = N[ok], y[ok]
    s = None if s is None else s[ok]
    w = np.ones_like(y) if s is None else 1 / s ** 2

    def scan(grid):
        fits = [fit_line(N ** -a, y, s) for a in grid]
        chi2 = np.array([float(np.sum(w * (y - f.intercept - f.slope * N ** -a) ** 2)) for a, f in zip(grid, fits)])
        return fits, chi2

    alphas = np.logspace(-2, math.log10(4.0), 120) if alphas is None else np.asarray(alphas, float)
    fits, chi2 = scan(alphas)
    i = int(np.argmin(chi2))
    # refine around the coarse minimum so the uncertainty interval is resolved
    alphas = np.linspace(alphas[max(i - 3, 0)], alphas[min(i + 3, len(alphas) - 1)], 241)
    fits, chi2 = scan(alphas)
    i = int(np.argmin(chi2))
    dof = max(len(y) - 3, 1)
    tol = max(1.0, chi2[i] / dof)
    inside = alphas[chi2 <= chi2[i] + tol]
    f = fits[i]
    return BiasFit(f.intercept, f.intercept_err, f.slope, f.slope_err, float(alphas[i]),
                   float(inside.min()), float(inside.max()), float(chi2[i]), int(len(y)))


# ----------------------------------------------------------------------------- results

@dataclass
class WidthEnsemble(Result):
    """Everything measured at one width at the analysed step."""

    width: int
    seeds: list[int]            # members used
    excluded_seeds: list[int]   # diverged (or non-finite outputs), left out
    single_loss: float          # mean over seeds
    single_loss_std: float      # spread over seeds
    single_loss_err: float      # standard error of the mean (std / sqrt(E))
    single_error: float
    single_error_std: float
    ensemble: InfiniteEnsemble  # curve L(K), error(K), and the 1/K fit
    variance: float
    variance_err: float
    bias_vs_inf: float          # L_inf(N) - L_inf(N_max)
    bias_vs_single: float       # L_inf(N) - L_single(N_max)
    reaches_wide: bool          # L_inf(N) - err <= L_single(N_max) + its error bar


@dataclass
class OverTraining(Result):
    """The headline numbers at every evaluation step common to all widths."""

    steps: list[int]
    widths: list[int]
    variance_exponent: list[float]      # [step], slope of log V on log N
    variance_exponent_err: list[float]
    l_inf: list[list[float]]            # [width][step]
    l_inf_err: list[list[float]]
    log_time: bool                      # the evaluation grid is log-spaced


@dataclass
class EnsembleBiasResult(Result):
    schema_version = 2
    """Ensemble bias of one grid point at one evaluation step (see the module docstring)."""

    run: str
    step: int
    loss: str
    averaged: str                       # what the ensemble averages (see module doc)
    conventions: dict[str, str]
    widths: list[int]
    skipped_widths: list[int]           # unfinished, or fewer than 2 usable members
    excluded: dict[int, list[int]]      # width -> seeds left out (diverged / non-finite)
    per_width: list[WidthEnsemble]
    variance_fit: LineFit               # log V = intercept + slope log N (Vyas et al.: slope about -1)
    bias_fit: BiasFit | None
    wide_single_loss: float
    wide_single_loss_err: float
    over_training: OverTraining | None


# ----------------------------------------------------------------------------- run-level analysis

def _usable(run, width: int, outputs: np.ndarray) -> np.ndarray:
    """Members that neither diverged nor produced non-finite outputs."""
    ok = ~np.asarray(run.diverged(width), bool).reshape(-1)
    ok &= np.isfinite(outputs.reshape(outputs.shape[0], -1)).all(1)
    return ok


def _resolve_step(run, widths: list[int], step: int | None) -> int | None:
    if step is None:
        return None
    valid = set(int(s) for s in run.logit_steps(widths[0]))
    for w in widths[1:]:
        valid &= set(int(s) for s in run.logit_steps(w))
    if int(step) not in valid:
        shown = ", ".join(str(s) for s in sorted(valid))
        raise WidthkitError(f"step {step} has no stored test outputs at every width; valid steps: {shown}")
    return int(step)


def ensemble_bias(run, **options) -> EnsembleBiasResult:
    """Variance and bias of narrower width on a trained ladder (see module docstring).

    ``run``: a run directory, a Run or a point view; ``options``: fields of :class:`EnsembleBiasOptions`.
    """
    return EnsembleBias().compute(Subject(None, _point(run)), EnsembleBias().options(None, **options))


def _point(run):
    from ..store import open_run
    run = open_run(run) if isinstance(run, (str, Path)) else run
    return run.select(0) if hasattr(run, "select") and len(run.points) == 1 else run


def _ensemble_bias(run, step: int | None, n_subsets: int, average: str, over_training: bool,
                   seed: int) -> EnsembleBiasResult:
    loss = run.loss_name
    if loss not in ("xent", "mse"):
        raise WidthkitError(f"ensemble-bias supports xent and mse runs, not '{loss}'")
    _member_space(np.zeros((1, 1, 2)), loss, average)  # validates `average` early
    widths = analysable_widths(run)
    unfinished = sorted(int(w) for w in (run.unfinished or []))
    step = _resolve_step(run, widths, step)
    targets = np.asarray(run.targets())
    seeds_all = list(run.seeds)

    data, excluded, skipped = {}, {}, list(unfinished)
    for w in widths:
        out = np.asarray(run.logits(w, step), np.float64)
        ok = _usable(run, w, out)
        bad = [seeds_all[i] for i in np.flatnonzero(~ok)]
        if bad:
            excluded[w] = bad
            warn(f"width {w}: leaving out diverged members (seeds {bad})")
        if ok.sum() < 2:
            warn(f"width {w}: fewer than 2 usable members; skipped")
            skipped.append(w)
            continue
        data[w] = (out[ok], [seeds_all[i] for i in np.flatnonzero(ok)])
    widths = [w for w in widths if w in data]
    if not widths:
        raise WidthkitError("no width has 2 or more usable members; ensemble-bias needs at least 2 seeds per width")
    wmax = widths[-1]

    stats = {}
    for w in track(widths, "ensemble fits"):
        out, seeds = data[w]
        le = np.array([loss_and_error(o, targets, loss) for o in out])
        inf = infinite_ensemble(out, targets, loss, n_subsets, average, seed)
        v, verr = output_variance(out, loss)
        stats[w] = (le, inf, v, verr, seeds)

    le_max = stats[wmax][0]
    wide_single = float(le_max[:, 0].mean())
    wide_single_err = float(le_max[:, 0].std(ddof=1) / math.sqrt(len(le_max)))
    l_inf_max = stats[wmax][1].l_inf
    per_width = []
    for w in widths:
        le, inf, v, verr, seeds = stats[w]
        E = len(le)
        reaches = bool(inf.l_inf - inf.l_inf_err <= wide_single + wide_single_err)
        per_width.append(WidthEnsemble(
            w, seeds, excluded.get(w, []), float(le[:, 0].mean()), float(le[:, 0].std(ddof=1)),
            float(le[:, 0].std(ddof=1) / math.sqrt(E)), float(le[:, 1].mean()), float(le[:, 1].std(ddof=1)),
            inf, v, verr, float(inf.l_inf - l_inf_max), float(inf.l_inf - wide_single), reaches))

    V = [p.variance for p in per_width]
    Verr = [p.variance_err for p in per_width]
    variance_fit = fit_power_law(widths, V, Verr if all(np.isfinite(Verr)) else None)
    bf = fit_bias(widths, [p.ensemble.l_inf for p in per_width], [p.ensemble.l_inf_err for p in per_width])

    trend = _over_training(run, widths, data, targets, loss, n_subsets, average, seed) if over_training else None

    step_out = int(step) if step is not None else int(run.logit_steps(wmax)[-1])
    conventions = {
        "ensemble": ("mean of logits before the softmax" if loss == "xent" else "mean of outputs")
        if average == "outputs" else "mean of softmax probabilities",
        "loss": "mean cross-entropy" if loss == "xent" else "mean over points of 0.5*sum_k (f_k - y_k)^2",
        "l_inf": "intercept of a line fit of L(K) in 1/K; error = jackknife over seeds (+) fit error",
        "variance": "variance over seeds (ddof=1) of " + ("class-centred logits" if loss == "xent" else "outputs")
                    + ", averaged over test points and output coordinates; error = jackknife over seeds",
        "error_bars": "single-model error bar = standard error of the mean over seeds",
    }
    return EnsembleBiasResult(str(getattr(run, "path", "")), step_out, loss, average, conventions, widths,
                              sorted(skipped), {int(k): v for k, v in excluded.items()}, per_width,
                              variance_fit, bf, wide_single, wide_single_err, trend)


def _over_training(run, widths, data, targets, loss, n_subsets, average, seed) -> OverTraining:
    """Variance exponent and L_inf(N) at every evaluation step common to all widths (usable members only)."""
    steps = sorted(set.intersection(*(set(int(s) for s in run.logit_steps(w)) for w in widths)))
    seeds_all = list(run.seeds)
    slope, slope_err = [], []
    l_inf = [[float("nan")] * len(steps) for _ in widths]
    l_err = [[float("nan")] * len(steps) for _ in widths]
    for j, s in enumerate(track(steps, "ensemble fits over training")):
        V, Verr = [], []
        for i, w in enumerate(widths):
            out = np.asarray(run.logits(w, s), np.float64)[[seeds_all.index(x) for x in data[w][1]]]
            inf = infinite_ensemble(out, targets, loss, n_subsets, average, seed)
            l_inf[i][j], l_err[i][j] = inf.l_inf, inf.l_inf_err
            v, verr = output_variance(out, loss)
            V.append(v)
            Verr.append(verr)
        vf = fit_power_law(widths, V, Verr if all(np.isfinite(Verr)) and all(e > 0 for e in Verr) else None)
        slope.append(vf.slope)
        slope_err.append(vf.slope_err)
    recipe = getattr(run, "recipe", None)
    log_time = recipe is not None and grid.is_log(recipe.train.eval_every)
    return OverTraining(steps, list(widths), slope, slope_err, l_inf, l_err, log_time)


# ----------------------------------------------------------------------------- plots

def plot_loss_vs_width(res, path) -> Path:
    """Single-model loss (mean +- std over seeds), the all-member ensemble and L_inf vs width."""
    fig, axes = figure(1, 1, size=(5.0, 3.6))
    ax = axes[0][0]
    W = np.array(res.widths, float)
    single = np.array([p.single_loss for p in res.per_width])
    sstd = np.array([p.single_loss_std for p in res.per_width])
    ens = np.array([p.ensemble.curve.loss[-1] for p in res.per_width])
    linf = np.array([p.ensemble.l_inf for p in res.per_width])
    lerr = np.array([p.ensemble.l_inf_err for p in res.per_width])
    E = [len(p.seeds) for p in res.per_width]
    ax.errorbar(W, single, sstd, marker="o", capsize=3, label="single model (mean, std over seeds)")
    ax.plot(W, ens, "s-", label=f"ensemble of all members (E={min(E)}..{max(E)})")
    ax.errorbar(W, linf, lerr, marker="^", capsize=3, label="infinite ensemble L_inf (fit in 1/K)")
    ax.axhline(res.wide_single_loss, color="gray", ls=":", label=f"single width-{res.widths[-1]}")
    bf = res.bias_fit
    if bf is not None:
        x = np.geomspace(W.min(), W.max(), 100)
        ax.plot(x, bf.l_wide + bf.b * x ** -bf.alpha, "k--", lw=1,
                label=f"L_inf = {bf.l_wide:.3g} + b N^-{bf.alpha:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width N")
    ax.set_ylabel(f"test loss ({res.loss})")
    ax.set_title(f"step {res.step}")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_loss_vs_k(res, path) -> Path:
    """L(K) against 1/K per width with the fitted line and its intercept L_inf."""
    fig, axes = figure(1, 1, size=(5.0, 3.6))
    ax = axes[0][0]
    colors = width_colors(res.widths)
    for p in res.per_width:
        c = colors[p.width]
        inv = 1.0 / np.array(p.ensemble.curve.ks, float)
        ax.errorbar(inv, p.ensemble.curve.loss, p.ensemble.curve.loss_std, marker="o", ls="none",
                    color=c, capsize=2, ms=3, label=f"N={p.width}")
        x = np.linspace(0, 1, 20)
        ax.plot(x, p.ensemble.l_inf + p.ensemble.c * x, "-", color=c, lw=1)
    ax.set_xlabel("1 / K (ensemble size)")
    ax.set_ylabel(f"ensemble test loss ({res.loss})")
    ax.set_xlim(left=0)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("L(K) = L_inf + c/K")
    return save(fig, path)


def plot_variance(res, path) -> Path:
    """Output variance over seeds against width, log-log, with the fitted power law."""
    fig, axes = figure(1, 1, size=(4.6, 3.6))
    ax = axes[0][0]
    W = np.array(res.widths, float)
    V = np.array([p.variance for p in res.per_width])
    Ve = np.array([p.variance_err for p in res.per_width])
    ax.errorbar(W, V, np.nan_to_num(Ve), marker="o", ls="none", capsize=3, label="variance over seeds")
    vf = res.variance_fit
    if np.isfinite(vf.slope):
        loglog_fit_line(ax, W, vf.slope, vf.intercept, label=f"slope {vf.slope:.2f} +- {vf.slope_err:.2f}")
        loglog_fit_line(ax, W, -1.0, float(np.log(V[-1] * W[-1])), color="gray", lw=0.8, label="slope -1")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("width N")
    ax.set_ylabel("output variance")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_over_training(res, path) -> Path:
    """The variance exponent and L_inf(N) against step (one line per width)."""
    ot = res.over_training
    fig, axes = figure(2, 1, size=(4.4, 3.3))
    ax = axes[0][0]
    ax.errorbar(ot.steps, ot.variance_exponent, np.nan_to_num(ot.variance_exponent_err), marker="o", ms=3,
                capsize=2, label="fitted exponent")
    ax.axhline(-1.0, color="gray", ls=":", label="N^-1 (Vyas et al.)")
    ax.set_ylabel("output variance exponent")
    ax.legend(fontsize=7)
    colors = width_colors(ot.widths)
    for w, li, le in zip(ot.widths, ot.l_inf, ot.l_inf_err):
        axes[0][1].errorbar(ot.steps, li, np.nan_to_num(le), marker="o", ms=2.5, capsize=2, color=colors[w],
                            label=f"N={w}")
    axes[0][1].set_ylabel(f"L_inf(N) ({res.loss})")
    if np.nanmin(np.array(ot.l_inf, float)) > 0:
        axes[0][1].set_yscale("log")
    axes[0][1].legend(fontsize=6)
    for a in axes[0]:
        time_axis(a, ot.log_time)
    return save(fig, path)


# ----------------------------------------------------------------------------- the registered analysis

@dataclass
class EnsembleBiasOptions:
    """Options of ``ensemble-bias`` (recipe table ``[ensemble_bias]``)."""

    step: int = opt(-1, "evaluation step to analyse (-1: the final outputs)")
    subsets: int = opt(64, "K-subsets averaged per ensemble size K")
    average: str = opt("outputs", "what ensembles average: outputs (logits) or probs (softmax, xent only)")
    over_training: bool = opt(True, "also fit the variance exponent and L_inf(N) at every evaluation step")
    seed: int = opt(0, "seed of the subset and split sampling")


@register_analysis
class EnsembleBias(Analysis):
    name = "ensemble-bias"
    order = 10
    help = "narrow ensembles vs one wide net: output variance ~ 1/width, bias of narrower width, over training"
    Options = EnsembleBiasOptions
    Result = EnsembleBiasResult
    smoke = {"subsets": 4}

    def compute(self, subject: Subject, o: EnsembleBiasOptions) -> EnsembleBiasResult:
        return _ensemble_bias(subject.require_point(self.name), None if o.step < 0 else o.step, o.subsets,
                              o.average, o.over_training, o.seed)

    def plot(self, res: EnsembleBiasResult, folder: Path) -> list[Path]:
        folder = Path(folder)
        paths = [plot_loss_vs_width(res, folder / "ensemble_loss_vs_width.png"),
                 plot_loss_vs_k(res, folder / "ensemble_loss_vs_k.png"),
                 plot_variance(res, folder / "ensemble_variance.png")]
        if res.over_training is not None:
            paths.append(plot_over_training(res, folder / "ensemble_over_training.png"))
        return paths

    def blocks(self, res: EnsembleBiasResult, folder: Path) -> list[Block]:
        pw = res.per_width
        b = Block(self.name, f"Ensemble bias at step {res.step} ({res.loss}, ensembles average {res.averaged})",
                  notes=dict(res.conventions))
        b.tables.append(Table(
            "Per width: single models, ensembles, infinite-ensemble loss L_inf and output variance",
            ["width", "members", "single loss (mean ± sd)", "single error", "ensemble (all) loss", "L_inf",
             "variance", "L_inf − single(widest)", "reaches widest"],
            [[str(p.width), str(len(p.seeds)), fmt.pm(p.single_loss, p.single_loss_std), fmt.pct(p.single_error),
              fmt.num(p.ensemble.curve.loss[-1]), fmt.pm(p.ensemble.l_inf, p.ensemble.l_inf_err),
              fmt.pm(p.variance, p.variance_err), fmt.num(p.bias_vs_single), "yes" if p.reaches_wide else "no"]
             for p in pw]))
        readings = {"ensemble_variance.png": _variance_reading(res), "ensemble_loss_vs_width.png": _width_reading(res),
                    "ensemble_loss_vs_k.png": _k_reading(res)}
        if res.over_training is not None:
            readings["ensemble_over_training.png"] = _over_training_reading(res.over_training)
        b.lines = [readings["ensemble_variance.png"], readings["ensemble_loss_vs_width.png"]]
        b.figures = [Figure(Path(folder) / name, text) for name, text in
                     sorted(readings.items(), key=lambda kv: _FIGURE_ORDER.index(kv[0]))]
        return [b]


_FIGURE_ORDER = ["ensemble_loss_vs_width.png", "ensemble_loss_vs_k.png", "ensemble_variance.png",
                 "ensemble_over_training.png"]


def _variance_reading(res: EnsembleBiasResult) -> str:
    lo, hi, vf = res.per_width[0], res.per_width[-1], res.variance_fit
    if not math.isfinite(vf.slope):
        return f"output variance {fmt.num(lo.variance)} at N={lo.width} (too few widths for a power law)"
    err = f" ± {vf.slope_err:.2f}" if vf.n > 2 else " (two widths: no error bar)"
    return (f"output variance {'falls' if vf.slope < 0 else 'grows'} as N^{vf.slope:.2f}{err}, from "
            f"{fmt.num(lo.variance)} at N={lo.width} to {fmt.num(hi.variance)} at N={hi.width} "
            "(prediction: N^-1, Vyas et al. 2023)")


def _width_reading(res: EnsembleBiasResult) -> str:
    pw, lo, hi = res.per_width, res.per_width[0], res.per_width[-1]
    s = (f"single-model test loss {fmt.num(lo.single_loss)} at N={lo.width} and {fmt.num(hi.single_loss)} at "
         f"N={hi.width}")
    if len(pw) > 1:
        miss = [p.width for p in pw[:-1] if not p.reaches_wide]
        s += (f"; infinite ensembles of widths {miss} stay above the single width-{hi.width} model (loss "
              f"{fmt.pm(res.wide_single_loss, res.wide_single_loss_err, 4)}): a bias of narrower width" if miss else
              f"; every narrower infinite ensemble reaches the single width-{hi.width} model within error bars")
    bf = res.bias_fit
    if bf is not None:
        s += (f"; L_inf(N) = {fmt.num(bf.l_wide, 4)} + {fmt.num(bf.b)}·N^-{bf.alpha:.2f} "
              f"(alpha in [{bf.alpha_lo:.2f}, {bf.alpha_hi:.2f}])")
    return s


def _k_reading(res: EnsembleBiasResult) -> str:
    lo, hi = res.per_width[0], res.per_width[-1]
    gain = [p.ensemble.curve.loss[0] - p.ensemble.curve.loss[-1] for p in (lo, hi)]
    return (f"ensembling {len(hi.ensemble.curve.ks)} members lowers the loss by {fmt.num(gain[0])} at N={lo.width} "
            f"and by {fmt.num(gain[1])} at N={hi.width}; the 1/K coefficient (the variance term) is "
            f"{fmt.num(lo.ensemble.c)} → {fmt.num(hi.ensemble.c)}")


def _over_training_reading(ot: OverTraining) -> str:
    """The variance exponent and the bias of narrower width at the first and last steps."""
    def at(j):
        gap = ot.l_inf[0][j] - ot.l_inf[-1][j]
        return (f"step {ot.steps[j]}: exponent {ot.variance_exponent[j]:.2f}, L_inf(N={ot.widths[0]}) - "
                f"L_inf(N={ot.widths[-1]}) = {fmt.num(gap)}")
    return f"over training, {at(0)}; {at(len(ot.steps) - 1)}" if len(ot.steps) > 1 else at(0)
