"""2-D layout of activation vectors (UMAP), binning into a G x G grid, per-cell averages.

lucid's activation-atlas choices: UMAP with the cosine metric, ``min_dist=0.01`` and
tunable ``n_neighbors`` (20), optionally after a PCA pre-reduction; seeded. For large
collections UMAP is *fitted* on a random sample of at most ``fit_max`` vectors and
the rest are placed with ``umap.transform`` in blocks (exact for the sample, an
out-of-sample embedding for the others). Coordinates are normalized to the unit
square with 1st/99th-percentile clipping (so outliers don't squeeze the atlas),
binned into G x G cells; cells with fewer than ``min_count`` vectors are dropped.
Each kept cell records its count, mean activation vector (its atlas direction),
class mix when labels exist, and the ``top_k`` members closest to the cell mean.
Cell statistics are accumulated in streaming passes over the HDF5 activations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import h5py
import numpy as np

from widthkit.atomic import atomic_path, atomic_write_text
from widthkit.errors import WidthkitError
from widthkit.progress import bar

from .collect import Activations


@dataclasses.dataclass
class Layout:
    """An atlas layout: per-vector coordinates and the kept grid cells.

    ``coords [N,2]`` in the unit square; ``cell_of [N]`` (flat cell id ``gy*G+gx``);
    ``cells [K,2]`` (gx, gy) of kept cells; ``counts [K]``; ``means [K,D]`` (cell
    directions); ``top [K,top_k]`` vector indices closest to each cell mean (-1 pads);
    ``top_inputs [K,top_k]`` their input indices; ``class_mix [K,C]`` or None;
    ``cov [D,D]`` activation covariance (for whitening); ``meta`` free-form info;
    ``effect [K,C]`` each cell mean's effect on the logits (:func:`atlases.labels.logit_effects`) or None.
    """

    grid: int
    coords: np.ndarray
    cell_of: np.ndarray
    cells: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    top: np.ndarray
    top_inputs: np.ndarray
    class_mix: np.ndarray | None
    cov: np.ndarray | None
    meta: dict = dataclasses.field(default_factory=dict)
    effect: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def labels(self) -> np.ndarray | None:
        """lucid's cell labels ``[K]``: the class each cell's mean activation pushes up most (or None)."""
        return None if self.effect is None else self.effect.argmax(1)

    def save(self, path: str | Path) -> Path:
        """Write the full record to HDF5 (``.h5``) or a JSON record (``.json``, no per-vector arrays)."""
        path = Path(path)
        if path.suffix == ".json":
            d = {k: getattr(self, k) for k in ("grid", "cells", "counts", "means", "top", "top_inputs",
                                                "class_mix", "meta", "effect")}
            d = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}
            atomic_write_text(path, json.dumps(d))
            return path
        with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
            f.attrs["grid"] = self.grid
            f.attrs["meta"] = json.dumps(self.meta)
            for k in ("coords", "cell_of", "cells", "counts", "means", "top", "top_inputs", "class_mix", "cov",
                      "effect"):
                v = getattr(self, k)
                if v is not None:
                    f.create_dataset(k, data=v, compression="gzip" if v.size > 4096 else None)
        return path


def load_layout(path: str | Path) -> Layout:
    """Read a layout saved by :meth:`Layout.save` (``layout.h5`` or ``layout.json``)."""
    path = Path(path)
    if not path.exists():
        raise WidthkitError(f"no layout at {path}; make one with atlases.layout() or atlases.make_atlas()")
    if path.suffix == ".json":
        d = json.loads(path.read_text())
        arr = {k: (None if d.get(k) is None else np.asarray(d[k])) for k in
               ("cells", "counts", "means", "top", "top_inputs", "class_mix", "effect")}
        return Layout(grid=int(d["grid"]), coords=np.zeros((0, 2)), cell_of=np.zeros(0, np.int64),
                      cov=None, meta=d.get("meta", {}), **arr)
    with h5py.File(path, "r") as f:
        get = lambda k: f[k][()] if k in f else None  # noqa: E731
        return Layout(grid=int(f.attrs["grid"]), coords=get("coords"), cell_of=get("cell_of"),
                      cells=get("cells"), counts=get("counts"), means=get("means"), top=get("top"),
                      top_inputs=get("top_inputs"), class_mix=get("class_mix"), cov=get("cov"),
                      meta=json.loads(f.attrs.get("meta", "{}")), effect=get("effect"))


def _numba_cache() -> Path:
    """Where numba caches compiled functions for the atlases (``NUMBA_CACHE_DIR``, default
    ``~/.cache/widthkit/numba``); set in the environment, which numba reads when it is first imported."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "widthkit" / "numba"
    return Path(os.environ.setdefault("NUMBA_CACHE_DIR", str(default)))


def _warm_marker() -> Path:
    """Written once the cache holds everything :func:`embed` compiles, for these numba and umap versions."""
    return _numba_cache() / f".warm-numba{version('numba')}-umap{version('umap-learn')}-pynndescent{version('pynndescent')}"


_warming: list[subprocess.Popen] = []


def _import_umap():
    """``umap``, with its numba functions cached on disk across processes (:func:`_numba_cache`):
    otherwise every fresh process compiles them again (about 30 s of the first layout on a busy 2-core CPU,
    2 s once cached).  umap marks few functions ``cache=True``; the others get caching switched on here,
    before their first compilation.  Waits for a warm-up started by :func:`warm_numba_cache_in_background`
    rather than compiling the same functions a second time."""
    _numba_cache()
    while _warming:
        _warming.pop().wait()
    import umap  # slow import (numba); only when laying out
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher
    from umap import distances, layouts, sparse, spectral, umap_, utils
    for module in (distances, layouts, sparse, spectral, umap_, utils):
        for fn in vars(module).values():
            if isinstance(fn, Dispatcher) and not fn.signatures and isinstance(fn._cache, NullCache):
                try:
                    fn.enable_caching()
                except (RuntimeError, OSError):  # no writable cache directory: compile as usual
                    return umap
    return umap


def warm_numba_cache() -> None:
    """Compile into the disk cache what a first :func:`embed` compiles (pynndescent's import alone is about
    16 s on a 2-core CPU; umap's layout about 5 s more), by laying out a few random vectors."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.h5"
        with h5py.File(path, "w") as f:
            f["vectors"] = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
        embed(Activations(path), n_neighbors=5, pca=None)
    _warm_marker().touch()


def warm_numba_cache_in_background() -> bool:
    """Start :func:`warm_numba_cache` in a low-priority process unless the cache is already warm; True if
    started.  The study calls this before training, so the one-time compile overlaps the training instead
    of adding to the atlas stage; :func:`embed` waits for it to finish."""
    if _warm_marker().exists() or _warming:
        return False
    proc = subprocess.Popen([sys.executable, "-c", "from atlases.layout import warm_numba_cache; warm_numba_cache()"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # idle priority: it runs only on cores the training leaves idle (a 2-thread step stalls on any delay)
        os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, 19)
        except (AttributeError, OSError):
            pass
    _warming.append(proc)
    return True


def embed(acts: Activations, *, n_neighbors: int = 20, min_dist: float = 0.01, metric: str = "cosine",
          pca: int | None = 50, fit_max: int = 20_000, seed: int = 0, index: np.ndarray | None = None,
          chunk: int = 16384) -> np.ndarray:
    """UMAP coordinates ``[N,2]`` of the vectors (fit on <= ``fit_max`` of them, transform the rest).

    When every vector is in the fit, neighbours are found exactly (sklearn, brute force);
    otherwise UMAP's own approximate index is built so ``transform`` can place the rest.
    """
    umap = _import_umap()
    from sklearn.decomposition import PCA

    n = acts.n if index is None else len(index)
    if n < 3:
        raise WidthkitError(f"need at least 3 activation vectors for a layout, got {n}")
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(n, size=min(n, fit_max), replace=False))
    src = (lambda sl: acts.vectors(sl)) if index is None else (lambda sl: acts.vectors(index[sl]))
    fit_x = src(fit_idx).astype(np.float32)
    reducer = None
    if pca and pca < fit_x.shape[1] and pca < len(fit_x):
        reducer = PCA(n_components=pca, random_state=seed).fit(fit_x)
        fit_x = reducer.transform(fit_x)
    nn_ = max(2, min(n_neighbors, len(fit_x) - 1))
    rest = np.setdiff1d(np.arange(n), fit_idx)
    knn = None
    if not len(rest):  # nothing to transform later: exact kNN (sklearn), skips numba's kNN compile
        from sklearn.neighbors import NearestNeighbors
        dist, ind = NearestNeighbors(n_neighbors=nn_, metric=metric, algorithm="brute").fit(fit_x).kneighbors(fit_x)
        knn = (ind, dist.astype(np.float32), None)
    um = umap.UMAP(n_neighbors=nn_, min_dist=min_dist, metric=metric, random_state=seed, n_components=2,
                   init="spectral" if len(fit_x) > nn_ + 2 else "random", precomputed_knn=knn or (None, None, None))
    coords = np.empty((n, 2), np.float32)
    chunks = range(0, len(rest), chunk)
    with bar(f"umap layout ({len(fit_idx)} fitted, {len(rest)} placed)", 1 + len(chunks)) as pb:
        with warnings.catch_warnings():  # umap warns that a seed disables its parallelism, and about precomputed kNN
            warnings.simplefilter("ignore", UserWarning)
            coords[fit_idx] = um.fit_transform(fit_x)
            pb.advance()
            for s in chunks:  # the rest is placed into the fitted map
                ids = rest[s:s + chunk]
                x = src(ids).astype(np.float32)
                coords[ids] = um.transform(reducer.transform(x) if reducer is not None else x)
                pb.advance()
    return coords


def normalize(coords: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Map coordinates into [0, 1]^2 per axis, clipping at the given percentiles."""
    lo = np.percentile(coords, lo_pct, axis=0)
    hi = np.percentile(coords, hi_pct, axis=0)
    return np.clip((coords - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)


def bin_cells(coords01: np.ndarray, grid: int) -> np.ndarray:
    """Flat cell id ``gy * grid + gx`` of each unit-square coordinate."""
    g = np.minimum((coords01 * grid).astype(np.int64), grid - 1)
    return g[:, 1] * grid + g[:, 0]


def cell_stats(acts: Activations, cell_of: np.ndarray, grid: int, *, min_count: int = 1, top_k: int = 6,
               index: np.ndarray | None = None, chunk: int = 16384):
    """Streaming per-cell counts, means, covariance, class mix and top members (closest to the mean).

    Returns ``(kept_ids, counts, means, top, cov, class_mix)`` for cells with >= min_count members.
    """
    ncell = grid * grid
    counts = np.bincount(cell_of, minlength=ncell)
    kept = np.flatnonzero(counts >= max(1, min_count))
    if len(kept) == 0:
        raise WidthkitError(f"no cell has min_count={min_count} vectors; lower min_count or the grid size")
    d = acts.dim
    sums = np.zeros((ncell, d), np.float64)
    tot = np.zeros(d, np.float64)
    gram = np.zeros((d, d), np.float64)
    n = len(cell_of)

    def blocks():
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            x = acts.vectors(sl) if index is None else acts.vectors(index[sl])
            yield sl, x.astype(np.float64)

    for sl, x in blocks():
        np.add.at(sums, cell_of[sl], x)
        tot += x.sum(0)
        gram += x.T @ x
    means_all = sums / np.maximum(counts, 1)[:, None]
    mu = tot / n
    cov = gram / n - np.outer(mu, mu)
    dist = np.empty(n, np.float64)
    for sl, x in blocks():
        dist[sl] = np.linalg.norm(x - means_all[cell_of[sl]], axis=1)
    order = np.lexsort((dist, cell_of))  # by cell, then by distance to the cell mean
    starts = np.searchsorted(cell_of[order], kept)
    top = -np.ones((len(kept), top_k), np.int64)
    for i, (c, s) in enumerate(zip(kept, starts)):
        m = order[s:s + min(top_k, counts[c])]
        top[i, :len(m)] = m
    labels = acts.labels
    class_mix = None
    if labels is not None:
        k = int(labels.max()) + 1  # classes of the whole collection, also for a subset
        labels = labels if index is None else labels[index]
        mix = np.zeros((ncell, k), np.int64)
        np.add.at(mix, (cell_of, labels), 1)
        class_mix = mix[kept]
    return kept, counts[kept], means_all[kept].astype(np.float32), top, cov.astype(np.float32), class_mix


def layout(acts: Activations, grid: int = 12, *, min_count: int = 3, n_neighbors: int = 20,
           min_dist: float = 0.01, pca: int | None = 50, fit_max: int = 20_000, top_k: int = 6,
           seed: int = 0, index: np.ndarray | None = None, coords: np.ndarray | None = None) -> Layout:
    """Lay out ``acts`` (or the subset ``index``) on a ``grid`` x ``grid`` atlas.

    ``coords`` skips UMAP and uses the given 2-D coordinates (e.g. a precomputed embedding).
    """
    if grid < 1:
        raise WidthkitError(f"grid must be >= 1, got {grid}")
    if coords is None:
        coords = embed(acts, n_neighbors=n_neighbors, min_dist=min_dist, pca=pca, fit_max=fit_max,
                       seed=seed, index=index)
    c01 = normalize(np.asarray(coords, np.float64))
    cell_of = bin_cells(c01, grid)
    kept, counts, means, top, cov, mix = cell_stats(acts, cell_of, grid, min_count=min_count,
                                                   top_k=top_k, index=index)
    inp = acts.read("input_index")
    if index is not None:
        inp = inp[index]
    top_inputs = np.where(top >= 0, inp[np.maximum(top, 0)], -1)
    if index is not None:  # report vector ids in the collected file, not the subset
        top = np.where(top >= 0, index[np.maximum(top, 0)], -1)
    cells = np.stack([kept % grid, kept // grid], axis=1)
    meta = dict(layer=acts.layer, n_vectors=int(len(cell_of)), n_neighbors=n_neighbors, min_dist=min_dist,
                pca=pca, fit_max=fit_max, seed=seed, min_count=min_count,
                input_shape=list(acts.input_shape), image_shape=list(acts.image_shape or []),
                input_lo=np.asarray(acts.input_range[0]).tolist(),
                input_hi=np.asarray(acts.input_range[1]).tolist(),
                activations=str(acts.path))
    return Layout(grid=grid, coords=c01.astype(np.float32), cell_of=cell_of, cells=cells, counts=counts,
                  means=means, top=top, top_inputs=top_inputs, class_mix=mix, cov=cov, meta=meta)
