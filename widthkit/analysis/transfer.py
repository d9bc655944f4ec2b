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

Features are cached per width in ``run.cache_dir/transfer/`` (HDF5, written atomically), so a second
call with the same target and layer loads no model.  At most one width's features are in memory.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import WidthkitError, unknown
from ..fitting import fit_line
from ..progress import info, track, warn
from ..store import analysable_widths
from ..results import Result
from . import probes as P

PENULTIMATE = "penultimate"
MAX_FLAT = 8192  # larger hooked activations are average-pooled over spatial/token dims


@dataclass
class TransferOptions:
    """The ``[transfer]`` recipe table (every key optional; arguments of :func:`transfer` win)."""

    target: str = ""
    layer: str = PENULTIMATE
    probe: str = "logistic"
    shots: list[int] = field(default_factory=list)
    draws: int = 5
    val_frac: float = 0.2
    information: bool = True
    n_info: int = 2000


# ----------------------------------------------------------------------------- features

def layer_names(model: torch.nn.Module) -> list[str]:
    """Names accepted by ``layer``: 'penultimate' and every named sub-module."""
    return [PENULTIMATE] + [n for n, _ in model.named_modules() if n]


def _pool(h: torch.Tensor) -> torch.Tensor:
    h = h.detach()
    if h.ndim > 2 and h[0].numel() > MAX_FLAT:
        h = h.mean(dim=tuple(range(2, h.ndim)))  # conv maps [B, C, ...] -> [B, C]
    return h.reshape(len(h), -1).float()


def extract_features(model: torch.nn.Module, x: torch.Tensor, layer: str = PENULTIMATE,
                     batch_size: int = 512) -> np.ndarray:
    """Activations of ``layer`` for inputs ``x`` [N, ...] in batches (no grad), as float32 [N, D].

    'penultimate' is the input of ``model.get_classifier()``; any other name is a module of
    ``model.named_modules()`` whose output is taken.  Outputs with more than 8192 values per example
    are average-pooled over all dims after the channel dim.
    """
    modules = dict(model.named_modules())
    if layer == PENULTIMATE:
        if not hasattr(model, "get_classifier"):
            raise WidthkitError("this model has no get_classifier(); name a layer with --layer")
        target, pre = model.get_classifier(), True
    elif layer in modules and layer:
        target, pre = modules[layer], False
    else:
        raise unknown("layer", layer, layer_names(model))
    grabbed: list[torch.Tensor] = []
    if pre:
        handle = target.register_forward_pre_hook(lambda m, inp: grabbed.append(_pool(inp[0])))
    else:
        handle = target.register_forward_hook(
            lambda m, inp, out: grabbed.append(_pool(out[0] if isinstance(out, (tuple, list)) else out)))
    chunks = []
    try:
        model.eval()
        dev = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                grabbed.clear()
                model(x[i:i + batch_size].to(dev))
                if not grabbed:
                    raise WidthkitError(f"layer '{layer}' is not used in the forward pass; choose another layer")
                chunks.append(grabbed[0].cpu().numpy())
    finally:
        handle.remove()
    return np.concatenate(chunks).astype(np.float32)


def _cache_path(run, width: int, target_spec: str, layer: str, n_info: int) -> Path:
    fp = run.recipe.fingerprint() if hasattr(run.recipe, "fingerprint") else ""
    key = json.dumps({"fp": fp, "w": int(width), "t": target_spec, "l": layer, "n": int(n_info)}, sort_keys=True)
    h = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer)
    return Path(run.cache_dir) / "transfer" / f"w{int(width)}-{safe}-{h}.h5"


SPLITS = ("target_train", "target_test", "source_train", "source_test")


def cached_features(run, width: int, seeds: list[int], target, source, layer: str, n_info: int,
                    batch_size: int = 512) -> Path:
    """Path of the HDF5 feature cache of one width (extracting and writing it if missing).

    Datasets ``seed{S}/{split}`` for the splits target_train/target_test (all) and source_train/source_test
    (first ``n_info`` examples).  Written atomically, one member at a time.
    """
    import h5py
    path = _cache_path(run, width, target.spec or target.name, layer, n_info)
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
                model = run.load_member(width, s)
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
class WidthTransfer(Result):
    width: int
    seeds: list
    excluded_seeds: list
    feature_dim: int
    source_acc: list            # per seed (final source test accuracy)
    source_acc_mean: float
    source_acc_std: float
    target_acc: list            # per seed
    target_acc_mean: float
    target_acc_std: float
    target_loss: list
    target_loss_mean: float
    target_loss_std: float
    l2: list                    # chosen regularization per seed
    few_shot: dict              # K -> {"acc_mean", "acc_std", "per_seed"} (mean over draws per seed)
    recon_r2: list              # per seed, input reconstruction R^2 (source inputs)
    recon_r2_mean: float
    recon_r2_std: float
    knn_acc: list               # per seed, k-NN accuracy on source labels
    knn_acc_mean: float
    knn_acc_std: float
    knn_acc_matched: float      # at the reference source accuracy (see module doc)


@dataclass
class TransferResult(Result):
    run: str
    source_task: str
    target: str
    target_classes: int
    layer: str
    probe: str
    shots: list
    conventions: dict
    widths: list
    skipped_widths: list
    per_width: list
    matching: dict              # slope, slope_err, reference source accuracy, source-accuracy range
    trend: dict                 # target accuracy vs log2 width: slope per doubling +- err
    summary: list = field(default_factory=list)


# ----------------------------------------------------------------------------- analysis

def _ms(v) -> tuple[float, float]:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _final_source_acc(run, width: int) -> np.ndarray:
    m = run.metrics(width)
    acc = m.get("test_acc")
    if acc is None:
        return np.full(len(run.seeds), np.nan)
    return np.asarray(acc, float)[:, -1]


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


def transfer(run, target: str | None = None, layer: str | None = None, probe: str | None = None,
             shots: list[int] | tuple = (), draws: int | None = None, val_frac: float | None = None,
             information: bool | None = None, n_info: int | None = None, batch_size: int = 512,
             seed: int = 0) -> TransferResult:
    """Fit a new last layer on frozen features of every member for ``target`` (see module doc).

    Unset arguments come from the run recipe's ``[transfer]`` table, then the defaults of
    :class:`TransferOptions`.  ``target`` is any task spec of ``widthkit.data.load_task``.
    """
    if isinstance(run, (str, Path)):
        from ..store import open_run
        run = open_run(run)
    from ..data import load_task
    from ..recipe import section
    opts = section(run.recipe, "transfer", TransferOptions)
    target = target or opts.target
    layer = layer or opts.layer or PENULTIMATE
    probe = probe or opts.probe
    shots = [int(k) for k in (shots or opts.shots)]
    draws = int(draws if draws is not None else opts.draws)
    val_frac = float(val_frac if val_frac is not None else opts.val_frac)
    information = bool(opts.information if information is None else information)
    n_info = int(n_info if n_info is not None else opts.n_info)
    if not target:
        raise WidthkitError("no transfer target; pass --target TASK (e.g. --target digits:5-9) "
                            "or set [transfer] target in the recipe")
    if probe not in P.PROBES:
        raise unknown("probe", probe, P.PROBES)
    if any(k < 1 for k in shots):
        raise WidthkitError(f"--shots must be positive integers, got {shots}")
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
    # validate the layer name once, on the narrowest member, before any long work
    if layer != PENULTIMATE:
        m0 = run.load_member(widths[0], run.seeds[0])
        if layer not in dict(m0.named_modules()) or not layer:
            raise unknown("layer", layer, layer_names(m0))
        del m0

    ytr, yte = tgt.y_train.numpy(), tgt.y_test.numpy()
    ys_tr, ys_te = source.y_train[:n_info].numpy(), source.y_test[:n_info].numpy()
    xs_tr, xs_te = source.x_train[:n_info].numpy(), source.x_test[:n_info].numpy()
    src_cls = source.kind == "classification"
    per_width, skipped = [], list(unfinished)
    for w in track(widths, f"transfer to {target}"):
        div = np.asarray(run.diverged(w), bool).reshape(-1)
        seeds = [s for s, d in zip(run.seeds, div) if not d]
        bad = [s for s, d in zip(run.seeds, div) if d]
        if bad:
            warn(f"width {w}: leaving out diverged members (seeds {bad})")
        if not seeds:
            skipped.append(w)
            continue
        path = cached_features(run, w, seeds, tgt, source, layer, n_info, batch_size)
        src_acc_all = _final_source_acc(run, w)
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
        sa, ss = _ms(src_acc)
        ta, ts = _ms(tacc)
        tl, tls = _ms(tloss)
        r2m, r2s_ = _ms(r2s)
        km, ks = _ms(knns)
        few = {int(k): {"acc_mean": _ms(v)[0], "acc_std": _ms(v)[1], "per_seed": v} for k, v in fs.items()}
        per_width.append(WidthTransfer(w, seeds, bad, dim, src_acc, sa, ss, tacc, ta, ts, tloss, tl, tls, l2s, few,
                                       r2s, r2m, r2s_, knns, km, ks, float("nan")))
    if not per_width:
        raise WidthkitError("every member diverged; nothing to transfer")

    # k-NN accuracy at matched source accuracy (ANCOVA with width fixed effects)
    b, berr = ancova_slope([p.source_acc for p in per_width], [p.knn_acc for p in per_width])
    all_acc = np.concatenate([np.asarray(p.source_acc, float) for p in per_width])
    ref = float(np.nanmean(all_acc)) if np.isfinite(all_acc).any() else float("nan")
    for p in per_width:
        p.knn_acc_matched = float(p.knn_acc_mean - b * (p.source_acc_mean - ref)) if np.isfinite(ref) \
            else p.knn_acc_mean
    matching = {"method": "ANCOVA: common within-width slope of k-NN accuracy on source accuracy",
                "slope": b, "slope_err": berr, "reference_source_acc": ref,
                "source_acc_range": [float(np.nanmin(all_acc)), float(np.nanmax(all_acc))]
                if np.isfinite(all_acc).any() else [float("nan"), float("nan")]}
    W = [p.width for p in per_width]
    tf = fit_line(np.log2(W), [p.target_acc_mean for p in per_width])
    sf = fit_line(np.log2(W), [p.source_acc_mean for p in per_width])
    trend = {"target_acc_per_doubling": tf.slope, "target_acc_per_doubling_err": tf.slope_err,
             "source_acc_per_doubling": sf.slope, "source_acc_per_doubling_err": sf.slope_err}
    conventions = {
        "features": "input of model.get_classifier()" if layer == PENULTIMATE else f"output of module '{layer}'",
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
    summary = [f"target accuracy changes by {tf.slope:+.3f} +- {tf.slope_err:.3f} per width doubling "
               f"(source accuracy: {sf.slope:+.3f} +- {sf.slope_err:.3f})"]
    if information and len(per_width) > 1:
        lo, hi = per_width[0], per_width[-1]
        summary.append(f"input reconstruction R^2: {lo.recon_r2_mean:.3f} at N={lo.width} -> "
                       f"{hi.recon_r2_mean:.3f} at N={hi.width}; k-NN at matched source accuracy "
                       f"{lo.knn_acc_matched:.3f} -> {hi.knn_acc_matched:.3f}")
    return TransferResult(str(getattr(run, "path", "")), source.spec or source.name, tgt.spec or target,
                          int(tgt.num_classes), layer, probe, shots, conventions, W, sorted(skipped), per_width,
                          matching, trend, summary)
