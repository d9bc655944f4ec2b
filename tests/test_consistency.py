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
