"""Neuron vs group on layers with a known answer, lucid's cell labels, and icons at the input's resolution."""
import numpy as np
import pytest
import torch
from torch import nn

import atlases


def layer_with(kind, n=1500, classes=10, dim=64, seed=0):
    """Features of a layer whose class information is spread over random directions, or held by one
    selective neuron per class (neurons 0..classes-1)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, classes, n)
    onehot = np.eye(classes)[y]
    x = g.normal(size=(n, dim))
    if kind == "spread":
        rot = np.linalg.qr(g.normal(size=(dim, dim)))[0][:classes]   # orthonormal random directions
        x += 3 * np.sqrt(dim / classes) * onehot @ rot
    else:
        x[:, :classes] += 4 * onehot
    return x.astype(np.float32), y


def test_groups_beat_single_neurons_only_when_the_information_is_spread():
    x, y = layer_with("spread")
    spread = atlases.neuron_vs_group(x[:1000], y[:1000], x[1000:], y[1000:], k=10)
    assert spread.group_acc > 0.95 and spread.best_neuron_acc < spread.group_acc - 0.5
    assert spread.topk_acc < spread.group_acc  # 10 random neurons do not hold the 10 class directions
    x, y = layer_with("selective")
    sel = atlases.neuron_vs_group(x[:1000], y[:1000], x[1000:], y[1000:], k=10)
    assert sorted(sel.top_neurons) == list(range(10))  # selectivity finds exactly the selective neurons
    assert abs(sel.topk_acc - sel.group_acc) < 0.02 and sel.group_acc > 0.9
    assert sel.best_neuron_acc < 0.3  # one neuron tells one class of ten


def test_selectivity_is_the_one_feature_discriminant():
    g = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 50)
    x = g.normal(size=(150, 2))
    x[:, 1] += 5 * y  # neuron 1 separates the three classes, neuron 0 is noise
    acc = atlases.selectivity(x, y)
    assert acc[1] > 0.95 and acc[0] < 0.6
    # independent: sklearn's LDA on that one feature (equal-variance Gaussian classes, fitted priors)
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    lda = LinearDiscriminantAnalysis().fit(x[:, :1], y)
    assert abs(acc[0] - lda.score(x[:, :1], y)) < 1e-9


@pytest.fixture(scope="module")
def net():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 64, generator=g)
    y = torch.randint(0, 10, (300,), generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10)).eval(), x, y


def cells_of(net, layer, tmp_path):
    model, x, y = net
    acts = atlases.collect(model, layer, (x, y), out=tmp_path / f"{layer}.h5")
    coords = np.random.default_rng(0).random((acts.n, 2))  # any layout: the labels must hold per cell
    return model, x, y, acts, atlases.layout(acts, grid=4, coords=coords)


def test_penultimate_label_is_the_head_of_the_cell_mean(net, tmp_path):
    model, x, y, acts, lay = cells_of(net, "3", tmp_path)
    effect, push = atlases.logit_effects(model, "3", (x, y), acts, lay, batch_size=64, directions=np.eye(12)[[4, 7]])
    with torch.no_grad():
        head = model[4](torch.as_tensor(lay.means)).numpy()
    np.testing.assert_allclose(effect, head, atol=1e-4)
    lay.effect = effect
    np.testing.assert_array_equal(lay.labels, head.argmax(1))
    names = [f"c{i}" for i in range(10)]  # the viewer's tooltip shows the label beside the class mix
    recs = atlases.viewer.cell_records(lay, class_names=names)
    assert [r["label"] for r in recs] == [names[c] for c in head.argmax(1)] and all("classes" in r for r in recs)
    np.testing.assert_allclose(push, model[4].weight.detach().numpy()[:, [4, 7]].T, atol=1e-5)  # J e_j = W[:, j]


def test_earlier_layer_label_is_the_linear_approximation(net, tmp_path):
    model, x, y, acts, lay = cells_of(net, "1", tmp_path)
    effect, _ = atlases.logit_effects(model, "1", (x, y), acts, lay)
    rest = model[2:]
    a = torch.as_tensor(acts.vectors())
    k = int(np.argmax(lay.counts))  # the fullest cell, by an independent Jacobian per member
    flat = lay.cells[k, 1] * lay.grid + lay.cells[k, 0]
    members = np.flatnonzero(lay.cell_of == flat)
    m = torch.as_tensor(lay.means[k])
    want = np.mean([(rest(a[i]) + torch.autograd.functional.jacobian(rest, a[i]) @ (m - a[i])).detach().numpy()
                    for i in members], 0)
    np.testing.assert_allclose(effect[k], want, atol=1e-4)


def test_low_res_icons_are_nearest_upsampled_and_examples_are_cell_means(net, tmp_path):
    model, x, y, acts, lay = cells_of(net, "1", tmp_path)
    icons = atlases.render_icons(model, "1", lay, size=32, steps=3, acts=acts)
    assert icons.shape == (lay.n_cells, 32, 32, 1)
    blocks = icons.reshape(lay.n_cells, 8, 4, 8, 4)
    assert np.all(blocks == blocks[:, :, :1, :, :1])  # every 4x4 block is one input pixel: no invented detail
    ex = atlases.render_icons(model, "1", lay, size=8, icons="examples", acts=acts)
    flat = lay.cells[0, 1] * lay.grid + lay.cells[0, 0]
    want = x[lay.cell_of == flat].mean(0).numpy()
    lo, hi = float(x.min()), float(x.max())
    np.testing.assert_allclose(ex[0, :, :, 0].ravel(), (want - lo) / (hi - lo), atol=2e-3)  # float16 storage


def test_one_d_signals_are_drawn_as_lines(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 40, generator=g)  # mnist1d's shape: one channel of 40 samples
    y = torch.randint(0, 3, (120,), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    r = atlases.make_atlas(model, "2", (x, y), tmp_path, grid=2, min_count=1, n_neighbors=5, pca=None,
                           size=40, steps=3, neurons=2)
    lay = atlases.load_layout(r.layout_h5)
    assert lay.labels is not None and len(r.neurons) == 2
    assert atlases.load_activations(r.activations).thumbs(np.arange(3)).shape == (3, 32, 32, 3)  # viewer lines
    pics = atlases.render_icons(model, "2", lay, size=40, steps=2)
    assert pics.shape == (lay.n_cells, 40, 40, 3)
    ink = (pics < 0.9).any(-1)                            # the line's pixels
    cols = ink.any(1)                                     # [K, 40]: the line crosses every column once
    assert cols[:, 2:-2].all() and ink.sum((1, 2)).max() < 40 * 12


class FakeRun:
    """A run-store view with snapshots at steps 10, 20, 30 (or only the last step) and known accuracies."""

    seeds = [0, 1]

    def __init__(self, acc: dict):
        self.acc = acc

    def snapshot_steps(self, width):
        return [10, 20, 30][-len(self.acc[width]):]

    def metrics(self, width):
        a = np.asarray(self.acc[width])
        return {"test_acc": np.stack([a - 0.01, a + 0.01]), "step": self.snapshot_steps(width)}


def test_probes_read_every_width_at_matched_source_accuracy():
    from widthkit.analyses.atlas_width import matched_steps
    steps, level = matched_steps(FakeRun({8: [0.5, 0.7, 0.8], 32: [0.6, 0.9, 0.95]}), [8, 32])
    assert level == pytest.approx(0.8) and steps == {8: 30, 32: 20}  # the wide net reaches 0.8 earlier
    steps, level = matched_steps(FakeRun({8: [0.8], 32: [0.95]}), [8, 32])
    assert np.isnan(level) and steps == {8: 30, 32: 30}  # no snapshots: the final members


def test_conv_labels_expand_around_each_sampled_position(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 3, 6, 6, generator=g), torch.randint(0, 4, (20,), generator=g)
    acts = atlases.collect(model, "1", (x, y), out=tmp_path / "c.h5", positions_per_image=3)
    lay = atlases.layout(acts, grid=2, coords=np.random.default_rng(0).random((acts.n, 2)))
    effect, _ = atlases.logit_effects(model, "1", (x, y), acts, lay, batch_size=8)
    rest, k = model[2:], int(np.argmax(lay.counts))
    members = np.flatnonzero(lay.cell_of == lay.cells[k, 1] * lay.grid + lay.cells[k, 0])
    inp, pos = acts.read("input_index"), acts.read("position")
    with torch.no_grad():
        maps = model[:2](x)                                           # [20, 6, 6, 6]
    want = []
    for i in members:                                                 # an independent JVP per member vector
        a = maps[inp[i]]
        t = torch.zeros_like(a)
        t.view(6, -1)[:, pos[i]] = torch.as_tensor(lay.means[k]) - a.view(6, -1)[:, pos[i]]
        z, jv = torch.autograd.functional.jvp(lambda m: rest(m[None])[0], a, t)
        want.append((z + jv).numpy())
    np.testing.assert_allclose(effect[k], np.mean(want, 0), atol=1e-4)


def test_width_change_is_the_fitted_line_across_every_width():
    from widthkit.analyses.atlas_width import NeuronGroupWidths, neuron_group_reading, width_change
    g = np.random.default_rng(0)
    widths = [16, 64, 256, 1024]
    lose = 0.96 - 0.01 * np.log2(widths)[:, None] + 0.005 * g.normal(size=(4, 5))   # -1 point per doubling
    flat = 0.97 + 0.005 * g.normal(size=(4, 5))
    res = NeuronGroupWidths("act1", 10, 1000, widths, list(range(5)), widths, lose[:, 0].tolist(),
                            lose.mean(1).tolist(), flat.mean(1).tolist(),
                            {"best single neuron": flat.tolist(), "top-k neurons": lose.tolist(),
                             "k PCA directions": flat.tolist()}, 1.0, [100] * 4, float("nan"))
    d, se, verdict = width_change(res, "top-k neurons")
    from scipy.stats import linregress
    fit = linregress(np.repeat(np.log2(widths), 5), lose.ravel())   # an independent least-squares line
    assert d == pytest.approx(fit.slope * 6) and se == pytest.approx(fit.stderr * 6)   # 6 doublings
    assert d == pytest.approx(-0.06, abs=0.01)
    assert verdict == "lose" and width_change(res, "k PCA directions")[2] == "keep"
    assert "the top-10 neurons lose class information with width while 10 directions keep it" in \
        neuron_group_reading(res)
