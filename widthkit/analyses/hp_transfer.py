"""Hyper-parameter transfer across width: does the best value of a swept key stay put as width grows?

The check of muP's promise (Yang et al. 2021, "Tensor Programs V", the mup package's headline figure):
in muP the optimal learning rate (output multiplier, init scale) is the same at every width; in SP it
drifts.  It reads a sweep (``optim.lr = [...]``, trained packed, see :mod:`widthkit.ladder`), so it runs
once per run over every grid point (``per_run``), not once per point.

Conventions:

* ``metric`` at eval ``step`` per member: ``train_loss`` (the mean minibatch loss since the previous
  evaluation), ``test_loss`` or ``test_acc`` (maximised; the others are minimised).  Members that diverged
  (NaN/inf loss) or have a non-finite metric are counted per cell and left out of its mean and spread
  (standard deviation over seeds, ddof=0).
* Each width's optimum: the best grid value of the seed-mean curve, refined by the vertex of the parabola
  through it and its two neighbours on a log2 axis (kept inside that bracket; at a grid edge, or with a
  non-convex bracket, the grid value itself, flagged ``at_edge``).  Its interval: the 16th-84th percentile
  of the optimum over ``bootstrap`` resamples of the seeds (with replacement, the same seeds at every value).
* Drift: the slope of log2(optimum) against log2(width), in octaves of the key per width doubling, fitted by
  weighted least squares with the bootstrap standard deviations as errors (:func:`widthkit.fitting.fit_line`).
* Panels: grid points are split by every other swept key (e.g. ``param.kind``: SP and muP side by side).
* Wider is better: at each value, whether the seed-mean metric improves monotonically with width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import fmt
from ..errors import WidthkitError
from ..fitting import fit_line
from ..plots import figure, save, width_colors
from ..results import Result
from .base import Analysis, Block, Figure, Subject, Table, opt, register_analysis

METRICS = ("train_loss", "test_loss", "test_acc")


@dataclass
class WidthCurve(Result):
    """The metric against the swept values at one width (lists run over ``values``)."""

    width: int
    mean: list[float]            # over the usable seeds (NaN: none usable)
    spread: list[float]          # standard deviation over the usable seeds
    usable: list[int]            # members counted in the mean
    diverged: list[int]          # members left out: diverged or non-finite metric
    optimum: float               # interpolated best value (NaN: no usable value)
    interval: list[float]        # [lo, hi]: 16th-84th bootstrap percentiles over seeds
    log2_err: float              # bootstrap standard deviation of log2(optimum)
    at_edge: bool                # the best grid value is the first or last one: not interpolated


@dataclass
class Panel(Result):
    """One set of grid points (e.g. one parameterization): a curve per width and the drift of the optimum."""

    label: str                                   # the other swept keys, e.g. "param.kind=mup" ('' if none)
    curves: list[WidthCurve]
    optimum: dict[int, float]                    # width -> optimum
    interval: dict[int, list[float]]             # width -> [lo, hi]
    drift: float                                 # octaves of the value per width doubling
    drift_err: float
    wider_is_better: list[bool | None]           # per value: monotone improvement with width (None: gaps)


@dataclass
class HpTransferResult(Result):
    run: str
    key: str
    metric: str
    step: int
    values: list[float]
    widths: list[int]
    panels: list[Panel]
    bootstrap: int
    conventions: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- array-level math

def optimum_on_log_grid(values: np.ndarray, curve: np.ndarray, maximize: bool = False) -> tuple[float, bool]:
    """(optimum, at_edge) of ``curve`` [V] over positive ``values`` [V] (NaN entries are skipped).

    The best finite grid point is refined by the vertex of the parabola through it and its two
    neighbours in log2(value), clipped to that bracket; at an edge (or a non-convex bracket) the grid
    value is returned with ``at_edge`` True (resp. False).
    """
    y = -curve if maximize else curve
    ok = np.isfinite(y)
    if not ok.any():
        return math.nan, False
    x, y = np.log2(values[ok]), y[ok]
    i = int(np.argmin(y))
    if i == 0 or i == len(y) - 1:
        return float(2 ** x[i]), True
    a, b, c = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    if a <= 0:
        return float(2 ** x[i]), False
    return float(2 ** np.clip(-b / (2 * a), x[i - 1], x[i + 1])), False


def _masked_stats(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation and count over the finite entries of each row of ``m`` [V, S] (NaN if none)."""
    ok = np.isfinite(m)
    n = ok.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, m, 0.0).sum(1) / n
        sd = np.sqrt(np.where(ok, (m - mean[:, None]) ** 2, 0.0).sum(1) / n)
    return mean, sd, n


def _curve(width: int, values: np.ndarray, m: np.ndarray, n_div: np.ndarray, maximize: bool, n_boot: int,
           rng: np.random.Generator) -> WidthCurve:
    """Statistics of one width: ``m`` [V, S] per value and seed (NaN where unusable)."""
    mean, spread, usable = _masked_stats(m)
    best, edge = optimum_on_log_grid(values, mean, maximize)
    S = m.shape[1]
    boots = []
    for _ in range(n_boot):
        mb = _masked_stats(m[:, rng.integers(0, S, S)])[0]
        o, _ = optimum_on_log_grid(values, mb, maximize)
        if math.isfinite(o):
            boots.append(math.log2(o))
    if boots:
        lo, hi = np.percentile(boots, [16, 84])
        interval, err = [float(2 ** lo), float(2 ** hi)], float(np.std(boots))
    else:
        interval, err = [math.nan, math.nan], math.nan
    return WidthCurve(int(width), mean.tolist(), spread.tolist(), usable.astype(int).tolist(),
                      n_div.astype(int).tolist(), best, interval, err, edge)


def _monotone(curves: list[WidthCurve], maximize: bool) -> list[bool | None]:
    """Per value: whether the metric improves (weakly) at every width step, None if a width has no mean."""
    out = []
    for j in range(len(curves[0].mean)):
        ys = np.array([c.mean[j] for c in curves], float)
        if not np.isfinite(ys).all():
            out.append(None)
            continue
        d = np.diff(ys)
        out.append(bool((d >= 0).all() if maximize else (d <= 0).all()))
    return out


def _panel(label: str, widths: list[int], values: np.ndarray, cells: dict, maximize: bool, n_boot: int,
           seed: int) -> Panel:
    rng = np.random.default_rng(seed)
    curves = [_curve(w, values, *cells[w], maximize, n_boot, rng) for w in widths]
    ok = [c for c in curves if math.isfinite(c.optimum)]
    errs = [c.log2_err for c in ok]
    use_err = len(ok) > 2 and all(math.isfinite(e) and e > 0 for e in errs)
    fit = fit_line(np.log2([c.width for c in ok]), np.log2([c.optimum for c in ok]), errs if use_err else None)
    return Panel(label, curves, {c.width: c.optimum for c in curves}, {c.width: c.interval for c in curves},
                 fit.slope, fit.slope_err, _monotone(curves, maximize))


# ----------------------------------------------------------------------------- reading the sweep

def swept_keys(run) -> dict[str, list]:
    """Every swept recipe key of ``run`` and its values (in grid order), read from the grid points' recipes."""
    keys: dict[str, list] = {}
    for p in run.index["points"]:
        for part in p["key"].split(",") if p["key"] else []:
            k = part.split("=", 1)[0]
            sec, name = k.split(".", 1)
            v = p["recipe"][sec][name]
            if v not in keys.setdefault(k, []):
                keys[k].append(v)
    return keys


def _metric_at(view, width: int, metric: str, step: int | None) -> tuple[np.ndarray, int]:
    """Metric [S] per seed at eval ``step`` (None: the last), NaN for diverged members, and the step."""
    m = view.metrics(width)
    steps = [int(s) for s in m["step"]]
    if step is None:
        i = len(steps) - 1
    elif step in steps:
        i = steps.index(step)
    else:
        raise WidthkitError(f"--step {step} is not an evaluation step of this run; steps: {steps}")
    vals = np.array(m[metric][:, i], float)
    vals[np.asarray(view.diverged(width), bool)] = np.nan
    return vals, steps[i]


def hp_transfer(run, key: str = "optim.lr", metric: str = "train_loss", step: int | None = None,
                bootstrap: int = 200, seed: int = 0) -> HpTransferResult:
    """The transfer check on a trained sweep ``run`` (a :class:`widthkit.store.Run` or its path)."""
    from ..store import open_run
    run = open_run(run) if isinstance(run, (str, Path)) else run
    if metric not in METRICS:
        raise WidthkitError(f"unknown --metric '{metric}'; choose {', '.join(METRICS)}")
    keys = swept_keys(run)
    if key not in keys:
        shown = ", ".join(keys) or "none (the recipe sweeps nothing)"
        raise WidthkitError(f"--key '{key}' is not swept in run '{run.path}'; swept keys: {shown}")
    values = keys[key]
    if len(values) < 3 or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise WidthkitError(f"--key '{key}' needs at least 3 positive numeric values (it has {values}); "
                            "sweep more values, e.g. optim.lr = [0.001, 0.003, 0.01, 0.03, 0.1]")
    order = sorted(range(len(values)), key=lambda j: values[j])
    values = [values[j] for j in order]
    groups: dict[str, dict] = {}
    for i, p in enumerate(run.index["points"]):
        parts = p["key"].split(",")
        label = ",".join(q for q in parts if q.split("=", 1)[0] != key)
        sec, name = key.split(".", 1)
        groups.setdefault(label, {})[values.index(p["recipe"][sec][name])] = run.select(i)
    widths = sorted(set.intersection(*[set(v.widths) for g in groups.values() for v in g.values()]))
    if len(widths) < 2:
        raise WidthkitError(f"run '{run.path}' has {len(widths)} width(s) finished at every grid point; the "
                            "transfer check needs 2 or more: finish it with `widthkit train RECIPE --out RUN --resume`")
    maximize = metric == "test_acc"
    panels, used_step = [], None
    for label, views in groups.items():
        cells = {}
        for w in widths:
            rows = []
            for j in range(len(values)):
                if j not in views:
                    raise WidthkitError(f"grid point {key}={values[j]} [{label}] is missing from run '{run.path}'")
                vals, used_step = _metric_at(views[j], w, metric, step)
                rows.append(vals)
            m = np.array(rows)
            cells[w] = (m, (~np.isfinite(m)).sum(1))
        panels.append(_panel(label, widths, np.array(values, float), cells, maximize, bootstrap, seed))
    conventions = {
        "metric": f"{metric} at eval step {used_step}" + (" (maximised)" if maximize else " (minimised)"),
        "optimum": "parabola vertex through the best grid value and its neighbours on log2(value)",
        "interval": f"16th-84th percentile over {bootstrap} bootstrap resamples of the seeds",
        "drift": "slope of log2(optimum) vs log2(width): octaves per width doubling (weighted least squares)",
        "diverged": "members with NaN/inf loss, counted per cell and left out of means",
    }
    return HpTransferResult(str(run.path), key, metric, int(used_step), [float(v) for v in values], widths,
                            panels, bootstrap, conventions)


# ----------------------------------------------------------------------------- plot and readings

def plot_transfer(res: HpTransferResult, path: Path) -> Path:
    """mup's figure: the metric against the value (log axis), one line per width, optimum marked; a panel
    per parameterization (or other swept key)."""
    fig, axes = figure(len(res.panels), 1, size=(4.4, 3.4), sharey=True)
    colors = width_colors(res.widths)
    x = np.array(res.values)
    for ax, p in zip(axes[0], res.panels):
        for c in p.curves:
            mean, sd = np.array(c.mean, float), np.array(c.spread, float)
            ax.plot(x, mean, "o-", ms=3, color=colors[c.width], label=f"width {c.width}")
            ax.fill_between(x, mean - sd, mean + sd, color=colors[c.width], alpha=0.15, lw=0)
            if math.isfinite(c.optimum):
                y = np.interp(math.log2(c.optimum), np.log2(x), np.where(np.isfinite(mean), mean, np.nanmax(mean)))
                ax.errorbar([c.optimum], [y], xerr=[[c.optimum - c.interval[0]], [c.interval[1] - c.optimum]],
                            marker="*", ms=10, color=colors[c.width], mec="k", capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(res.key)
        ax.set_title(f"{p.label or 'all points'}: drift {p.drift:+.2f} ± {p.drift_err:.2f} oct/doubling", fontsize=8)
        if res.metric != "test_acc":  # losses span decades near the optimum and at the diverging end
            ax.set_yscale("log")
    axes[0][0].set_ylabel(res.metric)
    axes[0][0].legend(fontsize=7)
    return save(fig, path)


def drift_reading(p: Panel, key: str) -> str:
    """One sentence: does the optimum of ``key`` drift with width, and by how much."""
    name = p.label or "the sweep"
    ws = sorted(p.optimum)
    span = f"from {fmt.num(p.optimum[ws[0]])} at width {ws[0]} to {fmt.num(p.optimum[ws[-1]])} at width {ws[-1]}"
    if not math.isfinite(p.drift):
        return f"{name}: too few finite optima to measure a drift of the best {key} ({span})"
    moves = abs(p.drift) > max(2 * p.drift_err, 0.25) if math.isfinite(p.drift_err) else abs(p.drift) > 0.25
    verdict = (f"the best {key} drifts by {p.drift:+.2f} ± {p.drift_err:.2f} octaves per width doubling"
               if moves else f"the best {key} stays put ({p.drift:+.2f} ± {p.drift_err:.2f} octaves per doubling)")
    edges = [c.width for c in p.curves if c.at_edge]
    tail = f"; at widths {edges} the best value is at the edge of the grid (widen the sweep)" if edges else ""
    return f"{name}: {verdict}, {span}{tail}"


def wider_reading(p: Panel, values: list[float]) -> str:
    known = [(v, ok) for v, ok in zip(values, p.wider_is_better) if ok is not None]
    good = [v for v, ok in known if ok]
    name = p.label or "the sweep"
    if not known:
        return f"{name}: no value has a finite metric at every width"
    bad = [fmt.num(v) for v, ok in known if not ok]
    return (f"{name}: wider is better at {len(good)} of {len(known)} values"
            + (f" (not at {', '.join(bad)})" if bad else ""))


@dataclass
class HpTransferOptions:
    """Options of ``hp-transfer`` (recipe table ``[hp_transfer]``)."""

    key: str = opt("optim.lr", "the swept recipe key whose optimum is tracked across width")
    metric: str = opt("train_loss", "train_loss, test_loss (minimised) or test_acc (maximised)")
    step: int = opt(-1, "evaluation step to read (-1: the last)")
    bootstrap: int = opt(200, "bootstrap resamples of the seeds for the optimum's interval")
    seed: int = opt(0, "seed of the bootstrap")


@register_analysis
class HpTransfer(Analysis):
    name = "hp-transfer"
    order = 15
    help = "does the best learning rate (or any swept key) transfer across width? optimum and drift, SP vs muP"
    Options = HpTransferOptions
    Result = HpTransferResult
    in_study = False   # needs a sweep: `[study] run = ["hp-transfer"]` adds it
    per_run = True
    smoke = {"bootstrap": 10}

    def applies(self, subject: Subject, o: HpTransferOptions) -> str:
        if subject.point is not None and len(subject.point.points) < 3:
            return f"the run sweeps fewer than 3 grid points; sweep {o.key} (e.g. {o.key} = [0.01, 0.03, 0.1])"
        return ""

    def compute(self, subject: Subject, o: HpTransferOptions) -> HpTransferResult:
        view = subject.require_point(self.name)
        return hp_transfer(view.path, o.key, o.metric, None if o.step < 0 else o.step, o.bootstrap, o.seed)

    def plot(self, res: HpTransferResult, folder: Path) -> list[Path]:
        return [plot_transfer(res, Path(folder) / "hp_transfer.png")]

    def blocks(self, res: HpTransferResult, folder: Path) -> list[Block]:
        b = Block(self.name, f"Transfer of {res.key} across width ({res.metric}, step {res.step})",
                  notes=dict(res.conventions))
        b.lines = [drift_reading(p, res.key) for p in res.panels]
        b.lines += [wider_reading(p, res.values) for p in res.panels]
        b.tables.append(Table(
            "Optimum per width (interval: 16th-84th bootstrap percentile over seeds) and drift",
            ["panel", "width", f"best {res.key}", "interval", "at grid edge", "diverged members"],
            [[p.label or "-", str(c.width), fmt.num(c.optimum), f"[{fmt.num(c.interval[0])}, {fmt.num(c.interval[1])}]",
              "yes" if c.at_edge else "no", str(sum(c.diverged))] for p in res.panels for c in p.curves]
            + [[p.label or "-", "drift", f"{p.drift:+.2f} ± {p.drift_err:.2f} oct/doubling", "", "", ""]
               for p in res.panels]))
        for p in res.panels:
            b.tables.append(Table(
                f"{res.metric} (mean ± sd over seeds; † = some members diverged) [{p.label or 'all points'}]",
                [res.key] + [f"width {c.width}" for c in p.curves] + ["wider is better"],
                [[fmt.num(v)] + [("–" if not c.usable[j] else fmt.pm(c.mean[j], c.spread[j], 3))
                                 + (" †" if c.diverged[j] else "") for c in p.curves]
                 + ["-" if p.wider_is_better[j] is None else "yes" if p.wider_is_better[j] else "no"]
                 for j, v in enumerate(res.values)]))
        b.figures = [Figure(Path(folder) / "hp_transfer.png", " ".join(b.lines[:len(res.panels)]))]
        return [b]
