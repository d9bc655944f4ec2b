"""Last-layer transfer across widths (Gilboa & Gur-Ari 2019, arXiv 1909.11572).

For every width and seed of a trained ladder: freeze the network, take the features at the input of
``model.get_classifier()`` (the penultimate layer; or any named module, through a forward hook) on the
target task's train and test splits, fit a new linear last layer (``widthkit.analysis.probes``) with its
regularization chosen on a validation split carved from the target *train* split, and score it once on
target test.  Reported per width: target test accuracy and loss (mean and std over seeds) beside the source
test accuracy of the same members, few-shot accuracy (K examples per class, several draws), and the
information in the hidden state two ways:

* input reconstruction: held-out ridge R^2 of the source inputs from the features;
* k-NN accuracy on the source labels.  Widths differ in source accuracy, so the k-NN accuracy is also
  reported *at matched source accuracy* by analysis of covariance: a common slope b of k-NN accuracy on
  source accuracy is estimated from the seed-to-seed variation within each width (width fixed effects),
  and each width's mean is moved along it to the grand-mean source accuracy:
  knn_matched(N) = knn(N) - b (acc(N) - acc_ref).  The range of source accuracies is reported with it.

Widths trained for the same number of steps differ in source accuracy, so a transfer gain with width can
be better features or just better training.  With weight snapshots (``train.snapshots``), the comparison
is also made *at matched source accuracy* (the Gilboa & Gur-Ari protocol): each width is read at the
snapshot whose mean source test accuracy is closest to a common level (by default the highest level every
width reaches), and the new last layer and the information probes are fitted there.  ``step`` reads every
member at one snapshot step instead of the end of training.

Features are cached per width in ``run.cache_dir/transfer/`` (HDF5, written atomically), so a second
call with the same target and layer loads no model.  At most one width's features are in memory.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlases.hooks import PENULTIMATE, extract_features, resolve_layer

from .. import fmt
from .. import probes as P
from ..atomic import atomic_path
from ..data import load_task
from ..errors import WidthkitError, unknown
from ..fitting import LineFit, fit_line
from ..plots import figure, save
from ..progress import track, warn
from ..results import Result
from ..validate import OpenUnitFraction, PositiveInt
from ..store import analysable_widths
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis


@dataclass
class TransferOptions:
    """Options of ``transfer`` (recipe table ``[transfer]``)."""

    target: str = opt("", "target task spec, e.g. digits:5-9 (required)")
    layer: str = opt(PENULTIMATE, "module whose output is the feature (penultimate: the classifier's input)")
    probe: str = opt("logistic", "new last layer: logistic, linear-sgd or ridge")
    shots: list[int] = opt([], "few-shot sizes K (examples per class)")
    draws: PositiveInt = opt(5, "few-shot draws per K")
    val_frac: OpenUnitFraction = opt(0.2, "share of the target train split used to choose the regularization")
    information: bool = opt(True, "also run the input-reconstruction R^2 and k-NN information probes")
    n_info: PositiveInt = opt(2000, "source examples used by the information probes")
    seed: int = opt(0, "seed of the validation split and few-shot draws")
    step: int = opt(-1, "snapshot step to read the members at (-1: the end of training)")
    matched: bool = opt(True, "also compare widths at matched source accuracy (needs train.snapshots)")
    level: float = opt(0.0, "source test accuracy to match (0: the highest level every width reaches)")


# ----------------------------------------------------------------------------- features

def _cache_path(run, width: int, target_spec: str, layer: str, n_info: int, step: int | None) -> Path:
    fp = run.recipe.fingerprint() if hasattr(run.recipe, "fingerprint") else ""
    key = {"fp": fp, "w": int(width), "t": target_spec, "l": layer, "n": int(n_info)}
    key = json.dumps(key if step is None else {**key, "s": int(step)}, sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer)
    return Path(run.cache_dir) / "transfer" / f"w{int(width)}-{safe}-{h}.h5"


SPLITS = ("target_train", "target_test", "source_train", "source_test")


def cached_features(run, width: int, seeds: list[int], target, source, layer: str, n_info: int,
                    batch_size: int = 512, step: int | None = None) -> Path:
    """Path of the HDF5 feature cache of one width at snapshot ``step`` (None: the end; extracting and
    writing it if missing).

    Datasets ``seed{S}/{split}`` for the splits target_train/target_test (all) and source_train/source_test
    (first ``n_info`` examples).  Written atomically, one member at a time.
    """
    import h5py
    path = _cache_path(run, width, target.spec or target.name, layer, n_info, step)
    if path.exists():
        try:
            with h5py.File(path, "r") as f:
                if all(f"seed{s}/{sp}" in f for s in seeds for sp in SPLITS):
                    return path
        except OSError:
            pass  # unreadable: rebuild
    inputs = {"target_train": target.x_train, "target_test": target.x_test,
              "source_train": source.x_train[:n_info], "source_test": source.x_test[:n_info]}
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["width"] = int(width)
            f.attrs["layer"] = layer
            f.attrs["target"] = target.spec or target.name
            for s in seeds:
                model = run.load_member(width, s) if step is None else run.load_member(width, s, step=step)
                for sp, x in inputs.items():
                    f.create_dataset(f"seed{s}/{sp}", data=extract_features(model, x, layer, batch_size))
                del model
    return path


def _read(path: Path, seed: int) -> dict:
    import h5py
    with h5py.File(path, "r") as f:
        return {sp: f[f"seed{seed}/{sp}"][()] for sp in SPLITS}


# ----------------------------------------------------------------------------- results

@dataclass
class FewShot(Result):
    """K-shot target accuracy: mean and std over seeds of each seed's mean over draws."""

    acc_mean: float
    acc_std: float
    per_seed: list[float]


@dataclass
class WidthTransfer(Result):
    width: int
    seeds: list[int]
    excluded_seeds: list[int]
    feature_dim: int
    step: int                   # the snapshot step the members were read at
    source_acc: list[float]     # per seed (source test accuracy at that step)
    source_acc_mean: float
    source_acc_std: float
    target_acc: list[float]     # per seed
    target_acc_mean: float
    target_acc_std: float
    target_loss: list[float]
    target_loss_mean: float
    target_loss_std: float
    l2: list[float]             # chosen regularization per seed
    few_shot: dict[int, FewShot]
    recon_r2: list[float]       # per seed, input reconstruction R^2 (source inputs)
    recon_r2_mean: float
    recon_r2_std: float
    knn_acc: list[float]        # per seed, k-NN accuracy on source labels
    knn_acc_mean: float
    knn_acc_std: float
    knn_acc_matched: float      # at the reference source accuracy (see module doc)


@dataclass
class Matching(Result):
    """k-NN accuracy at matched source accuracy: the common within-width slope and the reference."""

    method: str
    slope: float
    slope_err: float
    reference_source_acc: float
    source_acc_range: list[float]


@dataclass
class MatchedTransfer(Result):
    """Every width read at the snapshot whose mean source test accuracy is closest to ``level``."""

    level: float
    rule: str                   # how the level was chosen
    per_width: list[WidthTransfer]
    target_trend: LineFit       # target accuracy against log2 width, at matched source accuracy
    source_trend: LineFit       # the actual source accuracies against log2 width (ideally flat)


@dataclass
class TransferResult(Result):
    schema_version = 2
    run: str
    source_task: str
    target: str
    target_classes: int
    layer: str
    probe: str
    shots: list[int]
    conventions: dict[str, str]
    widths: list[int]
    skipped_widths: list[int]
    per_width: list[WidthTransfer]
    matching: Matching
    target_trend: LineFit       # target accuracy against log2 width: slope = change per width doubling
    source_trend: LineFit       # the same for the source accuracy of the same members
    matched: MatchedTransfer | None  # None without snapshots (every width has only its last step)
    matched_note: str           # why there is no matched comparison, or ""


# ----------------------------------------------------------------------------- analysis

def _ms(v) -> tuple[float, float]:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def source_acc(run, width: int, step: int | None = None) -> np.ndarray:
    """Source test accuracy of every seed [E] at eval ``step`` (None: the last)."""
    m = run.metrics(width)
    acc = m.get("test_acc")
    if acc is None:
        return np.full(len(run.seeds), np.nan)
    i = -1 if step is None else list(np.asarray(m["step"])).index(step)
    return np.asarray(acc, float)[:, i]


def match_steps(curves: dict[int, tuple[list[int], list[float]]], level: float = 0.0) -> tuple[float, dict]:
    """The common source accuracy and, per width, the step whose accuracy is closest to it.

    ``curves``: width -> (snapshot steps, mean source accuracy at each).  ``level`` 0 means the highest level
    every width reaches: the smallest over widths of each width's best accuracy.  Ties go to the earliest step.
    """
    if not level:
        level = min(float(np.nanmax(acc)) for _, acc in curves.values())
    return level, {w: int(steps[int(np.nanargmin(np.abs(np.asarray(acc, float) - level)))])
                   for w, (steps, acc) in curves.items()}


def ancova_slope(groups_x: list, groups_y: list) -> tuple[float, float]:
    """Common within-group slope of y on x (group fixed effects) and its standard error."""
    sxx = sxy = 0.0
    res, n, g = [], 0, 0
    for x, y in zip(groups_x, groups_y):
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.shape != y.shape:
            continue
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) < 2:
            continue
        dx, dy = x - x.mean(), y - y.mean()
        sxx += float(dx @ dx)
        sxy += float(dx @ dy)
        res.append((dx, dy))
        n += len(x)
        g += 1
    if sxx <= 0 or n - g - 1 < 1:
        return 0.0, float("nan")
    b = sxy / sxx
    s2 = sum(float(((dy - b * dx) ** 2).sum()) for dx, dy in res) / (n - g - 1)
    return b, math.sqrt(s2 / sxx)


def transfer(run, **options) -> TransferResult:
    """Fit a new last layer on frozen features of every member (see module doc).

    ``run``: a run directory, a Run or a point view; ``options``: fields of :class:`TransferOptions`
    (unset ones come from the recipe's ``[transfer]`` table, then the defaults).
    """
    from ..store import open_run
    run = open_run(run) if isinstance(run, (str, Path)) else run
    view = run.select(0) if hasattr(run, "select") and len(run.points) == 1 else run
    a = Transfer()
    return a.compute(Subject(view.recipe, view), a.options(view.recipe, **options))


def _transfer(run, o: TransferOptions, batch_size: int = 512) -> TransferResult:
    target, probe, shots, draws, val_frac, seed = o.target, o.probe, o.shots, o.draws, o.val_frac, o.seed
    information, n_info = o.information, o.n_info
    if not target:
        raise WidthkitError("no transfer target; pass target=TASK (e.g. target='digits:5-9') "
                            "or set [transfer] target in the recipe")
    if probe not in P.PROBES:
        raise unknown("probe", probe, P.PROBES)
    if any(k < 1 for k in shots):
        raise WidthkitError(f"shots must be positive integers, got {shots}")
    if not 0 < val_frac < 1:
        raise WidthkitError(f"val_frac must be between 0 and 1, got {val_frac}")

    source = run.task()
    tgt = load_task(target, root=run.recipe.data.root)
    if tgt.kind != "classification":
        raise WidthkitError(f"transfer target '{target}' is a regression task; choose a classification target "
                            f"(e.g. 'teacher?classes=4&perturb=0.3')")
    if tuple(tgt.in_shape) != tuple(source.in_shape):
        raise WidthkitError(f"target '{target}' has inputs of shape {tuple(tgt.in_shape)} but the run was trained "
                            f"on {tuple(source.in_shape)}; choose a target with the same input shape")
    widths = analysable_widths(run)
    unfinished = sorted(int(w) for w in (run.unfinished or []))
    # resolve the layer name once, on the narrowest member, before any long work
    step = None if o.step < 0 else o.step  # a missing snapshot step fails here, before any long work
    layer = resolve_layer(run.load_member(widths[0], run.seeds[0], step=step), o.layer)

    ytr, yte = tgt.y_train.numpy(), tgt.y_test.numpy()
    ys_tr, ys_te = source.y_train[:n_info].numpy(), source.y_test[:n_info].numpy()
    xs_tr, xs_te = source.x_train[:n_info].numpy(), source.x_test[:n_info].numpy()
    src_cls = source.kind == "classification"

    def measure(w: int, seeds: list[int], bad: list[int], step: int | None) -> WidthTransfer:
        """One width's transfer and information probes, its members read at ``step`` (None: the end)."""
        path = cached_features(run, w, seeds, tgt, source, layer, n_info, batch_size, step)
        src_acc_all = source_acc(run, w, step)
        src_acc = [float(src_acc_all[list(run.seeds).index(s)]) for s in seeds]
        tacc, tloss, l2s, r2s, knns, dim = [], [], [], [], [], 0
        fs = {k: [] for k in shots}
        for s in seeds:
            F = _read(path, s)
            dim = F["target_train"].shape[1]
            fit = P.fit_probe(probe, F["target_train"], ytr, F["target_test"], yte, tgt.num_classes,
                              val_frac=val_frac, seed=seed)
            tacc.append(fit.test_accuracy)
            tloss.append(fit.test_loss)
            l2s.append(fit.l2)
            for k in shots:
                accs = []
                for d in range(draws):
                    idx = P.few_shot_indices(ytr, k, seed + 1000 * d + k)
                    f = P.fit_probe(probe, F["target_train"][idx], ytr[idx], F["target_test"], yte,
                                    tgt.num_classes, val_frac=0.5, seed=seed + d)
                    accs.append(f.test_accuracy)
                fs[k].append(float(np.mean(accs)))
            if information:
                r2s.append(P.ridge_r2(F["source_train"], xs_tr, F["source_test"], xs_te, seed=seed))
                knns.append(P.knn_accuracy(F["source_train"], ys_tr, F["source_test"], ys_te)
                            if src_cls else float("nan"))
            del F
        few = {int(k): FewShot(*_ms(v), v) for k, v in fs.items()}
        last = int(run.metrics(w)["step"][-1])
        return WidthTransfer(w, seeds, bad, dim, last if step is None else int(step), src_acc, *_ms(src_acc),
                             tacc, *_ms(tacc), tloss, *_ms(tloss), l2s, few, r2s, *_ms(r2s), knns, *_ms(knns),
                             float("nan"))

    members, skipped = {}, list(unfinished)
    for w in widths:
        seeds = run.trained_seeds(w)
        bad = [s for s in run.seeds if s not in seeds]
        if bad:
            warn(f"width {w}: leaving out diverged members (seeds {bad})")
        if seeds:
            members[w] = seeds, bad
        else:
            skipped.append(w)
    per_width = [measure(w, *members[w], step) for w in track(list(members), f"transfer to {target}")]
    if not per_width:
        raise WidthkitError("every member diverged; nothing to transfer")
    matched, note = _matched(run, members, per_width, o, measure) if o.matched else (None, "not asked for")

    # k-NN accuracy at matched source accuracy (ANCOVA with width fixed effects)
    b, berr = ancova_slope([p.source_acc for p in per_width], [p.knn_acc for p in per_width])
    all_acc = np.concatenate([np.asarray(p.source_acc, float) for p in per_width])
    ref = float(np.nanmean(all_acc)) if np.isfinite(all_acc).any() else float("nan")
    for p in per_width:
        p.knn_acc_matched = float(p.knn_acc_mean - b * (p.source_acc_mean - ref)) if np.isfinite(ref) \
            else p.knn_acc_mean
    matching = Matching("ANCOVA: common within-width slope of k-NN accuracy on source accuracy", b, berr, ref,
                        [float(np.nanmin(all_acc)), float(np.nanmax(all_acc))] if np.isfinite(all_acc).any()
                        else [float("nan"), float("nan")])
    W = [p.width for p in per_width]
    tf, sf = _trends(per_width)
    conventions = {
        "features": f"output of module '{layer}'" + (" (the classifier's input)" if o.layer == PENULTIMATE else ""),
        "probe": {"logistic": "multinomial logistic regression, L-BFGS, standardized features, L2 search",
                  "ridge": "closed-form ridge onto one-hot targets, ridge search",
                  "linear-sgd": "logistic loss by SGD with momentum, weight-decay search"}[probe],
        "selection": f"regularization chosen on a stratified {val_frac:.0%} validation split of the target "
                     "train set, then refitted on all of it; target test used once",
        "few_shot": f"K examples per class from target train, {draws} draws, regularization chosen on half of "
                    "the shots (middle of the grid when K=1)",
        "spread": "std over seeds (ddof=1)",
        "information": f"ridge R^2 of source inputs and 10-NN accuracy on source labels, first {n_info} source "
                       "train/test examples; matched by ANCOVA (see matching)",
    }
    return TransferResult(str(getattr(run, "path", "")), source.spec or source.name, tgt.spec or target,
                          int(tgt.num_classes), layer, probe, shots, conventions, W, sorted(skipped), per_width,
                          matching, tf, sf, matched, note)


def _trends(per_width: list[WidthTransfer]) -> tuple[LineFit, LineFit]:
    """Target and source accuracy against log2 width: the slopes are changes per width doubling."""
    x = np.log2([p.width for p in per_width])
    return fit_line(x, [p.target_acc_mean for p in per_width]), fit_line(x, [p.source_acc_mean for p in per_width])


def _matched(run, members: dict, at_end: list[WidthTransfer], o: TransferOptions,
             measure) -> tuple[MatchedTransfer | None, str]:
    """The comparison at matched source accuracy (see the module doc), or None and why not."""
    curves = {}
    for w, (seeds, _) in members.items():
        steps = run.snapshot_steps(w)
        rows = [list(run.seeds).index(s) for s in seeds]
        curves[w] = steps, [float(np.nanmean(source_acc(run, w, s)[rows])) for s in steps]
    if all(len(steps) == 1 for steps, _ in curves.values()):
        return None, "the run has no weight snapshots; set train.snapshots (e.g. \"log:8\") to compare widths " \
                     "at matched source accuracy"
    level, steps = match_steps(curves, o.level)
    rule = f"given level {o.level:g}" if o.level else "the highest mean source accuracy every width reaches"
    by_width = {p.width: p for p in at_end}
    last = {w: curves[w][0][-1] for w in curves}
    per_width = [by_width[w] if steps[w] == last[w] and o.step < 0 else measure(w, *members[w], steps[w])
                 for w in track(list(members), "transfer at matched source accuracy")]
    return MatchedTransfer(level, rule, per_width, *_trends(per_width)), ""


# ----------------------------------------------------------------------------- plots

def _accuracy_panel(ax, res, color=None, label=None):
    W = np.array(res.widths, float)
    ta = [p.target_acc_mean for p in res.per_width]
    ts = [p.target_acc_std for p in res.per_width]
    sa = [p.source_acc_mean for p in res.per_width]
    line = ax.errorbar(W, ta, np.nan_to_num(ts), marker="o", capsize=3, color=color,
                       label=label or f"target {res.target}")
    c = line[0].get_color()
    ax.plot(W, sa, "--", marker=".", color=c, label=None if label else f"source {res.source_task}")
    return c


def plot_transfer(res, path) -> Path:
    """Target vs source accuracy against width, few-shot accuracy, and the information probes."""
    fig, axes = figure(3, 1, size=(4.2, 3.3))
    ax = axes[0][0]
    _accuracy_panel(ax, res)
    if res.matched is not None:
        mw = res.matched.per_width
        ax.errorbar([p.width for p in mw], [p.target_acc_mean for p in mw],
                    np.nan_to_num([p.target_acc_std for p in mw]), marker="s", capsize=3, color="k",
                    label=f"target at matched source acc. {fmt.pct(res.matched.level)}")
        ax.plot([p.width for p in mw], [p.source_acc_mean for p in mw], "k:", marker=".",
                label="source at the matched snapshots")
    ax.set_title(f"new last layer ({res.probe}, {res.layer})", fontsize=9)
    ax.set_ylabel("test accuracy (dashed: source)")
    ax = axes[0][1]
    W = np.array(res.widths, float)
    for k in res.shots:
        m = [p.few_shot[k].acc_mean for p in res.per_width]
        s = [p.few_shot[k].acc_std for p in res.per_width]
        ax.errorbar(W, m, np.nan_to_num(s), marker="o", capsize=3, label=f"{k}-shot")
    ax.plot(W, [p.target_acc_mean for p in res.per_width], "k:", label="all target data")
    ax.set_title("few-shot target accuracy", fontsize=9)
    ax = axes[0][2]
    ax.errorbar(W, [p.recon_r2_mean for p in res.per_width], np.nan_to_num([p.recon_r2_std for p in res.per_width]),
                marker="o", capsize=3, label="input reconstruction R^2")
    ax.plot(W, [p.knn_acc_mean for p in res.per_width], "s-", label="10-NN source accuracy")
    ax.plot(W, [p.knn_acc_matched for p in res.per_width], "^--", label="10-NN at matched source acc.")
    if res.matched is not None:
        mw = res.matched.per_width
        ax.plot(W, [p.recon_r2_mean for p in mw], "ks:", label="R^2 at matched source acc.")
    ax.set_title("information in the hidden state", fontsize=9)
    for a in axes[0]:
        a.set_xscale("log", base=2)
        a.set_xlabel("width N")
        a.legend(fontsize=7)
    return save(fig, path)


def plot_bench(results: list, path) -> Path:
    """One line per task: target accuracy vs width (source dashed), and reconstruction R^2 vs width."""
    fig, axes = figure(2, 1, size=(5.0, 3.6))
    for name, res in results:
        c = _accuracy_panel(axes[0][0], res, label=name)
        W = np.array(res.widths, float)
        axes[0][1].plot(W, [p.recon_r2_mean for p in res.per_width], "o-", color=c, label=f"{name}: R^2")
        axes[0][1].plot(W, [p.knn_acc_matched for p in res.per_width], "^:", color=c, label=f"{name}: 10-NN matched")
    axes[0][0].set_ylabel("target test accuracy (dashed: source)")
    axes[0][0].set_title("last-layer transfer vs width", fontsize=9)
    axes[0][1].set_title("information: input R^2 (solid), k-NN at matched acc. (dotted)", fontsize=8)
    for a in axes[0]:
        a.set_xscale("log", base=2)
        a.set_xlabel("width N")
        a.legend(fontsize=6)
    return save(fig, path)


# ----------------------------------------------------------------------------- the registered analysis

@register_analysis
class Transfer(Analysis):
    name = "transfer"
    order = 20
    help = "last-layer transfer to a new task per width and seed (Gilboa & Gur-Ari 2019), plus information probes"
    Options = TransferOptions
    Result = TransferResult
    smoke = {"target": "digits:5-9", "probe": "ridge", "n_info": 200}

    def applies(self, subject: Subject, o: TransferOptions) -> str:
        return "" if o.target else "the recipe has no [transfer] target (or pass `target`)"

    def compute(self, subject: Subject, o: TransferOptions) -> TransferResult:
        return _transfer(subject.require_point(self.name), o)

    def plot(self, res: TransferResult, folder: Path) -> list[Path]:
        return [plot_transfer(res, Path(folder) / "transfer.png")]

    def blocks(self, res: TransferResult, folder: Path) -> list[Block]:
        pw = res.per_width
        b = Block(self.name, f"Last-layer transfer {res.source_task} → {res.target} ({res.probe}, {res.layer})",
                  notes=dict(res.conventions))
        b.tables.append(Table(
            "Per width: a new last layer fitted on frozen features (mean ± sd over seeds)",
            ["width", "seeds", "source acc", "target acc", "target loss"] + [f"{k}-shot" for k in res.shots]
            + ["input R²", "10-NN", "10-NN matched"],
            [[str(p.width), str(len(p.seeds)), fmt.pm(p.source_acc_mean, p.source_acc_std),
              fmt.pm(p.target_acc_mean, p.target_acc_std), fmt.pm(p.target_loss_mean, p.target_loss_std)]
             + [fmt.pm(p.few_shot[k].acc_mean, p.few_shot[k].acc_std) for k in res.shots]
             + [fmt.pm(p.recon_r2_mean, p.recon_r2_std), fmt.num(p.knn_acc_mean), fmt.num(p.knn_acc_matched)]
             for p in pw]))
        b.lines = [_trend_reading(res)]
        if res.matched is not None:
            m = res.matched
            b.tables.append(Table(
                f"At matched source accuracy {fmt.pct(m.level)} ({m.rule}): each width read at the snapshot whose "
                "mean source test accuracy is closest to it",
                ["width", "step", "source acc", "target acc", "input R²", "10-NN"],
                [[str(p.width), str(p.step), fmt.pm(p.source_acc_mean, p.source_acc_std),
                  fmt.pm(p.target_acc_mean, p.target_acc_std), fmt.pm(p.recon_r2_mean, p.recon_r2_std),
                  fmt.num(p.knn_acc_mean)] for p in m.per_width]))
            b.lines.append(_matched_reading(m))
        else:
            b.lines.append(f"no comparison at matched source accuracy: {res.matched_note}")
        if len(pw) > 1 and math.isfinite(pw[0].recon_r2_mean):
            lo, hi = pw[0], pw[-1]
            b.lines.append(f"input reconstruction R² {fmt.num(lo.recon_r2_mean)} at N={lo.width} → "
                           f"{fmt.num(hi.recon_r2_mean)} at N={hi.width}; 10-NN accuracy at matched source accuracy "
                           f"{fmt.num(lo.knn_acc_matched)} → {fmt.num(hi.knn_acc_matched)}")
        b.figures.append(Figure(Path(folder) / "transfer.png", " ".join(b.lines)))
        return [b]


def _trend_reading(res: TransferResult) -> str:
    lo, hi, t, s = res.per_width[0], res.per_width[-1], res.target_trend, res.source_trend
    err = f" ± {t.slope_err:.3f}" if len(res.per_width) > 2 else ""
    gap = t.slope - s.slope
    verdict = ("target accuracy grows faster with width than source accuracy" if gap > t.slope_err
               else "target accuracy grows no faster with width than source accuracy (better features cannot be "
                    "told from better training here)")
    return (f"target accuracy {fmt.pct(lo.target_acc_mean)} at N={lo.width} and {fmt.pct(hi.target_acc_mean)} at "
            f"N={hi.width}: {fmt.signed(t.slope)}{err} per width doubling vs {fmt.signed(s.slope)} for the source; "
            + verdict)


def _matched_reading(m: MatchedTransfer) -> str:
    """Whether target accuracy rises with width once source accuracy is matched, with the slope and its error."""
    t, src, lo, hi = m.target_trend, m.source_trend, m.per_width[0], m.per_width[-1]
    err = t.slope_err if math.isfinite(t.slope_err) else 0.0
    verdict = ("rises with width" if t.slope - err > 0 else "falls with width" if t.slope + err < 0
               else "shows no clear trend with width")
    accs = [p.source_acc_mean for p in m.per_width]
    steps = ", ".join(f"{p.step} (N={p.width})" for p in m.per_width)
    return (f"at matched source accuracy {fmt.pct(m.level)} (actual {fmt.pct(min(accs))}–{fmt.pct(max(accs))}, "
            f"{fmt.signed(src.slope, 4)} ± {src.slope_err:.4f} per width doubling), target accuracy {verdict}: "
            f"{fmt.pct(lo.target_acc_mean)} at N={lo.width} and {fmt.pct(hi.target_acc_mean)} at N={hi.width}, "
            f"{fmt.signed(t.slope, 4)} ± {err:.4f} per width doubling; snapshot steps {steps}")
