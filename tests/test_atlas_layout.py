"""atlases: collection to HDF5, UMAP layout, binning and per-cell statistics on synthetic data."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import atlases
from widthkit.errors import WidthkitError


def clustered(n_per=80, k=4, d=24, seed=0):
    """k well-separated clusters (distinct directions, so also separated in cosine distance)."""
    g = np.random.default_rng(seed)
    centers = np.linalg.qr(g.normal(size=(d, d)))[0][:k] * 10  # orthogonal directions
    x = np.concatenate([c + 0.3 * g.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    perm = g.permutation(len(x))
    return torch.tensor(x[perm]), torch.tensor(y[perm])


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    x, y = clustered()
    model = nn.Sequential(nn.Identity())
    return atlases.collect(model, "0", (x, y), out=tmp_path_factory.mktemp("acts") / "a.h5", batch_size=50)


def test_collect_streams_vectors_labels_and_indices(acts):
    x, y = clustered()
    assert acts.n == len(x) and acts.dim == x.shape[1]
    np.testing.assert_array_equal(acts.vectors(), x.numpy())
    np.testing.assert_array_equal(acts.labels, y.numpy())
    np.testing.assert_array_equal(acts.read("input_index"), np.arange(len(x)))
    assert acts.image_shape is None  # 24 features are not a square image


def test_umap_separates_clusters_and_cell_means_match_numpy(acts, tmp_path):
    lay = atlases.layout(acts, grid=8, min_count=1, n_neighbors=15, pca=None, seed=0)
    labels, vecs = acts.labels, acts.vectors()
    assert lay.coords.min() >= 0 and lay.coords.max() <= 1
    # every cell holds one cluster only, and all 4 clusters appear
    for k, mix in enumerate(lay.class_mix):
        assert (mix > 0).sum() == 1, f"cell {lay.cells[k]} mixes clusters: {mix}"
    assert set(np.flatnonzero(lay.class_mix.sum(0))) == {0, 1, 2, 3}
    # cell means, counts and top members against plain numpy
    for k, (gx, gy) in enumerate(lay.cells):
        members = lay.cell_of == gy * lay.grid + gx
        assert lay.counts[k] == members.sum()
        np.testing.assert_allclose(lay.means[k], vecs[members].mean(0), rtol=1e-5, atol=1e-5)
        d = np.linalg.norm(vecs[members] - vecs[members].mean(0), axis=1)
        top = lay.top[k][lay.top[k] >= 0]
        np.testing.assert_allclose(np.linalg.norm(vecs[top] - lay.means[k], axis=1), np.sort(d)[:len(top)],
                                   rtol=1e-5)
    np.testing.assert_allclose(lay.cov, np.cov(vecs.T, bias=True), rtol=1e-4, atol=1e-4)
    # same seed, same layout (reproducible)
    lay2 = atlases.layout(acts, grid=8, min_count=1, n_neighbors=15, pca=None, seed=0)
    np.testing.assert_allclose(lay2.coords, lay.coords)
    # round trip through layout.h5 and layout.json
    for name in ("layout.h5", "layout.json"):
        back = atlases.load_layout(lay.save(tmp_path / name))
        np.testing.assert_array_equal(back.cells, lay.cells)
        np.testing.assert_allclose(back.means, lay.means, rtol=1e-6)
        np.testing.assert_array_equal(back.top_inputs, lay.top_inputs)
        assert back.meta["layer"] == "0"


def test_binning_normalization_and_min_count(acts):
    c = np.array([[0.0, 0.0], [0.999, 0.0], [0.5, 0.5], [1.0, 1.0]])
    np.testing.assert_array_equal(atlases.bin_cells(c, 4), [0, 3, 10, 15])
    z = atlases.normalize(np.array([[-100.0, 0.0]] + [[i, 2.0 * i] for i in range(98)] + [[1e6, 1e6]]))
    assert z.min() == 0 and z.max() == 1 and 0 < z[50, 0] < 1  # outliers clipped, bulk spread out
    # a fixed layout (already spanning the unit square): 2 points in cell (0,0), 5 in (1,1) ...
    rest = acts.n - 7
    coords = np.array([[0.2, 0.2]] * 2 + [[0.8, 0.8]] * 5 + [[0.0, 1.0]] * (rest // 2)
                      + [[1.0, 0.0]] * (rest - rest // 2))
    lay = atlases.layout(acts, grid=2, min_count=3, coords=coords)
    assert [tuple(map(int, c)) for c in lay.cells] == [(1, 0), (0, 1), (1, 1)]  # (0,0) dropped
    np.testing.assert_array_equal(lay.counts, [rest - rest // 2, rest // 2, 5])


def test_conv_positions_are_sampled_per_image_and_recorded(tmp_path):
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
    x = torch.randn(10, 3, 5, 5)
    a = atlases.collect(conv, "1", x, positions_per_image=3, out=tmp_path / "c.h5", seed=1, batch_size=4)
    assert a.n == 30 and a.image_shape == (3, 5, 5)
    inp, pos, vec = a.read("input_index"), a.read("position"), a.vectors()
    np.testing.assert_array_equal(np.bincount(inp), [3] * 10)
    with torch.no_grad():
        full = conv(x).reshape(10, 6, 25)
    for i in range(30):  # each stored vector is the activation at its recorded input and position
        np.testing.assert_allclose(vec[i], full[inp[i], :, pos[i]].numpy(), rtol=1e-5, atol=1e-6)
    assert all(len(set(pos[inp == i])) == 3 for i in range(10))  # distinct positions per image
    capped = atlases.collect(conv, "1", x, positions_per_image=3, max_vectors=7, out=tmp_path / "d.h5")
    assert capped.n == 7 and capped.read("thumbs").shape[0] == 3


def test_bad_layer_name_lists_valid_names():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(WidthkitError, match=r"unknown layer 'fc9'; valid: 0, 1"):
        atlases.collect(model, "fc9", torch.randn(3, 4))
    named = nn.Sequential(OrderedDict(fc1=nn.Linear(2, 2), act=nn.ReLU()))
    with pytest.raises(WidthkitError, match="did you mean 'fc1'"):
        atlases.get_layer(named, "fc2")


def test_numba_warm_up_runs_once_in_the_background_and_the_layout_waits_for_it():
    """The study starts UMAP's one-time compile in a background process before training; the layout waits for it
    instead of compiling the same functions again, and a warm cache (its marker) starts nothing."""
    import importlib
    layout = importlib.import_module("atlases.layout")  # the package's `layout` is the function of that name
    layout.warm_numba_cache()  # the cache this machine's atlases use: compiled once, cheap when warm
    marker = layout._warm_marker()
    assert marker.exists() and not layout.warm_numba_cache_in_background()
    marker.unlink()  # as if never warmed: a background process does it again
    assert layout.warm_numba_cache_in_background()
    assert not layout.warm_numba_cache_in_background()  # one at a time
    proc = layout._warming[0]
    layout._import_umap()
    assert not layout._warming and proc.returncode == 0 and marker.exists()
