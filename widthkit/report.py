"""One self-contained HTML report of a run directory.

``write_report(run)`` reads what is in the run directory -- the index and shards (recipe, versions,
per-width results) and the JSON and PNG files the analyses saved (``ensemble_bias/``, ``transfer/``,
``atlas/*/``, ``atlas-width/*/``, ``lr_phase/``, ``subspace/``, ``ntk_scaling/``, plus any other folder
with JSON and PNG files) -- and writes one HTML file: every plot inlined once as a base64 PNG, each with a
one-line reading computed from the numbers in its JSON; no external resources (readable offline,
printable).  Interactive atlas viewers are linked relatively, not inlined.  Warnings list diverged
members, unfinished widths and the analyses that failed in the last ``widthkit study`` (RUN/study.json).
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import WidthkitError

# ----------------------------------------------------------------------------------- formatting


def _v(x) -> float:
    try:
        return float(x) if x is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _f(x, nd: int = 3) -> str:
    x = _v(x)
    return "-" if not math.isfinite(x) else f"{x:.{nd}g}"


def _pm(x, e, nd: int = 3) -> str:
    return _f(x, nd) + (f" ± {_v(e):.2g}" if math.isfinite(_v(e)) and math.isfinite(_v(x)) else "")


def _pct(x) -> str:
    x = _v(x)
    return "-" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _ends(items: list):
    return items[0], items[-1]


# ----------------------------------------------------------------------------------- blocks
@dataclass
class Block:
    """One report section: headline readings, tables, figures (PNG + reading), links, notes."""

    id: str
    title: str
    lines: list = field(default_factory=list)
    tables: list = field(default_factory=list)     # (caption, columns, rows); a cell is text or (text, href path)
    figures: list = field(default_factory=list)    # (png path or bytes, reading)
    links: list = field(default_factory=list)      # (label, path)
    notes: dict = field(default_factory=dict)      # conventions, shown folded
    used: set = field(default_factory=set)         # files this block accounts for


def _load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise WidthkitError(f"cannot read '{path}' ({e.__class__.__name__}); rerun the analysis that wrote it")


def _png_figures(block: Block, folder: Path, readers: dict[str, Callable[[], str]], fallback: str) -> None:
    """Every PNG of ``folder``, known names first (in ``readers`` order) with their reading, others with the
    analysis' fallback line."""
    pngs = sorted(folder.glob("*.png"), key=lambda p: (list(readers).index(p.name) if p.name in readers
                                                       else len(readers), p.name))
    for png in pngs:
        read = readers.get(png.name)
        try:
            text = read() if read else fallback
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
            text = fallback
        block.figures.append((png, text))
        block.used.add(png)


# ----------------------------------------------------------------------------------- ensemble bias
def _eb_block(paths: list[Path]) -> Block:
    d = _load(paths[0])
    pw = d["per_width"]
    lo, hi = _ends(pw)
    b = Block("ensemble-bias", f"Ensemble bias at step {d['step']} ({d['loss']}, ensembles average {d['averaged']})",
              lines=list(d.get("summary", [])), notes=d.get("conventions", {}), used={paths[0]})
    b.tables.append(("Per width: single models, ensembles, infinite-ensemble loss L_inf and output variance",
                     ["width", "members", "single loss (mean ± sd)", "single error", "ensemble (all) loss",
                      "L_inf", "variance", "L_inf − single(widest)", "reaches widest"],
                     [[p["width"], len(p["seeds"]), _pm(p["single_loss"], p["single_loss_std"]),
                       _pct(p["single_error"]), _f(p["ensemble"]["curve"]["loss"][-1]),
                       _pm(p["ensemble"]["l_inf"], p["ensemble"]["l_inf_err"]), _pm(p["variance"], p["variance_err"]),
                       _f(p["bias_vs_single"]), "yes" if p["reaches_wide"] else "no"] for p in pw]))

    def width() -> str:
        s = (f"single-model test loss {_f(lo['single_loss'])} at N={lo['width']} and {_f(hi['single_loss'])} at "
             f"N={hi['width']}")
        if len(pw) > 1:
            miss = [p["width"] for p in pw[:-1] if not p["reaches_wide"]]
            s += (f"; infinite ensembles of widths {miss} stay above the single width-{hi['width']} model "
                  "(a bias of narrower width)" if miss else
                  f"; every narrower infinite ensemble reaches the single width-{hi['width']} model")
        bf = d.get("bias_fit")
        if bf:
            s += f"; L_inf(N) ≈ {_f(bf['l_wide'])} + b·N^-{_v(bf['alpha']):.2f}"
        return s

    def by_k() -> str:
        gain = [p["ensemble"]["curve"]["loss"][0] - p["ensemble"]["curve"]["loss"][-1] for p in (lo, hi)]
        E = len(hi["ensemble"]["curve"]["ks"])
        return (f"ensembling {E} members lowers the loss by {_f(gain[0])} at N={lo['width']} and by {_f(gain[1])} "
                f"at N={hi['width']}; the 1/K coefficient (the variance term) is {_f(lo['ensemble']['c'])} → "
                f"{_f(hi['ensemble']['c'])}")

    def variance() -> str:
        vf = d["variance_fit"]
        if not math.isfinite(_v(vf.get("exponent"))):
            return f"output variance {_f(lo['variance'])} at N={lo['width']} (too few widths for a power law)"
        e = _v(vf["exponent"])
        err = f"±{_v(vf['exponent_err']):.2f}" if vf.get("n", 0) > 2 else f" (two widths: no error bar)"
        return (f"output variance {'falls' if e < 0 else 'grows'} as N^{e:.2f}{err}, "
                f"from {_f(lo['variance'])} at N={lo['width']} to {_f(hi['variance'])} at N={hi['width']} "
                f"(prediction: N^-1, Vyas et al. 2023)")

    def agreement() -> str:
        ag = d["agreement"]
        i0, ir = 0, len(ag["widths"]) - 1
        step, w0, wr = ag["steps"][-1], ag["widths"][i0], ag["reference_width"]
        if math.isfinite(_v(ag["single_top1"][i0][-1])):
            return (f"at step {step}, single width-{w0} members agree with width-{wr} members on "
                    f"{_pct(ag['single_top1'][i0][-1])} of test points (seed-to-seed floor at width {wr}: "
                    f"{_pct(ag['single_top1'][ir][-1])}); half-ensembles: {_pct(ag['ensemble_top1'][i0][-1])} vs "
                    f"{_pct(ag['ensemble_top1'][ir][-1])}")
        return (f"at step {step}, mean squared output distance to width {wr}: {_f(ag['single_msd'][i0][-1])} for "
                f"width {w0} vs a seed-to-seed floor of {_f(ag['single_msd'][ir][-1])}")

    _png_figures(b, paths[0].parent, {"ensemble_loss_vs_width.png": width, "ensemble_loss_vs_k.png": by_k,
                                      "ensemble_variance.png": variance, "ensemble_agreement.png": agreement},
                 (b.lines or ["ensemble bias"])[0])
    return b


# ----------------------------------------------------------------------------------- transfer
def _transfer_block(paths: list[Path]) -> Block:
    d = _load(paths[0])
    pw = d["per_width"]
    lo, hi = _ends(pw)
    shots = [str(k) for k in d.get("shots", [])]
    b = Block("transfer", f"Last-layer transfer {d['source_task']} → {d['target']} ({d['probe']}, {d['layer']})",
              lines=list(d.get("summary", [])), notes=d.get("conventions", {}), used={paths[0]})
    b.tables.append(("Per width: a new last layer fitted on frozen features (mean ± sd over seeds)",
                     ["width", "seeds", "source acc", "target acc", "target loss"] + [f"{k}-shot" for k in shots]
                     + ["input R²", "10-NN", "10-NN matched"],
                     [[p["width"], len(p["seeds"]), _pm(p["source_acc_mean"], p["source_acc_std"]),
                       _pm(p["target_acc_mean"], p["target_acc_std"]), _pm(p["target_loss_mean"], p["target_loss_std"])]
                      + [_pm(p["few_shot"][k]["acc_mean"], p["few_shot"][k]["acc_std"]) for k in shots]
                      + [_pm(p["recon_r2_mean"], p["recon_r2_std"]), _f(p["knn_acc_mean"]), _f(p["knn_acc_matched"])]
                      for p in pw]))

    def reading() -> str:
        t = d["trend"]
        err = f" ± {_v(t['target_acc_per_doubling_err']):.3f}" if len(pw) > 2 else ""
        return (f"target accuracy {_pct(lo['target_acc_mean'])} at N={lo['width']} and {_pct(hi['target_acc_mean'])} "
                f"at N={hi['width']}: {_v(t['target_acc_per_doubling']):+.3f}{err} per width doubling (source accuracy "
                f"{_v(t['source_acc_per_doubling']):+.3f}); input reconstruction R² {_f(lo['recon_r2_mean'])} → "
                f"{_f(hi['recon_r2_mean'])}")

    _png_figures(b, paths[0].parent, {"transfer.png": reading}, (b.lines or ["transfer"])[0])
    return b


# ----------------------------------------------------------------------------------- atlases
_ATLAS_DIR = re.compile(r"w(\d+)-s(-?\d+)-(.+)")


def _purity(layout_json: Path) -> tuple[float, int, int]:
    """Count-weighted mean share of the dominant class per cell; classes dominating a cell; classes."""
    lay = _load(layout_json)
    mix = np.asarray(lay.get("class_mix") or [], float)
    if mix.ndim != 2 or not len(mix) or mix.sum() <= 0:
        return float("nan"), 0, 0
    tot = mix.sum(1)
    ok = tot > 0
    return (float((mix[ok].max(1)).sum() / tot[ok].sum()), len(set(mix[ok].argmax(1).tolist())),
            int(mix.shape[1]))


def _atlas_block(paths: list[Path]) -> Block:
    b = Block("atlas", "Activation atlases")
    rows, per = [], []
    for p in sorted(paths, key=lambda q: (int(m.group(1)) if (m := _ATLAS_DIR.fullmatch(q.parent.name)) else 0,
                                          str(q))):
        r = _load(p)
        m = _ATLAS_DIR.fullmatch(p.parent.name)
        width, seed = (int(m.group(1)), int(m.group(2))) if m else (None, None)
        pur, dom, C = _purity(p.parent / "layout.json") if (p.parent / "layout.json").exists() else (float("nan"), 0, 0)
        label = f"width {width} (seed {seed})" if width is not None else p.parent.name
        text = (f"{label}, layer {r['layer']}: {r['n_cells']} cells from {r['n_vectors']} activations; a cell is "
                f"{_pct(pur)} one class on average, and {dom} of {C} classes dominate at least one cell")
        png = p.parent / "atlas.png"
        if png.exists():
            b.figures.append((png, text))
        html_ = p.parent / "atlas.html"
        if html_.exists():
            b.links.append((f"interactive atlas viewer: {label}", html_))
        rows.append([width if width is not None else p.parent.name, seed if seed is not None else "-", r["layer"],
                     r["n_vectors"], r["n_cells"], _pct(pur), f"{dom}/{C}" if C else "-",
                     ("open", html_) if html_.exists() else "-"])
        per.append((width, pur, r["n_cells"]))
        b.used |= {p, png, p.parent / "layout.json"}
    b.tables.append(("One atlas per member: UMAP of the layer's activations binned into cells, one "
                     "feature-visualized icon per cell", ["width", "seed", "layer", "activations", "cells",
                                                          "cell purity", "classes dominating", "viewer"], rows))
    known = [q for q in per if q[0] is not None]
    if len(known) > 1:
        (w0, p0, c0), (w1, p1, c1) = known[0], known[-1]
        cmp = "about as" if abs(p1 - p0) < 0.01 else "more" if p1 > p0 else "less"
        b.lines.append(f"cell purity {_pct(p0)} at N={w0} vs {_pct(p1)} at N={w1} ({c0} vs {c1} cells): "
                       f"the widest layer's activation regions are {cmp} class-pure")
    elif b.figures:
        b.lines.append(b.figures[0][1])
    return b


def _atlas_width_block(paths: list[Path]) -> Block:
    b = Block("atlas-width", "Atlases across widths: single neurons vs directions")
    for p in paths:
        d = _load(p)
        W = d["widths"]
        b.used |= {p}
        b.tables.append((f"layer {d['layer']}, seed {d['seed']}: linear-probe test accuracy on one neuron vs on "
                         f"the top-{d['k']} PCA directions",
                         ["width", "neurons", "best neuron", "best neuron acc", f"top-{d['k']} acc", "viewer"],
                         [[w, n, bn, _pct(a), _pct(g), ("open", p.parent / f"w{w}" / "atlas.html")]
                          for w, n, bn, a, g in zip(W, d["n_neurons"], d["best_neuron"], d["best_neuron_acc"],
                                                    d["group_acc"])]))
        gap = [_v(g) - _v(a) for a, g in zip(d["best_neuron_acc"], d["group_acc"])]
        line = (f"best single neuron {_pct(d['best_neuron_acc'][0])} → {_pct(d['best_neuron_acc'][-1])}, top-{d['k']} "
                f"directions {_pct(d['group_acc'][0])} → {_pct(d['group_acc'][-1])} from N={W[0]} to N={W[-1]}: "
                f"class information is {'more' if gap[-1] > gap[0] else 'less'} spread over neurons at the widest "
                "width")
        b.lines.append(line)
        _png_figures(b, p.parent, {"atlas_width.png": lambda: line}, line)
        for w in W:
            b.used |= {p.parent / f"w{w}" / "atlas.png"}  # already composed into atlas_width.png
    return b


# ----------------------------------------------------------------------------------- dynamics
def _lr_phase_block(paths: list[Path]) -> Block:
    d = _load(paths[0])
    pw = d["per_width"]
    b = Block("lr-phase", f"Learning-rate phases ({d['loss']}, {d['steps']} full-batch GD steps on {d['n_train']} "
              "examples)", notes={"convention": d.get("convention", ""), "notes": d.get("notes", "")},
              used={paths[0]})
    b.tables.append(("Per width, learning rates in units of 1/λ0 (lazy|catapult predicted at 2, η_max at 4 for the "
                     "two-layer linear net)", ["width", "λ0", "2/λ0", "lazy|catapult", "max stable", "η_max",
                                               "phases"],
                     [[w["width"], _f(w["lambda0"], 4), _f(w["critical_lr"], 4), _f(w["lazy_catapult_boundary"]),
                       _f(w["max_stable_lr"]), _f(w["eta_max"]),
                       " ".join(f"{_v(r['lr_lambda']):.3g}:{r['phase'][0]}" for r in w["runs"])] for w in pw]))
    bound = [w["lazy_catapult_boundary"] for w in pw if w["lazy_catapult_boundary"] is not None]
    emax = [w["eta_max"] for w in pw if w["eta_max"] is not None]
    phase = (f"lazy|catapult boundary at ηλ0 = {', '.join(_f(x) for x in bound) or 'not reached'} (prediction: 2) "
             f"and divergence at ηλ0 = {', '.join(_f(x) for x in emax) or 'not reached'} over widths "
             f"{[w['width'] for w in pw]}")
    b.lines.append(phase)
    wide = pw[-1]

    def curves() -> str:
        n = {ph: sum(r["phase"] == ph for r in wide["runs"]) for ph in ("lazy", "catapult", "divergent")}
        cat = [r["max_loss_ratio"] for r in wide["runs"] if r["phase"] == "catapult"]
        return (f"width {wide['width']}: {n['lazy']} lazy, {n['catapult']} catapult, {n['divergent']} divergent runs"
                + (f"; catapult runs first rise up to {_f(max(cat))}× the initial loss" if cat else ""))

    def sharp() -> str:
        runs = [r for w in pw for r in w["runs"] if r["phase"] == "catapult"]
        below = sum(bool(r["final_lambda_below_2_over_lr"]) for r in runs)
        best = max((r for w in pw for r in w["runs"] if r["test_acc"] is not None),
                   key=lambda r: r["test_acc"], default=None)
        return (f"after a catapult the final λ is below 2/η in {below} of {len(runs)} runs"
                + (f"; best test accuracy {_pct(best['test_acc'])} at ηλ0 = {_f(best['lr_lambda'])}" if best else ""))

    _png_figures(b, paths[0].parent, {"phase_diagram.png": lambda: phase, "loss_curves.png": curves,
                                      "sharpness_accuracy.png": sharp}, phase)
    return b


def _subspace_block(paths: list[Path]) -> Block:
    d = _load(paths[0])
    b = Block("subspace", f"Gradient in the top Hessian subspace (width {d['width']}, k={d['k']}, "
              f"{d['num_params']} parameters)", notes={"notes": d.get("notes", "")}, used={paths[0]})
    idx = sorted(set(np.linspace(0, len(d["steps"]) - 1, min(len(d["steps"]), 10)).round().astype(int).tolist()))
    b.tables.append(("Overlap ‖P_k g‖²/‖g‖² of the gradient with the top-k eigenspace (some of the measured steps)",
                     ["step", "overlap", "random k-dim", "stability vs previous", "train loss", "test acc"],
                     [[d["steps"][i], _f(d["overlap_sq"][i]), _f(d["random_overlap_sq"][i]),
                       _f(d["stability_prev"][i]), _f(d["train_loss"][i], 4), _pct(d["test_acc"][i])] for i in idx]))
    line = (f"after step {d['steps'][-1]} the gradient lies {_pct(d['overlap_sq'][-1])} in the top-{d['k']} Hessian "
            f"subspace (mean over training {_pct(np.nanmean([_v(x) for x in d['overlap_sq']]))}; a random "
            f"{d['k']}-dim subspace holds k/P = {_v(d['random_expected']):.1e})")
    b.lines.append(line)
    readers = {"subspace.png": lambda: line}
    proj = paths[0].parent / "projected.json"
    if proj.exists():
        pj = _load(proj)
        b.used.add(proj)
        readers["projected.png"] = lambda: "train loss after {} steps: {}".format(
            pj["steps"][-1], ", ".join(f"{k} {_f(v[-1], 4)}" for k, v in pj["train_loss"].items()))
    _png_figures(b, paths[0].parent, readers, line)
    return b


def _ntk_block(paths: list[Path]) -> Block:
    d = _load(paths[0])
    b = Block("ntk-scaling", f"Kernel change and linearization gap vs width ({d['activation']}, {d['loss']}, "
              f"{d['steps']} GD steps at {d['lr_units']}×2/λ0)", notes={"note": d.get("note", "")}, used={paths[0]})
    b.tables.append(("Power-law exponents in width at the final step (prediction in NTK parameterization: -1)",
                     ["param", "quantity", "exponent", "values (per width)"],
                     [[f["param"], f["quantity"], _pm(f["slope"], f["slope_err"]),
                       " ".join(f"{w}:{_f(v)}" for w, v in zip(f["widths"], f["values"]))] for f in d["fits"]]))
    line = "; ".join(f"{f['param']}: {'kernel change' if f['quantity'] == 'kernel_change' else '|f − f_lin|'} ~ "
                     f"n^{_v(f['slope']):.2f}" + (f"±{_v(f['slope_err']):.2f}" if len(f["widths"]) > 2 else "")
                     for f in d["fits"]) + \
        " (prediction in NTK parameterization: n^-1, Dyer & Gur-Ari 2019)"
    b.lines.append(line)
    _png_figures(b, paths[0].parent, {"ntk_scaling.png": lambda: line}, line)
    return b


@dataclass(frozen=True)
class Kind:
    """An analysis the report knows: its name, where its JSON lives under a point's root, its builder."""

    name: str
    pattern: str
    build: Callable[[list], Block]


KINDS = (Kind("ensemble-bias", "ensemble_bias/ensemble_bias.json", _eb_block),
         Kind("transfer", "transfer/transfer.json", _transfer_block),
         Kind("atlas", "atlas/*/result.json", _atlas_block),
         Kind("atlas-width", "atlas-width/*/atlas_width.json", _atlas_width_block),
         Kind("lr-phase", "lr_phase/lr_phase.json", _lr_phase_block),
         Kind("subspace", "subspace/subspace.json", _subspace_block),
         Kind("ntk-scaling", "ntk_scaling/ntk_scaling.json", _ntk_block))
_NOT_ANALYSES = {"shards", "ckpt", "cache", "points"}


def headline(name: str, json_paths: list) -> list[str]:
    """The headline readings of analysis ``name`` from its JSON files (what the study prints)."""
    kind = next((k for k in KINDS if k.name == name), None)
    paths = [Path(p) for p in json_paths if kind and Path(p).name == Path(kind.pattern).name]
    if not paths:
        return []
    try:
        return kind.build(paths).lines
    except (WidthkitError, KeyError, IndexError, TypeError, ValueError):
        return []


def _other_block(folder: Path, skip: set) -> Block | None:
    """Any other folder with PNG plots (e.g. ``widthkit coord-check --out RUN/coord-check``)."""
    pngs = [p for p in sorted(folder.rglob("*.png")) if p not in skip]
    if not pngs:
        return None
    lines = []
    for j in sorted(folder.rglob("*.json")):
        try:
            s = json.loads(j.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(s, dict) and isinstance(s.get("summary"), list):
            lines += [str(x) for x in s["summary"]]
    b = Block(f"other-{re.sub(r'[^a-z0-9]+', '-', folder.name.lower())}", f"{folder.name}", lines=lines)
    for p in pngs:
        b.figures.append((p, (lines or [f"plot {p.relative_to(folder)} (no reading: an analysis the report "
                                        "does not know)"])[0]))
    return b


def discover(root: Path) -> tuple[list[Block], list[str]]:
    """The analysis blocks found under one point's root, and warnings for unreadable outputs."""
    blocks, warnings, used = [], [], set()
    for kind in KINDS:
        paths = sorted(root.glob(kind.pattern))
        if not paths:
            continue
        try:
            groups = [paths] if kind.name == "atlas" else [[p] for p in paths]
            for g in groups:
                b = kind.build(g)
                if len(groups) > 1:
                    b.id += "-" + re.sub(r"[^a-z0-9]+", "-", g[0].parent.name.lower())
                blocks.append(b)
                used |= b.used
        except (WidthkitError, KeyError, IndexError, TypeError, ValueError) as e:
            warnings.append(f"{kind.name}: cannot read its outputs in {paths[0].parent} ({e.__class__.__name__}: "
                            f"{e}); rerun it")
    known = {Path(k.pattern).parts[0] for k in KINDS}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name in known or sub.name in _NOT_ANALYSES or sub.name.startswith("."):
            continue
        b = _other_block(sub, used)
        if b is not None:
            blocks.append(b)
    return blocks, warnings


def analysis_root(run) -> Path:
    """Where the analyses of one grid point live: the run directory, or RUN/points/pNN for a sweep."""
    if len(run.points) <= 1:
        return Path(run.path)
    return Path(run.path) / "points" / f"p{run.points.index(run.point_key):02d}"


# ----------------------------------------------------------------------------------- results
def _training_figure(view, rows) -> tuple[bytes, str]:
    """Test loss (and accuracy) over training per width, mean over the members that did not diverge."""
    from .plots import figure, save, width_colors
    colors = width_colors([r["width"] for r in rows])
    curves = {}
    for r in rows:
        m, div = view.metrics(r["width"]), view.diverged(r["width"])
        keep = ~np.asarray(div, bool)
        if keep.any():
            curves[r["width"]] = (m["step"], np.nanmean(m["test_loss"][keep], 0), np.nanmean(m["test_acc"][keep], 0))
    has_acc = any(np.isfinite(c[2]).any() for c in curves.values())
    fig, axes = figure(2 if has_acc else 1, 1, size=(4.4, 3.2))
    for w, (s, loss, acc) in curves.items():
        axes[0][0].plot(s, loss, "o-", ms=2, color=colors[w], label=f"N={w}")
        if has_acc:
            axes[0][1].plot(s, acc, "o-", ms=2, color=colors[w])
    axes[0][0].set_yscale("log")
    axes[0][0].set(xlabel="step", ylabel=f"test loss ({view.loss_name})", title="mean over members")
    axes[0][0].legend(fontsize=7)
    if has_acc:
        axes[0][1].set(xlabel="step", ylabel="test accuracy")
    with tempfile.TemporaryDirectory() as tmp:
        data = save(fig, Path(tmp) / "training.png").read_bytes()
    W = sorted(curves)
    if len(W) < 2:
        return data, "test loss over training" + (f" at width {W[0]}" if W else " (no member finished)")
    T = min(len(curves[w][1]) for w in W)
    L = np.array([curves[w][1][:T] for w in W])
    mono = int(np.sum(np.all(np.diff(L, axis=0) <= 0, axis=0)))
    return data, (f"test loss falls monotonically with width at {mono} of {T} evaluation steps; at the end "
                  f"{_f(L[0, -1])} at N={W[0]} vs {_f(L[-1, -1])} at N={W[-1]}")


def run_warnings(view, index: dict | None = None) -> list[str]:
    """What a reader must know about one point's training: unfinished widths (with their job counts)
    and diverged members.  Shared by the report and ``widthkit study``'s summary."""
    index = view.index if index is None else index
    point = view.points.index(view.point_key)
    out = []
    for w in view.unfinished:
        jobs = [j for j in index["jobs"].values() if j["width"] == w and j["point"] == point]
        done = sum(j.get("status") == "done" for j in jobs)
        out.append(f"width {w} is unfinished ({done} of {len(jobs)} jobs done); finish it with "
                   f"`widthkit study RECIPE --out {view.path}` (or `widthkit train ... --resume`)")
    for w in view.widths:
        try:
            div = view.diverged(w)
        except WidthkitError:
            continue  # an unreadable shard: the results block says so
        if div.any():
            out.append(f"width {w}: {int(div.sum())} of {len(div)} members diverged (NaN/inf loss); "
                       "analyses leave them out")
    return out


def _results_block(view, job_seconds: dict, suffix: str) -> tuple[Block, list[str]]:
    from .table import ladder_rows, pm
    b = Block("results" + suffix, "Results per width" + (f" [{view.point_key}]" if view.point_key else ""))
    warnings = []
    if not view.widths:
        b.lines.append("no width has finished training yet")
        return b, warnings
    try:
        rows = ladder_rows(view)
    except WidthkitError as e:
        return b, [f"cannot read the results: {e}"]
    b.tables.append(("Final test metrics over seeds (diverged members left out)",
                     ["width", "params", "test loss (mean ± sd)", "test acc (mean ± sd)", "diverged", "train time (s)",
                      "strategy"],
                     [[r["width"], f"{r['params']:,}", pm(r["test_loss"]), pm(r["test_acc"]),
                       f"{r['diverged']}/{r['members']}", _f(job_seconds.get(r["width"]), 3), r["strategy"]]
                      for r in rows]))
    acc = [np.nanmean(r["test_acc"]) if len(r["test_acc"]) else np.nan for r in rows]
    loss = [np.nanmean(r["test_loss"]) if len(r["test_loss"]) else np.nan for r in rows]
    if np.isfinite(acc).any():
        best = int(np.nanargmax(acc))
        b.lines.append(f"test accuracy {_pct(acc[0])} at N={rows[0]['width']} and {_pct(acc[-1])} at "
                       f"N={rows[-1]['width']}; best width {rows[best]['width']} ({_pct(acc[best])})")
    elif np.isfinite(loss).any():
        best = int(np.nanargmin(loss))
        b.lines.append(f"test loss {_f(loss[0])} at N={rows[0]['width']} and {_f(loss[-1])} at N={rows[-1]['width']}; "
                       f"best width {rows[best]['width']}")
    b.figures.append(_training_figure(view, rows))
    return b, warnings


# ----------------------------------------------------------------------------------- HTML
CSS = """
:root{--fg:#1b1f24;--mute:#57606a;--line:#d0d7de;--bg2:#f6f8fa;--warn:#9a4d00}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);margin:0;background:#fff}
main{max-width:1120px;margin:0 auto;padding:1.2rem 2rem 4rem}
h1{font-size:1.7rem;margin:.4rem 0 .2rem}
h2{font-size:1.3rem;border-bottom:1px solid var(--line);padding-bottom:.25rem;margin-top:2.4rem}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
.sub{color:var(--mute);margin:0 0 1rem}
nav{position:sticky;top:0;background:#fffffff0;border-bottom:1px solid var(--line);padding:.45rem 2rem;
    font-size:.9rem;z-index:2}
nav a{margin-right:1rem;color:#0b5cad;text-decoration:none}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem 1.2rem;margin:.6rem 0}
dl.facts dt{color:var(--mute)} dl.facts dd{margin:0}
ul.lines li{margin:.15rem 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.9rem;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;color:var(--mute);padding:.2rem 0;font-size:.88rem}
th,td{border:1px solid var(--line);padding:.22rem .55rem;text-align:right;white-space:nowrap}
th{background:var(--bg2);font-weight:600} td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0 1.4rem;break-inside:avoid;page-break-inside:avoid}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2;display:block}
figure.atlas{max-width:500px} figure img.atlas{image-rendering:pixelated;width:min(100%,480px)}
section{scroll-margin-top:2.6rem}
figcaption{font-size:.92rem;margin-top:.35rem;max-width:62rem}
figcaption b{color:var(--mute);font-weight:600}
pre{background:var(--bg2);padding:.8rem 1rem;overflow:auto;font-size:.82rem;line-height:1.4;border-radius:4px}
details{margin:.4rem 0;color:var(--mute);font-size:.88rem}
ul.warn li{color:var(--warn)} .ok{color:#1a7f37}
.figs{display:flex;flex-wrap:wrap;gap:0 1.5rem} .figs figure{flex:0 1 auto}
@media print{
  nav{display:none} main{max-width:none;padding:0}
  body{font-size:10.5pt} a{color:inherit;text-decoration:none}
  h2{break-after:avoid;page-break-after:avoid} section{break-before:auto}
  table,figure,pre{break-inside:avoid;page-break-inside:avoid}
  pre{white-space:pre-wrap} .scroll{overflow:visible} details{display:none}
}
"""


class _Html:
    """Accumulates the page; inlines each distinct PNG once."""

    def __init__(self, out: Path):
        self.out, self.parts, self.seen = out, [], set()

    def add(self, s: str) -> None:
        self.parts.append(s)

    def href(self, path: Path) -> str:
        return html.escape(os.path.relpath(Path(path).resolve(), self.out.parent.resolve()).replace(os.sep, "/"))

    def cell(self, c) -> str:
        if isinstance(c, tuple):
            return f'<a href="{self.href(c[1])}">{html.escape(str(c[0]))}</a>'
        return html.escape(str(c))

    def table(self, caption: str, columns: list, rows: list) -> None:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{self.cell(c)}</td>" for c in r) + "</tr>" for r in rows)
        self.add(f'<div class="scroll"><table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr>'
                 f"</thead><tbody>{body}</tbody></table></div>")

    def figure(self, png, reading: str, atlas: bool = False) -> None:
        data = png if isinstance(png, bytes) else Path(png).read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if digest in self.seen:
            return
        self.seen.add(digest)
        name = "training curves" if isinstance(png, bytes) else Path(png).name
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cls = ' class="atlas"' if atlas else ""
        self.add(f'<figure{cls}><img{cls} src="{src}" alt="{html.escape(name)}"><figcaption>'
                 f"<b>{html.escape(name)}:</b> {html.escape(reading)}</figcaption></figure>")

    def lines(self, lines: list, cls: str = "lines") -> None:
        if lines:
            self.add(f'<ul class="{cls}">' + "".join(f"<li>{html.escape(str(x))}</li>" for x in lines) + "</ul>")

    def block(self, b: Block, level: str = "h2") -> None:
        self.add(f'<section id="{b.id}"><{level}>{html.escape(b.title)}</{level}>')
        self.lines(b.lines)
        for t in b.tables:
            self.table(*t)
        if b.links:
            self.add("<p>" + " · ".join(f'<a href="{self.href(p)}">{html.escape(label)}</a>' for label, p in b.links)
                     + "</p>")
        self.add('<div class="figs">')
        for png, reading in b.figures:
            self.figure(png, reading, atlas=b.id.startswith("atlas") and Path(str(png)).name == "atlas.png")
        self.add("</div>")
        if b.notes:
            self.add("<details><summary>conventions</summary><dl class=\"facts\">" + "".join(
                f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in b.notes.items())
                + "</dl></details>")
        self.add("</section>")


def _views(run) -> list:
    try:
        run.point_key
        return [run]
    except WidthkitError:
        return [run.select(i) for i in range(len(run.points))]


def _study_record(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "study.json").read_text())
    except (OSError, ValueError):
        return {}


def write_report(run, out: str | Path | None = None) -> Path:
    """Write the HTML report of ``run`` (a Run or a run directory) to ``out`` (default RUN/report.html)."""
    from . import __version__
    from .atomic import atomic_write_text
    from .store import open_run
    run = open_run(run) if isinstance(run, (str, Path)) else run
    out = Path(out) if out is not None else Path(run.path) / "report.html"
    if out.is_dir():
        out = out / "report.html"
    index, views = run.index, _views(run)
    multi = len(run.points) > 1
    study = _study_record(Path(run.path))
    page = _Html(out)
    warnings, sections, headlines = [], [], []
    for i, v in enumerate(views):
        suffix = f"-p{run.points.index(v.point_key):02d}" if multi else ""
        tag = f"[{v.point_key}] " if multi else ""
        job_seconds = {}
        for j in index["jobs"].values():
            if j.get("status") == "done" and j["point"] == (run.points.index(v.point_key) if multi else 0):
                job_seconds[j["width"]] = job_seconds.get(j["width"], 0.0) + _v(j.get("seconds"))
        res, warn = _results_block(v, job_seconds, suffix)
        warnings += [tag + w for w in warn]
        warnings += [tag + w for w in run_warnings(v, index)]
        blocks, warn = discover(analysis_root(v))
        warnings += [tag + w for w in warn]
        for b in blocks:
            b.id = "analysis-" + b.id + suffix
            b.title = tag + b.title
        sections.append((res, blocks))
        headlines += [tag + x for x in res.lines[:1]] + [tag + b.lines[0] for b in blocks if b.lines]
    for a in study.get("analyses", []):
        if a.get("status") == "failed":
            where = f" [{a['point']}]" if a.get("point") else ""
            warnings.append(f"{a['name']}{where} failed in the last study: {a.get('message', '')}")

    r = views[0].recipe
    title = f"widthkit study: {index.get('name', r.name)}"
    page.add(f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
             f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>')
    nav = [("summary", "Summary"), ("recipe", "Recipe"), ("versions", "Versions")]
    for res, blocks in sections:
        nav += [(res.id, "Results")] + [(b.id, b.id.removeprefix("analysis-")) for b in blocks]
    nav.append(("warnings", f"Warnings ({len(warnings)})"))
    page.add("<nav>" + "".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t in nav) + "</nav><main>")

    # summary
    all_w = sorted({w for v in views for w in v.all_widths})
    secs = sum(_v(j.get("seconds")) for j in index["jobs"].values() if j.get("status") == "done")
    facts = {"run directory": str(run.path), "model": f"{r.model.family} {r.model.kwargs or ''}".strip(),
             "parameterization": f"{r.param.kind} (base width {r.base_width})", "task": r.data.task,
             "loss / optimizer": f"{r.train.loss}; {r.optim.name} lr {r.optim.lr}, {r.optim.schedule} schedule",
             "widths": f"{all_w} ({sum(len(v.widths) for v in views)} finished)",
             "seeds per width": str(len(r.train.seeds)), "steps": str(r.train.steps),
             "grid points": ", ".join(run.points) if multi else "1",
             "training time": f"{secs:.0f} s (sum over jobs)", "created / updated":
             f"{index.get('created', '?')} / {index.get('updated', '?')}"}
    page.add(f'<section id="summary"><h1>{html.escape(title)}</h1><p class="sub">Report written '
             f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')} by widthkit {__version__}</p>"
             '<dl class="facts">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                            for k, v in facts.items()) + "</dl>")
    page.lines(headlines)
    if study.get("analyses"):
        page.table("Last `widthkit study` of this run (kept = inputs unchanged, outputs reused)",
                   ["analysis", "point", "status", "seconds", "output"],
                   [[a["name"], a.get("point") or "-", a["status"], _f(a.get("seconds"), 3), a.get("out_dir", "")]
                    for a in study["analyses"]])
        if study.get("seconds"):
            page.table("Study stage timings (seconds)", list(study["seconds"]), [[_f(x, 4) for x in
                                                                                 study["seconds"].values()]])
    page.add(f'<p><a href="#warnings">{len(warnings)} warning{"s" if len(warnings) != 1 else ""}</a></p></section>')

    # recipe and versions
    text = index.get("recipe_toml") or json.dumps([p["recipe"] for p in index["points"]], indent=1)
    over = index.get("overrides") or []
    page.add('<section id="recipe"><h2>Recipe</h2>' + (f"<p>overrides: <code>{html.escape(' '.join(over))}</code></p>"
                                                      if over else "") + f"<pre>{html.escape(text)}</pre></section>")
    page.add('<section id="versions"><h2>Versions</h2>')
    page.table("Recorded when the run was created", ["package", "version"],
               [[k, v] for k, v in index.get("versions", {}).items()])
    page.add("</section>")

    for res, blocks in sections:
        page.block(res)
        for b in blocks:
            page.block(b)

    page.add('<section id="warnings"><h2>Warnings</h2>')
    if warnings:
        page.lines(warnings, "warn")
    else:
        page.add('<p class="ok">none: every width finished, no member diverged, every analysis ran</p>')
    page.add("</section></main></body></html>\n")
    atomic_write_text(out, "".join(page.parts))
    return out
