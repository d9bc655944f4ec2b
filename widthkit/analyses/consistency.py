"""Consistency across widths over training (Vyas et al. 2023, arXiv 2305.18411).

Every measure compares each width with the widest width N_max of the ladder, step by step:

* test loss (mean over seeds, every evaluation step); distance |L(N) - L(N_max)| / L(N_max);
* point-wise test outputs (every evaluation step): mean squared distance between outputs (per output
  coordinate, centred logits for cross-entropy) and top-1 agreement, averaged over pairs of *different* seeds
  (so the widest width against itself gives the seed-to-seed floor); and for ensembles, the mean output of one
  half of the seeds at width N against the other half at N_max, averaged over random splits.  Distance: the
  half-ensembles' mean squared output distance over the centred targets' mean square (mse), or 1 - their
  top-1 agreement over that of N_max's own half-ensembles (xent);
* representations: debiased linear CKA (:func:`widthkit.similarity.cka`) of each hidden layer with the same
  layer of N_max on ``n_inputs`` fixed test inputs, averaged over pairs of different seeds (so N_max against
  itself gives the seed-to-seed ceiling, below 1 at finite width); distance 1 - CKA(N) / CKA(N_max);
* preactivation distributions: the 1-Wasserstein distance between the pooled (all seeds, units and inputs)
  values of a layer at N and at N_max, over the standard deviation of N_max's values.  Hidden layers are the
  outputs of every Linear/Conv module before the classifier; sp, ntk and mup all keep their coordinates of
  order one, so raw values are compared;
* sharpness: the top eigenvalue of the training-loss Hessian (Lanczos, on ``hessian_examples`` training
  examples, in the per-parameter learning-rate metric ``S^1/2 H S^1/2``), against the edge of stability
  2(1 + momentum)/lr of SGD (Cohen et al. 2021); distance |lambda(N) - lambda(N_max)| / lambda(N_max);
* the spectral view of the bias of narrower width (Vyas et al., section 6): at the end of training (or at
  snapshot ``step``), the eigenspectrum of the learned kernel, the after-training NTK averaged over seeds
  (ensemble NTK; or the last hidden layer's feature kernel), on ``kernel_inputs`` test inputs, and the
  cumulative power C(k) of the test targets in its top-k eigenvectors (task-model alignment).

The representation, preactivation and sharpness measures read weight snapshots (``train.snapshots``), at the
snapshot steps every width has.  A width agrees with N_max "until step t" when its distance stays within
``tolerance`` at every step up to t.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlases.hooks import extract_features

from .. import fmt, grid
from .. import similarity as S
from ..errors import WidthkitError, unknown
from ..plots import figure, save, time_axis, width_colors
from ..progress import track
from ..results import Result
from ..store import analysable_widths
from ..validate import PositiveInt
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis
from .ensemble_bias import _centred, _member_space, _point


@dataclass
class ConsistencyOptions:
    """Options of ``consistency`` (recipe table ``[consistency]``)."""

    tolerance: float = opt(0.1, "largest distance to the widest width that still counts as agreeing")
    n_inputs: int = opt(256, "fixed test inputs for the representations and preactivations")
    layers: list[str] = opt([], "hidden layers to compare (default: every Linear/Conv before the classifier)")
    sharpness: bool = opt(True, "measure the top Hessian eigenvalue at every snapshot")
    hessian_examples: int = opt(256, "training examples of the Hessian's loss")
    hessian_seeds: int = opt(2, "seeds per width whose sharpness is measured")
    kernel: str = opt("ntk", "learned kernel of the spectral view: ntk (after-kernel, seed-averaged) or features")
    kernel_inputs: int = opt(128, "test inputs of the learned kernel")
    step: int = opt(-1, "snapshot step of the spectral view (-1: the end of training)")
    splits: PositiveInt = opt(8, "random half-splits of the seeds for the ensemble agreement")
    seed: int = opt(0, "seed of the splits and of Lanczos")


@dataclass
class Measure(Result):
    """One measure against step, per width ([width][step]), and its distance to the widest width."""

    name: str
    steps: list[int]
    values: list[list[float]]
    distance: list[list[float]]
    until: list[int]            # per width: last step of the leading run within tolerance (-1: not even the first)


@dataclass
class Spectrum(Result):
    """The learned kernel of one width at the end of training (eigenvalues share of the trace, descending)."""

    width: int
    eigenvalues: list[float]
    power: list[float]          # C(k), k = 1..n: share of the target's power in the top-k eigenvectors


@dataclass
class ConsistencyResult(Result):
    run: str
    loss: str
    widths: list[int]
    reference_width: int
    tolerance: float
    log_time: bool              # the step grid is log-spaced: plots use a log time axis
    layers: list[str]
    measures: list[Measure]
    agreement: Agreement        # point-wise agreement in full (single members and half-ensembles)
    edge_of_stability: float    # 2(1 + momentum)/lr for SGD; NaN for Adam (no such threshold)
    kernel: str
    spectrum_step: int          # the step of the spectral view
    spectra: list[Spectrum]
    conventions: dict[str, str]


# ----------------------------------------------------------------------------- point-wise agreement

def pair_agreement(a, b, loss: str, same_members: bool) -> tuple[float, float]:
    """Mean squared distance (per output coordinate) and top-1 agreement between the members of
    ``a`` [E, N, C] and ``b`` [E', N, C], averaged over member pairs.

    ``same_members``: ``a`` and ``b`` hold the same seeds (comparing a width with itself, or
    seed-matched widths); then pairs of one seed with itself are left out.
    """
    fa, fb = _centred(a, loss), _centred(b, loss)
    Ea, Eb = fa.shape[0], fb.shape[0]
    C = fa.shape[-1]
    # squared distance of every pair: |a|^2 + |b|^2 - 2 a.b, averaged over points and coordinates
    na = (fa ** 2).sum(-1).mean(-1)
    nb = (fb ** 2).sum(-1).mean(-1)
    dot = np.einsum("snc,tnc->st", fa, fb) / fa.shape[1]
    d2 = (na[:, None] + nb[None, :] - 2 * dot) / C
    if C > 1:
        pa = np.eye(C)[np.argmax(fa, -1)]
        pb = np.eye(C)[np.argmax(fb, -1)]
        agree = np.einsum("snc,tnc->st", pa, pb) / fa.shape[1]
    else:
        agree = np.full_like(d2, np.nan)
    mask = np.ones((Ea, Eb), bool)
    if same_members:
        np.fill_diagonal(mask, False)
    if not mask.any():
        return float("nan"), float("nan")
    return float(np.maximum(d2[mask], 0).mean()), float(agree[mask].mean())


def ensemble_agreement(a, seeds_a, b, seeds_b, loss: str, n_splits: int = 8, seed: int = 0,
                       average: str = "outputs") -> tuple[float, float, int]:
    """Agreement between ensembles on disjoint seed halves: mean of half A at one width against
    mean of half B at the other.  Returns (msd, top-1 agreement, ensemble size)."""
    common = sorted(set(seeds_a) & set(seeds_b))
    h = len(common) // 2
    if h < 1:
        return float("nan"), float("nan"), 0
    ia = {s: i for i, s in enumerate(seeds_a)}
    ib = {s: i for i, s in enumerate(seeds_b)}
    sa, sb = _member_space(a, loss, average), _member_space(b, loss, average)
    rng = np.random.default_rng(seed)
    d2s, ags = [], []
    for _ in range(n_splits):
        perm = rng.permutation(common)
        A, B = perm[:h], perm[h:2 * h]
        for X, Y in ((A, B), (B, A)):
            ea = sa[[ia[s] for s in X]].mean(0, keepdims=True)
            eb = sb[[ib[s] for s in Y]].mean(0, keepdims=True)
            if average == "probs":  # compare in log-probability space, like logits
                ea, eb = np.log(np.clip(ea, 1e-300, None)), np.log(np.clip(eb, 1e-300, None))
            d2, ag = pair_agreement(ea, eb, loss, same_members=False)
            d2s.append(d2)
            ags.append(ag)
    return float(np.mean(d2s)), float(np.mean(ags)), h


@dataclass
class Agreement(Result):
    """Point-wise agreement with the widest width over training ([width][step] lists)."""

    steps: list[int]
    widths: list[int]
    reference_width: int
    single_msd: list[list[float]]       # [width][step]
    single_top1: list[list[float]]
    ensemble_msd: list[list[float]]
    ensemble_top1: list[list[float]]
    ensemble_size: list[int]            # members per half-ensemble, per width


def output_agreement(run, seeds: dict[int, list[int]], n_splits: int = 8, seed: int = 0,
                     average: str = "outputs") -> Agreement:
    """Agreement of every width's stored test outputs with the widest width's, at every evaluation step common
    to all widths.  ``seeds``: width -> the seeds to use (e.g. the non-diverged ones); members with non-finite
    outputs at a step are left out there."""
    widths = sorted(seeds)
    wmax = widths[-1]
    steps = sorted(set.intersection(*(set(int(s) for s in run.logit_steps(w)) for w in widths)))
    loss = run.loss_name
    res = {k: [[float("nan")] * len(steps) for _ in widths] for k in ("smsd", "stop", "emsd", "etop")}
    size = [0] * len(widths)
    seeds_all = list(run.seeds)
    for j, s in enumerate(track(steps, "agreement over training")):
        outs = {}
        for w in widths:
            o = np.asarray(run.logits(w, s), np.float64)[[seeds_all.index(x) for x in seeds[w]]]
            fin = np.isfinite(o.reshape(o.shape[0], -1)).all(1)
            outs[w] = (o[fin], [x for x, f in zip(seeds[w], fin) if f])
        ref, ref_seeds = outs[wmax]
        for i, w in enumerate(widths):
            o, sd = outs[w]
            if len(o) == 0 or len(ref) == 0:
                continue
            res["smsd"][i][j], res["stop"][i][j] = pair_agreement(o, ref, loss, same_members=(w == wmax))
            res["emsd"][i][j], res["etop"][i][j], size[i] = ensemble_agreement(o, sd, ref, ref_seeds, loss,
                                                                               n_splits, seed, average)
    return Agreement(steps, widths, wmax, res["smsd"], res["stop"], res["emsd"], res["etop"], size)


# ----------------------------------------------------------------------------- measures

def agreement_horizon(steps: list[int], distance: list[float], tol: float) -> int:
    """The last step of the leading run of steps whose distance is within ``tol`` (-1 if the first is not)."""
    last = -1
    for s, d in zip(steps, distance):
        if not (d <= tol):  # NaN counts as leaving
            break
        last = s
    return last


def _measure(name: str, steps: list[int], values, distance, tol: float) -> Measure:
    values = [[float(v) for v in row] for row in values]
    distance = [[float(v) for v in row] for row in distance]
    return Measure(name, [int(s) for s in steps], values, distance,
                   [agreement_horizon(steps, row, tol) for row in distance])


def hidden_layers(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv modules before the classifier: their outputs are the hidden preactivations."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m is not head]


def _relative(values: np.ndarray) -> np.ndarray:
    """|v(N) - v(N_max)| / |v(N_max)| for values [width, step] (the widest last)."""
    ref = values[-1:]
    return np.abs(values - ref) / np.abs(ref)


def _representations(run, widths, seeds, steps, layers, x) -> tuple[dict, dict]:
    """CKA with the widest width and preactivation W1 distance, each {layer: [width][step]}."""
    W, T = len(widths), len(steps)
    cka = {name: np.full((W, T), np.nan) for name in layers}
    w1 = {name: np.full((W, T), np.nan) for name in layers}
    for j, step in enumerate(track(steps, "representations at each snapshot")):
        feats = {w: {s: _features(run.load_member(w, s, step=step), x, layers) for s in seeds[w]} for w in widths}
        ref = feats[widths[-1]]
        grams_ref = {name: {s: S.gram(ref[s][name]) for s in ref} for name in layers}
        for i, w in enumerate(widths):
            for name in layers:
                grams = {s: S.gram(feats[w][s][name]) for s in feats[w]}
                vals = [S.gram_cka(grams[a], grams_ref[name][b]) for a, b in itertools.product(grams, ref) if a != b]
                cka[name][i, j] = np.nanmean(vals) if vals else np.nan
                pooled = np.concatenate([feats[w][s][name].ravel() for s in feats[w]])
                pooled_ref = np.concatenate([ref[s][name].ravel() for s in ref])
                scale = pooled_ref.std()
                w1[name][i, j] = S.wasserstein1(pooled, pooled_ref) / scale if scale > 0 else np.nan
    return cka, w1


def _features(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, np.ndarray]:
    return {name: extract_features(model, x, name) for name in layers}


def _lr_scales(run, width: int) -> dict[str, float]:
    """Per-parameter lr scales from the stored parameter table (its JSON, as ``ParamTable.lr_scales``)."""
    return {r["name"]: r["lr_scale"] for r in run.param_table(width)["rules"]}


def _sharpness(run, widths, seeds, steps, data, loss: str, seed: int) -> np.ndarray:
    """Top Hessian eigenvalue [width, step], mean over the measured seeds."""
    from ..dynamics.hessian import hessian_top_eigs
    out = np.full((len(widths), len(steps)), np.nan)
    for j, step in enumerate(track(steps, "sharpness at each snapshot")):
        for i, w in enumerate(widths):
            scales = _lr_scales(run, w)
            vals = [hessian_top_eigs(run.load_member(w, s, step=step), loss, data, 1, lr_scales=scales, tol=1e-4,
                                     max_iter=100, seed=seed).eigenvalues[0] for s in seeds[w]]
            out[i, j] = float(np.mean(vals))
    return out


NTK_MAX_GB = 2.0  # Jacobians of the widest member on the kernel inputs, held at once by widthkit.dynamics.ntk


def ntk_bytes(run, n_inputs: int) -> int:
    """Bytes of the widest member's Jacobians [n_inputs, outputs, parameters] in float32."""
    table = run.param_table(run.widths[-1])["rules"]
    params = sum(math.prod(r["shape"]) for r in table)
    return 4 * n_inputs * run.logits(run.widths[-1]).shape[-1] * params


def _spectra(run, widths, seeds, x, y, kind: str, step: int | None) -> list[Spectrum]:
    """The learned kernel's spectrum and task-model alignment per width, members read at ``step`` (None: the end)."""
    from ..dynamics.ntk import ntk
    out = []
    for w in track(widths, f"{kind} kernel spectrum"):
        kernels = []
        for s in seeds[w]:
            model = run.load_member(w, s, step=step)
            if kind == "ntk":
                kernels.append(ntk(model, x, lr_scales=_lr_scales(run, w), mode="trace").double().numpy())
            else:
                kernels.append(S.gram(extract_features(model, x)))
        eig, power = S.kernel_alignment(np.mean(kernels, 0), y)
        out.append(Spectrum(w, [float(v) for v in eig], [float(v) for v in power]))
    return out


def _targets_matrix(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Targets as [n, K]: one-hot class labels, or the regression targets as they are."""
    t = np.asarray(targets)
    return np.eye(num_classes)[t] if t.ndim == 1 else t.reshape(len(t), -1).astype(np.float64)


def consistency(run, **options) -> ConsistencyResult:
    """Every measure of the module doc on a trained ladder.

    ``run``: a run directory, a Run or a point view; ``options``: fields of :class:`ConsistencyOptions`.
    """
    view = _point(run)
    return _consistency(view, Consistency().options(view.recipe, **options))


def _consistency(run, o: ConsistencyOptions) -> ConsistencyResult:
    if o.kernel not in ("ntk", "features"):
        raise WidthkitError(f"consistency kernel must be ntk or features, got '{o.kernel}'")
    widths = analysable_widths(run)
    if len(widths) < 2:
        raise WidthkitError(f"consistency compares widths with the widest; the run has only {widths}")
    loss, tol, wmax = run.loss_name, o.tolerance, widths[-1]
    task = run.task()
    seeds = {w: run.trained_seeds(w) for w in widths}
    for w, ss in seeds.items():
        if not ss:
            raise WidthkitError(f"every member of width {w} diverged; nothing to compare")
    targets = run.targets()
    recipe = run.recipe
    log_time = grid.is_log(recipe.train.eval_every) or grid.is_log(recipe.train.snapshots)

    # loss curves (every evaluation step common to all widths)
    eval_steps = sorted(set.intersection(*(set(int(s) for s in run.metrics(w)["step"]) for w in widths)))
    loss_vals = np.array([[np.nanmean(run.metrics(w)["test_loss"][
        [run.seeds.index(s) for s in seeds[w]], list(run.metrics(w)["step"]).index(t)]) for t in eval_steps]
        for w in widths])
    measures = [_measure("test loss", eval_steps, loss_vals, _relative(loss_vals), tol)]

    # point-wise outputs
    ag = output_agreement(run, seeds, o.splits, o.seed)
    if loss == "mse":
        t = np.asarray(targets, np.float64).reshape(len(targets), -1)
        dist = np.array(ag.ensemble_msd) / np.mean((t - t.mean(0)) ** 2)
        measures.append(_measure("output distance (half-ensembles)", ag.steps, ag.ensemble_msd, dist, tol))
    else:
        top1 = np.array(ag.ensemble_top1)
        dist = 1.0 - top1 / top1[-1:]  # relative to the widest's own half-ensembles (random at init)
        measures.append(_measure("top-1 agreement (half-ensembles)", ag.steps, ag.ensemble_top1, dist, tol))

    # weight-reading measures at the snapshot steps every width has
    snap_steps = sorted(set.intersection(*(set(run.snapshot_steps(w)) for w in widths)))
    if o.step >= 0 and o.step not in snap_steps:
        raise WidthkitError(f"no snapshot at step {o.step} at every width; snapshot steps: {snap_steps}")
    probe_model = run.load_member(wmax, seeds[wmax][0])
    layers = list(o.layers) or hidden_layers(probe_model)
    known = dict(probe_model.named_modules())
    bad = [n for n in layers if n not in known]
    if bad:
        raise unknown("layer", bad[0], hidden_layers(probe_model))
    x = task.x_test[:o.n_inputs]
    cka, w1 = _representations(run, widths, seeds, snap_steps, layers, x)
    for name in layers:
        measures.append(_measure(f"CKA {name}", snap_steps, cka[name], 1.0 - cka[name] / cka[name][-1:], tol))
    for name in layers:
        measures.append(_measure(f"preactivation W1 {name}", snap_steps, w1[name], w1[name], tol))
    edge = (2.0 * (1.0 + recipe.optim.momentum) / recipe.optim.lr) if recipe.optim.name == "sgd" else float("nan")
    if o.sharpness:
        data = (task.x_train[:o.hessian_examples], task.y_train[:o.hessian_examples])
        sharp = _sharpness(run, widths, {w: s[:o.hessian_seeds] for w, s in seeds.items()}, snap_steps, data,
                           loss, o.seed)
        measures.append(_measure("sharpness", snap_steps, sharp, _relative(sharp), tol))

    xk = task.x_test[:o.kernel_inputs]
    yk = _targets_matrix(targets[:o.kernel_inputs], task.num_classes)
    spectra = _spectra(run, widths, seeds, xk, yk, o.kernel, None if o.step < 0 else o.step)
    conventions = {
        "reference": f"every measure compares each width with the widest, N={wmax}",
        "agreement": f"a width agrees with N={wmax} until the last step of its leading run of steps whose distance "
                     f"is <= {tol:g}",
        "loss": "mean test loss over seeds; distance |L(N) - L(Nmax)| / L(Nmax)",
        "outputs": "half-seed ensembles on disjoint seeds; distance: mean squared output distance over the centred "
                   "targets' mean square (mse) or 1 - top-1 agreement / that of the widest with itself (xent)",
        "cka": f"debiased linear CKA (unbiased HSIC) on {len(x)} test inputs, pairs of different seeds; distance "
               "1 - CKA(N) / CKA(Nmax), the widest against itself being the seed-to-seed ceiling",
        "preactivations": "1-Wasserstein distance of pooled values (seeds, units, inputs) over the widest's std",
        "sharpness": f"top eigenvalue of S^1/2 H S^1/2 (S: per-parameter lr scales) of the training loss on "
                     f"{o.hessian_examples} training examples, Lanczos, first {o.hessian_seeds} seeds; edge of "
                     "stability 2(1+momentum)/lr (SGD)",
        "spectrum": (f"ensemble (seed-averaged) after-training NTK, trace over outputs, lr-scaled, on {len(xk)} test "
                     "inputs" if o.kernel == "ntk" else f"last hidden layer's feature kernel, seed-averaged, on "
                     f"{len(xk)} test inputs") + "; C(k): share of the centred targets' power in the top-k "
                                                 "eigenvectors",
    }
    return ConsistencyResult(str(getattr(run, "path", "")), loss, widths, wmax, tol, log_time, layers, measures,
                             ag, edge, o.kernel, snap_steps[-1] if o.step < 0 else o.step, spectra, conventions)


# ----------------------------------------------------------------------------- plots and readings

def plot_measures(res: ConsistencyResult, path) -> Path:
    """One panel per measure against step, one line per width."""
    n = len(res.measures)
    cols = min(n, 3)
    fig, axes = figure(cols, math.ceil(n / cols), size=(3.3, 2.5))
    colors = width_colors(res.widths)
    flat = [a for row in axes for a in row]
    for ax, m in zip(flat, res.measures):
        for w, row in zip(res.widths, m.values):
            ax.plot(m.steps, row, "o-", ms=2.5, color=colors[w], label=f"N={w}")
        if m.name == "sharpness" and math.isfinite(res.edge_of_stability):
            ax.axhline(res.edge_of_stability, color="k", ls="--", lw=0.8, label="2(1+β)/lr")
        if m.name in ("test loss", "sharpness") and np.nanmin(np.array(m.values, float)) > 0:
            ax.set_yscale("log")
        time_axis(ax, res.log_time)
        ax.set_title(m.name, fontsize=9)
    flat[0].legend(fontsize=6)
    for ax in flat[n:]:
        ax.axis("off")
    return save(fig, path)


def plot_spectra(res: ConsistencyResult, path) -> Path:
    """The learned kernel's eigenvalues and the target's cumulative power C(k), one line per width."""
    fig, axes = figure(2, 1, size=(3.8, 3.0))
    colors = width_colors(res.widths)
    for sp in res.spectra:
        k = np.arange(1, len(sp.eigenvalues) + 1)
        axes[0][0].loglog(k, np.clip(sp.eigenvalues, 1e-12, None), color=colors[sp.width], label=f"N={sp.width}")
        axes[0][1].semilogx(k, sp.power, color=colors[sp.width], label=f"N={sp.width}")
    axes[0][0].set_title(f"{res.kernel} kernel eigenvalues (share of trace)", fontsize=9)
    axes[0][1].set_title("target power in top-k eigenvectors C(k)", fontsize=9)
    for ax in axes[0]:
        ax.set_xlabel("k")
    axes[0][1].legend(fontsize=6)
    return save(fig, path)


def measure_reading(m: Measure, widths: list[int], reference: int, tol: float) -> str:
    """One sentence: until which step each width stays within ``tol`` of the reference width."""
    last = m.steps[-1]
    parts = []
    for w, u in zip(widths[:-1], m.until[:-1]):
        parts.append(f"N={w} " + ("throughout" if u == last else "not even at the first step" if u < 0
                                  else f"until step {u}"))
    return f"{m.name}: within {tol:g} of N={reference}: " + ", ".join(parts)


def spectrum_reading(res: ConsistencyResult, k: int = 10) -> str:
    lo, hi = res.spectra[0], res.spectra[-1]
    k = min(k, len(lo.power))
    top = lambda sp: sum(sp.eigenvalues[:k])  # noqa: E731
    return (f"spectral view at step {res.spectrum_step}: the top-{k} eigenvalues of the {res.kernel} kernel hold {fmt.pct(top(lo))} of "
            f"its trace at N={lo.width} and {fmt.pct(top(hi))} at N={hi.width}; the top-{k} eigenvectors carry "
            f"C({k}) = {fmt.pct(lo.power[k - 1])} of the target's power at N={lo.width} and "
            f"{fmt.pct(hi.power[k - 1])} at N={hi.width}")


@register_analysis
class Consistency(Analysis):
    name = "consistency"
    order = 15
    in_study = False  # reads every snapshot of every member: run it by name, or through [study] run
    help = "agreement of every width with the widest over training: loss, outputs, CKA, preactivations, " \
           "sharpness, kernel spectrum (Vyas et al. 2023)"
    Options = ConsistencyOptions
    Result = ConsistencyResult
    smoke = {"n_inputs": 32, "sharpness": False, "kernel_inputs": 16, "splits": 2}

    def applies(self, subject: Subject, o: ConsistencyOptions) -> str:
        run = subject.point
        usable = [] if run is None else [w for w in run.widths if run.trained_seeds(w)]
        if len(usable) < 2:  # never a width against itself, nor a fully diverged width as "the widest"
            return (f"it compares widths with the widest, but only {usable or 'no width'} has members that did not "
                    "diverge: train at least two widths")
        if o.kernel == "ntk":
            gb = ntk_bytes(run, o.kernel_inputs) / 2**30
            if gb > NTK_MAX_GB:
                return (f"the NTK of width {run.widths[-1]} on {o.kernel_inputs} inputs needs {gb:.1f} GB of "
                        f"Jacobians (limit {NTK_MAX_GB:g}); set [consistency] kernel = \"features\" or fewer "
                        "kernel_inputs")
        return ""

    def compute(self, subject: Subject, o: ConsistencyOptions) -> ConsistencyResult:
        return _consistency(subject.require_point(self.name), o)

    def plot(self, res: ConsistencyResult, folder: Path) -> list[Path]:
        return [plot_measures(res, Path(folder) / "consistency.png"),
                plot_spectra(res, Path(folder) / "consistency_spectrum.png")]

    def blocks(self, res: ConsistencyResult, folder: Path) -> list[Block]:
        b = Block(self.name, f"Consistency with the widest width N={res.reference_width} over training",
                  notes=dict(res.conventions))
        b.lines = [measure_reading(m, res.widths, res.reference_width, res.tolerance) for m in res.measures]
        b.lines.append(spectrum_reading(res))
        b.tables.append(Table(
            f"Last step within {res.tolerance:g} of N={res.reference_width} (-1: not at the first step)",
            ["measure"] + [f"N={w}" for w in res.widths[:-1]],
            [[m.name] + [str(u) for u in m.until[:-1]] for m in res.measures]))
        b.figures = [Figure(Path(folder) / "consistency.png", " ".join(b.lines[:-1])),
                     Figure(Path(folder) / "consistency_spectrum.png", b.lines[-1])]
        return [b]
