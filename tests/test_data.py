"""Tests for widthkit.data: every dataset offline, external ones from tiny files written in the true format."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from widthkit import data
from widthkit.data import load_task, list_tasks
from widthkit.errors import WidthkitError


@pytest.fixture(autouse=True)
def _fresh_cache():
    yield
    # file-based tasks use per-test tmp dirs; drop them so memory stays small
    data.loader._load_cached.cache_clear()
    data.cifar._cifar_raw.cache_clear()


def _unstandardize(x: torch.Tensor, ref: np.ndarray, scale: float) -> np.ndarray:
    """Invert per-channel standardization using statistics recomputed independently from ``ref`` [N,C,...]."""
    ref = ref.astype(np.float64) / scale
    axes = (0,) + tuple(range(2, ref.ndim))
    shape = (1, -1) + (1,) * (ref.ndim - 2)
    return x.double().numpy() * ref.std(axis=axes).reshape(shape) + ref.mean(axis=axes).reshape(shape)


# ------------------------------------------------------------------------------------------ digits & specs

def test_digits_split_shapes_and_standardization():
    from sklearn.datasets import load_digits
    t = load_task("digits")
    assert (t.kind, t.in_shape, t.num_classes, t.online) == ("classification", (1, 8, 8), 10, False)
    assert t.x_train.dtype == torch.float32 and t.y_train.dtype == torch.int64
    assert t.x_train.shape == (1347, 1, 8, 8) and t.x_test.shape == (450, 1, 8, 8)
    # standardized with train statistics: train has mean 0, std 1; pixels map back to integers 0..16
    assert abs(t.x_train.mean().item()) < 1e-5 and abs(t.x_train.std().item() - 1) < 1e-3
    # undo the affine map from its grey levels: 17 equally spaced values = pixel levels 0..16
    vals = np.unique(np.round(t.x_train.double().numpy(), 6))
    assert len(vals) == 17 and np.allclose(np.diff(vals), vals[1] - vals[0], atol=1e-5)
    levels = np.round((t.x_train.double().numpy() - vals[0]) / (vals[1] - vals[0])).astype(np.int64)
    full = load_digits()
    originals = {img.astype(np.int64).tobytes() for img in full.images}
    assert all(img[0].tobytes() in originals for img in levels)  # every train image is a real digit
    # stratified: every class keeps ~25% in test; the union has the original label counts
    counts = np.bincount(np.concatenate([t.y_train.numpy(), t.y_test.numpy()]), minlength=10)
    assert (counts == np.bincount(full.target)).all()
    frac = np.bincount(t.y_test.numpy(), minlength=10) / counts
    assert np.all(np.abs(frac - 0.25) < 0.02)
    # the split is fixed: rebuilding from scratch gives identical tensors
    data.clear_cache()
    again = load_task("digits")
    assert torch.equal(again.x_test, t.x_test) and torch.equal(again.y_train, t.y_train)
    assert load_task("digits") is again  # per-process cache


def test_class_split_relabels_in_given_order():
    full = load_task("digits")
    t = load_task("digits:7,5")
    assert t.classes == [7, 5] and t.num_classes == 2 and t.class_names == ["7", "5"]
    mask = (full.y_train == 7) | (full.y_train == 5)
    assert torch.equal(t.x_train, full.x_train[mask])
    assert torch.equal(t.y_train, (full.y_train[mask] == 5).long())  # 7 -> 0, 5 -> 1
    r = load_task("digits:5-9", n_train=20, n_test=10)
    assert r.classes == [5, 6, 7, 8, 9] and r.x_train.shape[0] == 20 and r.x_test.shape[0] == 10
    keep = full.y_test >= 5
    assert torch.equal(r.y_test, full.y_test[keep][:10] - 5)
    assert load_task("digits:0-2,7").classes == [0, 1, 2, 7]


def test_spec_errors_are_one_line_and_helpful():
    with pytest.raises(WidthkitError, match=r"unknown task 'digit' \(did you mean 'digits'\?\)"):
        load_task("digit")
    with pytest.raises(WidthkitError, match=r"teacher\?perturb=0.5"):
        load_task("teacher:perturb=0.5")
    with pytest.raises(WidthkitError, match="classes 0-9; class 10 does not exist"):
        load_task("digits:10-12")
    with pytest.raises(WidthkitError, match="repeats"):
        load_task("digits:1,1")
    with pytest.raises(WidthkitError, match="unknown option for task 'digits' 'size'"):
        load_task("digits", size=3)
    with pytest.raises(WidthkitError, match="perturb must be float"):
        load_task("teacher?perturb=abc")
    with pytest.raises(WidthkitError, match="no online mode"):
        load_task("digits", online=True)
    with pytest.raises(WidthkitError, match="only 1347 train samples"):
        load_task("digits", n_train=5000)
    with pytest.raises(WidthkitError, match="class lists need a classification task"):
        load_task("teacher:0-1")
    with pytest.raises(WidthkitError, match="load it with online=True"):
        load_task("digits").sample(4, torch.Generator())
    with pytest.raises(WidthkitError) as exc:
        load_task("cifar10", root="/nonexistent/x")
    assert "\n" not in str(exc.value) and "'/nonexistent/x'" in str(exc.value)
    assert set(list_tasks()) == {"digits", "mnist1d", "teacher", "cifar10", "cifar100", "cifar5m", "imagefolder"}
    # options in the spec win over keyword arguments
    a = load_task("teacher?seed=3&n_train=8", seed=1, n_train=16, n_test=4)
    b = load_task("teacher", seed=3, n_train=8, n_test=4)
    assert torch.equal(a.x_train, b.x_train)


# ---------------------------------------------------------------------------------------------- mnist1d

def test_mnist1d_generation_matches_package_and_keeps_global_rng():
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples = 60
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    mine = data.mnist1d.mnist1d_fixed(args)
    assert np.array_equal(np.random.get_state()[1], before)  # caller's RNG untouched
    ref = make_dataset(args)
    for key in ("x", "y", "x_test", "y_test"):
        np.testing.assert_array_equal(mine[key], ref[key])


def test_mnist1d_task_and_online_samples():
    t = load_task("mnist1d:0-2", n_train=30, n_test=20, online=True)
    assert t.x_train.shape == (30, 1, 40) and t.x_test.shape == (20, 1, 40) and t.in_shape == (1, 40)
    assert t.x_train.dtype == torch.float32 and set(t.y_train.tolist()) <= {0, 1, 2}
    finite = load_task("mnist1d:0-2", n_train=30, n_test=20)
    assert torch.equal(finite.x_test, t.x_test)  # same fixed test set online or not
    x1, y1 = t.sample(150, torch.Generator().manual_seed(5))
    x2, y2 = t.sample(150, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    a, _ = t.sample(8, g)
    b, _ = t.sample(8, g)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.allclose(a, b)
    assert x1.shape == (150, 1, 40) and set(y1.tolist()) == {0, 1, 2}
    # online samples follow the fixed set's normalization (same generative process, same constants)
    full = load_task("mnist1d")
    ref = full.x_train[full.y_train < 3]
    assert abs(x1.mean() - ref.mean()) < 0.1 and abs(x1.std() / ref.std() - 1) < 0.1


# ---------------------------------------------------------------------------------------------- teacher

def test_teacher_reproducible_and_consistent():
    t = load_task("teacher", n_train=64, n_test=32)
    assert (t.kind, t.in_shape, t.num_classes) == ("regression", (32,), 1)
    assert t.y_train.shape == (64, 1) and t.y_train.dtype == torch.float32 and t.classes == []
    data.clear_cache()
    again = load_task("teacher", n_train=64, n_test=32)
    assert torch.equal(t.x_train, again.x_train) and torch.equal(t.y_test, again.y_test)
    other = load_task("teacher", n_train=64, n_test=32, seed=1)
    assert not torch.allclose(other.x_train, t.x_train)
    assert not torch.allclose(load_task("teacher", n_train=64, n_test=32, teacher_seed=5).y_train, t.y_train)
    # classification labels are the argmax of the same teacher's outputs (same inputs from the same seed)
    reg = load_task("teacher", outputs=4, n_train=256, n_test=32)
    cls = load_task("teacher", classes=4, n_train=256, n_test=32)
    assert cls.kind == "classification" and cls.num_classes == 4
    assert torch.equal(cls.x_train, reg.x_train) and torch.equal(cls.y_train, reg.y_train.argmax(1))
    assert len(cls.y_train.unique()) == 4
    noisy = load_task("teacher", outputs=4, n_train=256, n_test=32, noise=0.3)
    assert abs((noisy.y_train - reg.y_train).std().item() - 0.3) < 0.03


def test_related_teachers_are_correlated():
    kw = dict(n_train=2000, n_test=8, outputs=8)
    base = load_task("teacher", **kw).y_train.flatten()

    def corr(spec):
        y = load_task(spec, **kw).y_train.flatten()
        return float(torch.corrcoef(torch.stack([base, y]))[0, 1])

    assert corr("teacher?perturb=0.0") == pytest.approx(1.0)
    near, mid, unrelated = corr("teacher?perturb=0.2"), corr("teacher?perturb=0.5"), corr("teacher?teacher_seed=9")
    # both layers' weights have correlation rho = 0.97 / 0.71, so outputs correlate roughly like rho^2
    assert near > 0.85 and 0.3 < mid < 0.7 and abs(unrelated) < 0.25
    # the weights of a perturbed teacher correlate with the base as (1-p)/sqrt((1-p)^2+p^2), at unit variance
    p = 0.5
    w0, _ = data.teacher.teacher_weights(200, 300, 1, 0, 0.0, 1)
    wp, _ = data.teacher.teacher_weights(200, 300, 1, 0, p, 1)
    r = float(torch.corrcoef(torch.stack([w0.flatten(), wp.flatten()]))[0, 1])
    assert r == pytest.approx((1 - p) / np.hypot(1 - p, p), abs=0.01)
    assert wp.std().item() == pytest.approx(1.0, abs=0.01)


def test_teacher_online_samples():
    t = load_task("teacher:0,2", classes=3, online=True, n_train=50, n_test=40)
    assert t.classes == [0, 2] and set(t.y_train.tolist()) == {0, 1} and t.x_train.shape == (50, 32)
    x1, y1 = t.sample(100, torch.Generator().manual_seed(0))
    blob = pickle.dumps(t)  # pickles as a reload recipe: small, sampler included
    assert len(blob) < 2000
    data.clear_cache()
    x2, y2 = pickle.loads(blob).sample(100, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    a, _ = t.sample(100, g)
    b, _ = t.sample(100, g)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.allclose(a, b)
    assert x1.shape == (100, 32) and set(y1.tolist()) == {0, 1}
    # relabelled samples agree with the unsplit teacher's labels on the same inputs
    full = load_task("teacher", classes=3, online=True, n_train=50, n_test=40)
    w1, w2 = data.teacher.teacher_weights(32, 64, 3, 0, 0.0, 1)
    orig = (torch.tanh(x1 @ w1.T / 32 ** 0.5) @ w2.T).argmax(1)
    assert torch.equal(torch.tensor([0, 2])[y1], orig) and full.num_classes == 3


# ------------------------------------------------------------------------------------------------ CIFAR

def _write_cifar10(root, n_per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_per_batch
        entry = {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "filenames": [f"img{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": labels, "num_cases_per_batch": n_per_batch, "num_vis": 3072}, f, protocol=2)
    return labels


def _torchvision(cls, root, train, monkeypatch):
    """The reference parser: torchvision's own class, with only its md5 check of the official archive off."""
    import torchvision.datasets.cifar as tv
    monkeypatch.setattr(tv, "check_integrity", lambda *a, **k: True)
    return cls(str(root), train=train, download=False)


def test_cifar_layout_is_torchvisions():
    from torchvision.datasets import CIFAR10, CIFAR100
    for cls, name in ((CIFAR10, "cifar10"), (CIFAR100, "cifar100")):
        lay = data.cifar.CIFAR_LAYOUT[name]
        assert lay["folder"] == cls.base_folder and lay["meta"] == cls.meta["filename"]
        assert lay["key"] == cls.meta["key"]
        assert lay["train"] == [f for f, _ in cls.train_list] and lay["test"] == [f for f, _ in cls.test_list]


def test_cifar10_matches_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10
    labels = _write_cifar10(tmp_path)
    t = load_task("cifar10", root=str(tmp_path))
    assert t.x_train.shape == (20, 3, 32, 32) and t.in_shape == (3, 32, 32) and t.num_classes == 10
    assert t.class_names == labels and t.x_train.dtype == torch.float32
    ref_tr = _torchvision(CIFAR10, tmp_path, True, monkeypatch)
    ref_te = _torchvision(CIFAR10, tmp_path, False, monkeypatch)
    train_pix = ref_tr.data.transpose(0, 3, 1, 2)  # torchvision keeps HWC
    assert t.y_train.tolist() == ref_tr.targets and t.y_test.tolist() == ref_te.targets
    np.testing.assert_allclose(_unstandardize(t.x_train, train_pix, 255.0), train_pix / 255.0, atol=1e-5)
    np.testing.assert_allclose(_unstandardize(t.x_test, train_pix, 255.0),
                               ref_te.data.transpose(0, 3, 1, 2) / 255.0, atol=1e-5)
    split = load_task("cifar10:3,1", root=str(tmp_path))
    keep = np.isin(ref_tr.targets, [3, 1])
    assert split.y_train.tolist() == [0 if y == 3 else 1 for y in np.array(ref_tr.targets)[keep]]
    assert split.class_names == ["cat", "automobile"]


def test_cifar_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(WidthkitError, match=r"put the extracted 'cifar-10-batches-py' folder there.*data.root"):
        load_task("cifar10", root=str(tmp_path))
    with pytest.raises(WidthkitError, match="'cifar-100-python'"):
        load_task("cifar100", root=str(tmp_path))
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(WidthkitError, match="missing 'data_batch_3'"):
        load_task("cifar10", root=str(tmp_path))
    with pytest.raises(WidthkitError, match="cifar5m_part0.npz"):
        load_task("cifar5m", root=str(tmp_path))
    with pytest.raises(WidthkitError, match="does not exist"):
        load_task("imagefolder", root=str(tmp_path / "nope"))


class _Evil:
    """Unpickling this calls os.system: a CIFAR reader must refuse it."""

    def __reduce__(self):
        import os
        return os.system, ("echo pwned",)


def test_cifar_pickles_cannot_run_code(tmp_path, monkeypatch):
    import os
    _write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": _Evil(), "labels": []}, f, protocol=2)
    called = []
    monkeypatch.setattr(os, "system", lambda cmd: called.append(cmd))
    with pytest.raises(WidthkitError, match=r"cannot read .*refusing to load '(posix|nt|os)\.system'"):
        load_task("cifar10", root=str(tmp_path))
    assert not called


def test_spec_strings_round_trip():
    from widthkit.data.spec import format_spec, parse_spec
    assert parse_spec(" teacher:0-2,7?perturb=0.5&label=coarse&x=true ") == (
        "teacher", (0, 1, 2, 7), {"perturb": 0.5, "label": "coarse", "x": True})
    spec = format_spec("teacher", (2, 0), {"perturb": 0.5, "x": True})
    assert spec == "teacher:2,0?perturb=0.5&x=true"
    assert parse_spec(spec) == ("teacher", (2, 0), {"perturb": 0.5, "x": True})
    t = load_task("teacher?perturb=0.5&classes=3&teacher_seed=2", n_train=8, n_test=4)
    assert t.spec == "teacher?classes=3&perturb=0.5&teacher_seed=2"
    assert load_task(t.spec, n_train=8, n_test=4) is t


def test_cifar100_fine_and_coarse(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    coarse_of = rng.integers(0, 20, 100)  # each fine class belongs to one superclass
    written = {}
    for name, n in (("train", 30), ("test", 12)):
        fine = rng.integers(0, 100, n)
        written[name] = (fine, coarse_of[fine])
        entry = {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": name,
                 "fine_labels": fine.tolist(), "coarse_labels": coarse_of[fine].tolist(),
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, f, protocol=2)
    fine = load_task("cifar100", root=str(tmp_path))
    ref = _torchvision(CIFAR100, tmp_path, True, monkeypatch)
    assert fine.num_classes == 100 and fine.y_train.tolist() == ref.targets == written["train"][0].tolist()
    np.testing.assert_allclose(_unstandardize(fine.x_train, ref.data.transpose(0, 3, 1, 2), 255.0),
                               ref.data.transpose(0, 3, 1, 2) / 255.0, atol=1e-5)
    coarse = load_task("cifar100?label=coarse", root=str(tmp_path))
    assert coarse.num_classes == 20 and coarse.class_names[3] == "super3"
    assert coarse.y_train.tolist() == written["train"][1].tolist()
    assert coarse.y_test.tolist() == written["test"][1].tolist()
    assert torch.equal(coarse.x_train, fine.x_train)
    with pytest.raises(WidthkitError, match="unknown cifar100 label 'corse'"):
        load_task("cifar100", root=str(tmp_path), label="corse")


# ---------------------------------------------------------------------------------------------- CIFAR-5m

def test_cifar5m_shards_memmap_split_and_stream(tmp_path):
    rng = np.random.default_rng(2)
    xs = [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (40, 30)]
    ys = [rng.integers(0, 10, len(x)) for x in xs]
    np.savez(tmp_path / "cifar5m_part0.npz", X=xs[0], Y=ys[0])
    np.savez_compressed(tmp_path / "cifar5m_part1.npz", X=xs[1], Y=ys[1])  # compressed: read fully
    assert isinstance(data.cifar5m.npz_array(tmp_path / "cifar5m_part0.npz", "X"), np.memmap)
    assert not isinstance(data.cifar5m.npz_array(tmp_path / "cifar5m_part1.npz", "X"), np.memmap)
    X = np.concatenate(xs).transpose(0, 3, 1, 2)
    Y = np.concatenate(ys)
    t = load_task("cifar5m", root=str(tmp_path), online=True, n_train=25, n_test=10)
    assert t.online and t.x_train.shape == (25, 3, 32, 32) and t.num_classes == 10
    stats_ref = X[:60]  # normalization statistics: every image before the test set
    np.testing.assert_allclose(_unstandardize(t.x_test, stats_ref, 255.0), X[-10:] / 255.0, atol=1e-5)
    np.testing.assert_allclose(_unstandardize(t.x_train, stats_ref, 255.0), X[:25] / 255.0, atol=1e-5)
    assert t.y_test.tolist() == Y[-10:].tolist()
    x1, y1 = t.sample(50, torch.Generator().manual_seed(3))
    x2, y2 = t.sample(50, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # every streamed sample is a training image (never a test image) carrying its own label
    pix = np.round(_unstandardize(x1, stats_ref, 255.0) * 255).astype(np.int64)
    flat = X.reshape(len(X), -1).astype(np.int64)
    for p, y in zip(pix.reshape(len(pix), -1), y1.tolist()):
        hit = np.flatnonzero((flat == p).all(1))
        assert len(hit) == 1 and hit[0] < 60 and Y[hit[0]] == y
    split = load_task("cifar5m:2,7", root=str(tmp_path), online=True, n_train=3, n_test=2)
    _, ys_ = split.sample(40, torch.Generator().manual_seed(0))
    assert set(ys_.tolist()) <= {0, 1} and split.classes == [2, 7]
    keep = np.flatnonzero(np.isin(Y, [2, 7]))
    assert split.y_test.tolist() == [0 if Y[i] == 2 else 1 for i in keep[-2:]]


# ------------------------------------------------------------------------------------------- imagefolder

def _write_pngs(folder, colors, per_class):
    from PIL import Image
    for name, color in colors.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            shade = tuple(int(c) for c in np.clip(np.array(color) + 3 * i, 0, 255))
            Image.new("RGB", (6, 6), shade).save(folder / name / f"{i}.png")


def test_imagefolder_split_and_resize(tmp_path):
    colors = {"blue": (0, 0, 200), "green": (0, 200, 0), "red": (200, 0, 0)}
    _write_pngs(tmp_path / "imgs", colors, per_class=5)
    t = load_task("imagefolder", root=str(tmp_path / "imgs"), size=4)
    assert t.in_shape == (3, 4, 4) and t.x_train.shape == (12, 3, 4, 4) and t.x_test.shape == (3, 3, 4, 4)
    assert t.class_names == ["blue", "green", "red"] and sorted(t.y_test.tolist()) == [0, 1, 2]  # stratified
    # each image's label is the folder of its colour: after per-channel standardization the class's own
    # channel is the largest (blue -> 2, green -> 1, red -> 0)
    pix_mean = torch.cat([t.x_train, t.x_test]).mean((2, 3))
    lab = torch.cat([t.y_train, t.y_test])
    dominant = pix_mean.argmax(1)
    assert torch.equal(dominant, torch.tensor([2, 1, 0])[lab])
    data.clear_cache()
    again = load_task("imagefolder", root=str(tmp_path / "imgs"), size=4)
    assert torch.equal(again.x_test, t.x_test) and torch.equal(again.y_train, t.y_train)
    # explicit train/ and test/ folders are used as given
    _write_pngs(tmp_path / "tt" / "train", colors, per_class=2)
    _write_pngs(tmp_path / "tt" / "test", colors, per_class=1)
    tt = load_task("imagefolder:2,0", root=str(tmp_path / "tt"), size=4)
    assert tt.x_train.shape[0] == 4 and tt.x_test.shape[0] == 2 and tt.class_names == ["red", "blue"]


def test_mnist1d_batched_transform_matches_package_transform():
    """Fed the draws mnist1d's transform makes (replayed from its numpy stream), the batched transform gives
    the same signals; its own draws follow the same distributions."""
    from mnist1d.data import get_dataset_args, get_templates
    from mnist1d.transform import transform
    from widthkit.data.mnist1d_batch import Mnist1dDraws, Mnist1dTransform
    args, templates = get_dataset_args(), get_templates()
    lo, hi = args.padding
    n, length = 200, args.template_len + hi
    labels, draws, refs = np.arange(n) % 10, [], []
    for i in range(n):
        np.random.seed(7000 + i)  # replay transform's draws in its order: pad, scale, shift, 2 noises, shear
        draws.append((lo + int(np.random.rand() * (hi - lo + 1)), np.random.rand(),
                      np.random.choice(args.max_translation), np.random.randn(length), np.random.randn(length),
                      np.random.rand()))
        np.random.seed(7000 + i)
        refs.append(transform(templates["x"][labels[i]], templates["t"], args)[0])
    col = lambda j, dtype=torch.float64: torch.tensor(np.array([d[j] for d in draws]), dtype=dtype)  # noqa: E731
    d = Mnist1dDraws(col(0, torch.long), col(1), col(2, torch.long), col(3), col(4), col(5))
    assert len(set(d.pad.tolist())) > 10 and len(set(d.shift.tolist())) > 20  # the tables are really exercised
    ref = np.stack(refs)
    exact = Mnist1dTransform(args, templates, dtype=torch.float64)(torch.as_tensor(labels), d).numpy()
    np.testing.assert_allclose(exact, ref, rtol=0, atol=1e-12)
    d32 = Mnist1dDraws(*(v.float() if v.is_floating_point() else v for v in dataclasses.astuple(d)))
    fast = Mnist1dTransform(args, templates)(torch.as_tensor(labels), d32)  # the sampler's float32 path
    assert fast.dtype == torch.float32
    np.testing.assert_allclose(fast.numpy(), ref, rtol=0, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    own = Mnist1dDraws.sample(20000, args, g)
    assert own.pad.min() == lo and own.pad.max() == hi and own.shift.min() == 0
    assert own.shift.max() == args.max_translation - 1
    assert abs(own.scale_u.mean() - 0.5) < 0.01 and abs(own.corr.std() - 1) < 0.01
