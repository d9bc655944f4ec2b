"""atlases on real models: timm ResNet and ViT layers, a digits MLP, icons and class atlases."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import atlases


def tiny_resnet():
    from timm.models.resnet import BasicBlock, ResNet
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], channels=(8, 16, 32, 32), stem_width=8, num_classes=5).eval()


def tiny_vit():
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()


@pytest.mark.parametrize("make,layer,ppi", [(tiny_resnet, "layer2", 4), (tiny_vit, "blocks.1", 3)],
                         ids=["timm-resnet", "timm-vit"])
def test_atlas_renders_for_timm_layers(make, layer, ppi, tmp_path):
    model = make()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 32, 32, generator=g)
    y = torch.randint(0, 5, (48,), generator=g)
    loader = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)]  # an iterable of (x, y) batches
    assert layer in atlases.layer_names(model)
    r = atlases.make_atlas(model, layer, loader, tmp_path, grid=4, min_count=2, n_neighbors=8, pca=8,
                           size=32, steps=6, positions_per_image=ppi)
    assert r.n_vectors == 48 * ppi and r.n_cells >= 2
    png = np.asarray(Image.open(r.png))
    assert png.shape == (4 * 32, 4 * 32, 3) and png.std() > 5  # icons drawn, not a blank canvas
    lay = atlases.load_layout(r.layout_h5)
    assert lay.n_cells == r.n_cells and lay.means.shape[1] == atlases.load_activations(r.activations).dim
    assert lay.class_mix.sum() == lay.counts.sum()  # labels of every kept vector are counted
    page = open(r.html).read()
    assert page.count('class="cell"') == r.n_cells and "http" not in page.split("<script>")[1]
    assert json.loads(open(r.layout_json).read())["grid"] == 4
    # re-render from the saved layout alone, no recollection
    r2 = atlases.rerender(model, r.layout_h5, tmp_path / "again", size=16, steps=2)
    assert np.asarray(Image.open(r2.png)).shape == (64, 64, 3)


@pytest.fixture(scope="module")
def digits_mlp():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data[:600], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:600])
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval(), x, y


def objective(model, layer, icons, dirs, in_shape=(64,)):
    """dot * cossim of each icon's activation with its own direction, no transforms."""
    with atlases.hooks.capture(model, layer) as cap, torch.no_grad():
        model(torch.tensor(icons).permute(0, 3, 1, 2).reshape(len(icons), *in_shape))
    a = cap.value
    d = torch.tensor(dirs) / torch.tensor(dirs).norm(dim=1, keepdim=True)
    dot = (a * d).sum(1)
    return (dot * (dot / a.norm(dim=1)).clamp_min(0.1)).numpy()


def test_batched_render_gives_each_icon_its_own_direction(digits_mlp):
    model, x, _ = digits_mlp
    with torch.no_grad():
        h = model[1](model[0](x))
    dirs = np.stack([h[i].numpy() for i in (0, 1, 2)])  # three different activation directions
    opts = dict(input_shape=(64,), size=8, steps=40, transforms=[], lr=0.1)
    batched = atlases.render_directions(model, "1", dirs, batch=3, **opts)
    single = atlases.render_directions(model, "1", dirs, batch=1, **opts)
    start = atlases.render_directions(model, "1", dirs, batch=3, **{**opts, "steps": 0})
    assert batched.shape == (3, 8, 8, 1)
    # sum of per-icon losses + element-wise Adam = the same optimisation as one icon at a time
    np.testing.assert_allclose(batched, single, atol=2e-4)
    before, after = objective(model, "1", start, dirs), objective(model, "1", batched, dirs)
    assert np.all(after > before)
    # icon i matches direction i better than the other directions
    own = objective(model, "1", batched, dirs)
    for j in (1, 2):
        assert np.all(own > objective(model, "1", batched, np.roll(dirs, j, axis=0)))


def test_low_res_icons_move_at_most_radius_data_deviations_from_their_start(digits_mlp):
    model, x, _ = digits_mlp
    with torch.no_grad():
        dirs = model[1](model[0](x[[0, 1, 2]])).numpy()
    mean, L = atlases.input_prior(x.numpy())
    np.testing.assert_allclose(L @ L, np.cov(x.numpy(), rowvar=False) + 1e-4 * np.eye(64), atol=1e-8)
    start = x[[3, 4, 5]].numpy()
    opts = dict(input_shape=(64,), size=8, steps=40, prior=(mean, L), init01=start)
    icons = atlases.render_directions(model, "1", dirs, radius=1.5, **opts)
    moved = icons.reshape(3, 64) - start
    # clipping to [0, 1] only shrinks each pixel's move, so |x - x0| <= |L z| <= |L|_2 * radius
    assert np.all((icons >= 0) & (icons <= 1))
    assert np.linalg.norm(moved, axis=1).max() <= np.linalg.eigvalsh(L).max() * 1.5 + 1e-5
    assert np.abs(moved).max() > 0.05                       # it does move, along the data's own directions
    still = atlases.render_directions(model, "1", dirs, radius=0.0, **opts)
    np.testing.assert_allclose(still.reshape(3, 64), start, atol=1e-6)
    assert np.all(objective(model, "1", icons, dirs) > objective(model, "1", still, dirs))


def test_whitening_is_lucids_inverse_covariance():
    g = np.random.default_rng(0)
    a = g.normal(size=(500, 4)) @ np.diag([3.0, 1.0, 0.5, 0.1])
    cov = np.cov(a.T, bias=True)
    d = g.normal(size=(2, 4))
    np.testing.assert_allclose(atlases.whiten_directions(d, cov, ridge=0), d @ np.linalg.inv(cov), rtol=1e-8)


def test_class_atlas_keeps_highest_gradient_x_activation(digits_mlp, tmp_path):
    model, x, y = digits_mlp
    r = atlases.class_atlas(model, "1", (x, y), 3, tmp_path, keep=0.25, grid=3, min_count=1, n_neighbors=8,
                            pca=None, size=8, steps=4)
    acts = atlases.load_activations(r.activations)
    with torch.no_grad():
        h = model[1](model[0](x))
        expect = (h * model[2].weight[3]).sum(1).numpy()  # d logit_3 / d h = W[3]; times h, summed
    np.testing.assert_allclose(acts.read("attribution"), expect, rtol=1e-4, atol=1e-5)
    kept = atlases.top_attributed(acts, 0.25)
    assert len(kept) == 150 and r.n_vectors == 150 and r.class_index == 3
    assert expect[kept].min() >= np.delete(expect, kept).max()
    lay = atlases.load_layout(r.layout_h5)
    assert lay.class_mix.shape[1] == 10
    # class 3 is 10% of the inputs but over a third of the most attributed quarter
    assert lay.class_mix[:, 3].sum() > 0.35 * lay.counts.sum()
    assert set(lay.top.ravel()[lay.top.ravel() >= 0]) <= set(kept)
