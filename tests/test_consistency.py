"""Consistency across widths (Vyas et al. 2023): CKA and distances against independent computations, then a tiny run."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group, wasserstein_distance

from widthkit import similarity as S


def _feature_space_cka(x, y, debiased):
    """Linear CKA written in feature space (the form of Kornblith et al.'s reference notebook)."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    n = len(x)
    xy, xx, yy = np.linalg.norm(x.T @ y) ** 2, np.linalg.norm(x.T @ x) ** 2, np.linalg.norm(y.T @ y) ** 2
    if debiased:
        rx, ry = (x * x).sum(1), (y * y).sum(1)
        nx, ny = rx.sum(), ry.sum()

        def fix(d, ra, rb, na, nb):
            return d - n / (n - 2.0) * ra @ rb + na * nb / ((n - 1) * (n - 2))
        xy, xx, yy = fix(xy, rx, ry, nx, ny), fix(xx, rx, rx, nx, nx), fix(yy, ry, ry, ny, ny)
    return xy / np.sqrt(xx * yy)


@pytest.mark.parametrize("debiased", [True, False])
def test_cka_matches_an_independent_feature_space_implementation(debiased):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7))
    y = x @ rng.normal(size=(7, 12)) + 0.5 * rng.normal(size=(60, 12))
    assert S.cka(x, y, debiased) == pytest.approx(_feature_space_cka(x, y, debiased), rel=1e-10)
    z = rng.normal(size=(60, 30))
    assert S.cka(x, z, debiased) == pytest.approx(_feature_space_cka(x, z, debiased), rel=1e-10)


def test_cka_known_answer_self_and_invariances():
    rng = np.random.default_rng(1)
    # two orthonormal centred columns; keeping one of them: CKA = ||Y'X||^2 / (||X'X|| ||Y'Y||) = 1 / sqrt(2)
    q, _ = np.linalg.qr(np.c_[np.ones(50), rng.normal(size=(50, 2))])
    x = q[:, 1:]
    assert S.cka(x, x[:, :1], debiased=False) == pytest.approx(2 ** -0.5, rel=1e-12)
    h = rng.normal(size=(80, 16))
    assert S.cka(h, h) == pytest.approx(1.0, abs=1e-12) and S.cka(h, h, debiased=False) == pytest.approx(1.0)
    other = np.tanh(h @ rng.normal(size=(16, 24)))
    base = S.cka(h, other)
    rot = ortho_group.rvs(24, random_state=2)
    assert S.cka(h, 3.7 * other @ rot) == pytest.approx(base, rel=1e-9)
    assert S.cka(0.01 * h @ ortho_group.rvs(16, random_state=3), other) == pytest.approx(base, rel=1e-9)
    assert S.cka(h, h @ ortho_group.rvs(16, random_state=4)) == pytest.approx(1.0, abs=1e-9)


def test_debiased_cka_is_near_zero_for_independent_wide_features():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 2000)), rng.normal(size=(200, 2000))
    assert abs(S.cka(x, y)) < 0.02
    assert S.cka(x, y, debiased=False) > 0.8  # the biased estimate is dominated by dimension / n here


def test_wasserstein_and_kernel_alignment_known_answers():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=5000), rng.normal(size=5000) * 2 + 1
    assert S.wasserstein1(a, a + 0.3) == pytest.approx(0.3, abs=1e-9)  # a shift moves every quantile
    assert S.wasserstein1(a, b, 5000) == pytest.approx(wasserstein_distance(a, b), rel=1e-9)
    # a kernel whose top eigenvector is the (centred) target carries all its power at k = 1
    y = rng.normal(size=40)
    yc = (y - y.mean()) / np.linalg.norm(y - y.mean())
    K = 5 * np.outer(yc, yc) + 0.1 * np.eye(40)
    eig, power = S.kernel_alignment(K, y)
    assert eig.sum() == pytest.approx(1.0) and np.all(np.diff(eig) <= 1e-12)
    assert power[0] == pytest.approx(1.0) and power[-1] == pytest.approx(1.0)


def test_agreement_horizon_is_the_leading_run_within_tolerance():
    from widthkit.analyses.consistency import agreement_horizon
    steps = [0, 1, 3, 10, 30]
    assert agreement_horizon(steps, [0.0, 0.05, 0.2, 0.01, 0.0], 0.1) == 1  # a later return does not count
    assert agreement_horizon(steps, [0.0] * 5, 0.1) == 30
    assert agreement_horizon(steps, [0.5, 0.0, 0.0, 0.0, 0.0], 0.1) == -1
    assert agreement_horizon(steps, [0.0, float("nan"), 0.0, 0.0, 0.0], 0.1) == 0


ONLINE = """
name = "tiny-online"
[model]
family = "mlp"
widths = [8, 32]
depth = 2
[param]
kind = "mup"
[data]
task = "teacher?dim=8&teacher_width=16&n_test=128"
online = true
batch_size = 64
[train]
loss = "mse"
steps = 30
seeds = 3
eval_every = "log:5"
snapshots = "log:4"
[optim]
lr = 0.05
"""


def test_consistency_on_a_tiny_online_run(tmp_path):
    from widthkit.analyses.base import analyze, get_analysis
    from widthkit.analyses.consistency import ConsistencyResult, hidden_layers
    from widthkit.ladder import train_ladder
    from atlases.hooks import extract_features
    run = train_ladder(ONLINE, tmp_path / "run")
    res = analyze("consistency", run, tmp_path / "c", n_inputs=64, hessian_examples=64, kernel_inputs=32)
    assert res.reference_width == 32 and res.log_time and res.layers == ["fc0", "fc1"]
    names = [m.name for m in res.measures]
    assert names == ["test loss", "output distance (half-ensembles)", "CKA fc0", "CKA fc1",
                     "preactivation W1 fc0", "preactivation W1 fc1", "sharpness"]
    by = {m.name: m for m in res.measures}
    assert by["test loss"].steps == run.logit_steps(8).tolist() and by["CKA fc0"].steps == run.snapshot_steps(8)
    for m in res.measures:  # the widest compared with itself
        if m.name.startswith(("test loss", "CKA", "preactivation", "sharpness")):
            assert m.until[-1] == m.steps[-1] and np.allclose(m.distance[-1], 0)
    # CKA of width 8 with width 32 at the end, recomputed by hand over the pairs of different seeds
    x = run.task().x_test[:64]
    f = {(w, s): extract_features(run.load_member(w, s), x, "fc1") for w in (8, 32) for s in run.seeds}
    hand = np.mean([S.cka(f[8, a], f[32, b]) for a in run.seeds for b in run.seeds if a != b])
    assert by["CKA fc1"].values[0][-1] == pytest.approx(hand, rel=1e-9)
    assert hidden_layers(run.load_member(8, 0)) == ["fc0", "fc1"]
    assert res.edge_of_stability == pytest.approx(2 / 0.05) and all(v > 0 for v in by["sharpness"].values[0])
    for sp in res.spectra:
        assert len(sp.eigenvalues) == 32 and sum(sp.eigenvalues) == pytest.approx(1.0)
        assert sp.power[-1] == pytest.approx(1.0) and np.all(np.diff(sp.power) >= -1e-12)
    blocks = get_analysis("consistency").blocks(res, tmp_path / "c")
    assert any(line.startswith("test loss: within 0.1 of N=32: N=8 ") for line in blocks[0].lines)
    assert ConsistencyResult.load(tmp_path / "c" / "consistency.json").measures[2].values == by["CKA fc0"].values
    assert (tmp_path / "c" / "consistency.png").stat().st_size > 1000
    assert res.spectrum_step == 30
    from widthkit.analyses.consistency import consistency
    from widthkit.errors import WidthkitError
    with pytest.raises(WidthkitError, match=r"no snapshot at step 7 at every width; snapshot steps: \[0, "):
        consistency(run, step=7)
