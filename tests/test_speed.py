"""Speed machinery that must not change results: background prefetch of online batches."""
from __future__ import annotations

import threading

import torch

from widthkit.data import load_task
from widthkit.data.prefetch import Prefetch
from widthkit.recipe import load_recipe
from widthkit.trainer import Batches


def test_prefetch_gives_the_same_batches_whatever_the_order_and_depth():
    recipe = load_recipe("quickstart", overrides=["data.task=mnist1d", "data.online=true", "data.batch_size=16"])
    task = load_task("mnist1d", online=True, n_train=40, n_test=20)
    inline = Batches(recipe, task, [0, 1, 2], torch.device("cpu"), prefetch=0)
    ahead = Batches(recipe, task, [0, 1, 2], torch.device("cpu"), prefetch=3)
    for step in [0, 1, 2, 7, 3, 8, 9, 0]:  # in order, jumps ahead and back (a resume)
        x0, y0 = inline(step)
        x1, y1 = ahead(step)
        assert x1.shape == (3, 16, 1, 40) and torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(inline(4)[0], inline(5)[0])  # fresh data every step
    ahead.close()


def test_prefetch_runs_ahead_in_one_single_threaded_worker():
    seen = []

    def fn(step):
        seen.append((step, threading.current_thread().name, torch.get_num_threads()))
        return step * step

    p = Prefetch(fn, depth=2)
    assert [p(s) for s in range(4)] == [0, 1, 4, 9]
    p.close()
    steps = [s for s, _, _ in seen]
    assert {0, 1, 2, 3} <= set(steps) <= set(range(6)) and len(steps) == len(set(steps))  # once each, <= 2 ahead
    assert all(name.startswith("widthkit-prefetch") and n == 1 for _, name, n in seen)
    assert Prefetch(fn, depth=0)(3) == 9 and seen[-1][1] == threading.current_thread().name


def test_ridge_solver_matches_sklearn_in_both_shapes():
    """The Gram/eigh ridge solver (probes, transfer's R^2) agrees with sklearn's Ridge, n > D and D > n."""
    import numpy as np
    from sklearn.linear_model import Ridge

    from widthkit.probes import _ridge_solutions
    rng = np.random.default_rng(0)
    for n, d in ((120, 30), (40, 90)):
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 3.0  # correlated, off-centre
        t = x[:, :5] @ rng.standard_normal((5, 4)) + 0.1 * rng.standard_normal((n, 4))
        for alpha, W, b in _ridge_solutions(x, t, (1e-3, 1.0, 100.0)):
            ref = Ridge(alpha=alpha, solver="svd").fit(x, t)
            np.testing.assert_allclose(W, ref.coef_, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(b, ref.intercept_, rtol=1e-6, atol=1e-8)


def test_umap_numba_functions_are_cached_on_disk(tmp_path, monkeypatch):
    """The atlas layout switches on numba's disk cache for umap's functions (they compile once, not per process)."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    from atlases.layout import _import_umap
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    umap = _import_umap()
    from umap import layouts, umap_
    for fn in (umap_.smooth_knn_dist, layouts._nb_optimize_layout_euclidean_single_epoch):  # not cache=True in umap
        assert isinstance(fn, Dispatcher) and not isinstance(fn._cache, NullCache)
    assert umap.UMAP is not None
