"""Catapult mechanism: the paper's one-sample update equations and the phase boundaries 2/lambda_0, 4/lambda_0."""
import numpy as np
import pytest
import torch

from widthkit.dynamics import (GD, PhaseScan, TwoLayerLinear, bisect, catapult_recurrence, classifier_rule, classify,
                               lr_phase, ntk_top_eigenvalue)
from widthkit.dynamics.catapult import constant_loss
from widthkit.errors import WidthkitError


@pytest.fixture
def one_thread():
    """Tiny matmuls run ~100x slower with several threads on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_loop_follows_the_analytic_one_sample_updates(one_thread):
    g = torch.Generator().manual_seed(0)
    n = 512
    model = TwoLayerLinear(10, n, generator=g, dtype=torch.float64)
    x = torch.randn(1, 10, dtype=torch.float64, generator=g)
    x /= x.norm()
    y = torch.zeros(1, 1, dtype=torch.float64)
    lam0 = ntk_top_eigenvalue(model, x).eigenvalue
    # for one sample with ||x|| = 1 the NTK is (||u x||^2 + ||v||^2)/n
    with torch.no_grad():
        assert lam0 == pytest.approx(float(((model.u @ x[0]).pow(2).sum() + model.v.pow(2).sum()) / n), rel=1e-10)
    lr = 3.0 / lam0  # catapult phase: the loss first grows
    f_pred, lam_pred = catapult_recurrence(float(model(x).detach()), lam0, lr, n, 40)
    gd = GD(model, "mse")
    fs, lams = [], []
    for _ in range(41):
        fs.append(float(model(x).detach()))
        lams.append(ntk_top_eigenvalue(model, x).eigenvalue)
        gd.step(x, y, lr)
    assert np.allclose(fs, f_pred, rtol=1e-8, atol=1e-10)
    assert np.allclose(lams, lam_pred, rtol=1e-8)
    assert max(abs(f) for f in fs) > 3 * abs(fs[0]) and lams[-1] < 2 / lr  # it catapulted


@pytest.mark.parametrize("m", [1, 4])
def test_phase_boundaries_at_2_and_4_over_lambda0(m, one_thread):
    g = torch.Generator().manual_seed(m)
    width, d = 2048, 8
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    x /= x.norm(dim=1, keepdim=True)
    y = torch.zeros(m, 1, dtype=torch.float64) if m == 1 else torch.randn(m, 1, generator=g, dtype=torch.float64)

    def factory(w, seed):
        return TwoLayerLinear(d, w, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)

    grid = np.round(np.arange(0.6, 2.41, 0.05), 3)  # units of 2/lambda_0
    res = lr_phase(factory=factory, data=(x, y), widths=[width], lrs=grid, steps=400, loss="mse",
                   dtype=torch.float64, tol=0)
    wp = res.per_width[0]
    phases = [r.phase for r in wp.runs]
    # ordered: lazy, then catapult, then divergent
    order = [("lazy", "catapult", "divergent").index(p) for p in phases]
    assert order == sorted(order) and set(phases) == {"lazy", "catapult", "divergent"}
    assert abs(wp.lazy_catapult_boundary - 2.0) <= 0.2
    assert abs(wp.eta_max - 4.0) <= 0.4
    for r in wp.runs:
        if r.phase == "catapult":  # converged to a flatter point: final curvature below 2/lr
            assert r.final_lambda_below_2_over_lr and r.final_lambda < wp.lambda0
        if r.phase == "lazy":
            assert abs(r.final_lambda / wp.lambda0 - 1) < 0.05


def test_classify():
    assert classify([1.0, 0.5, 0.2, 0.1]) == "lazy"
    assert classify([1.0, 3.0, 9.0, 2.0, 0.1]) == "catapult"
    assert classify([1.0, 3.0, 9.0, 20.0]) == "divergent"
    assert classify([1.0, 3.0, float("nan")]) == "divergent"
    # a run that rose and came back only to the best constant prediction's loss (its units died) did not train
    assert classify([1.0, 3.0, 9.0, 0.5], floor=0.45) == "divergent"
    assert classify([1.0, 3.0, 9.0, 0.4], floor=0.45) == "catapult"
    assert classify([1.0, 3.0, 0.5], floor=0.0) == "catapult"  # constant targets: L_const = 0 is not a floor
    assert classify([1.0, 0.9, 0.5], floor=0.45) == "lazy"     # the floor only judges runs that rose


def test_constant_loss_is_the_best_constant_predictions_loss():
    y = torch.arange(10).repeat(3)  # balanced 10 classes
    assert constant_loss(y, 10, "mse") == pytest.approx(0.5 * 0.9)  # 1/2 sum_k var(one-hot_k)
    assert constant_loss(y, 10, "xent") == pytest.approx(np.log(10))
    yr = torch.tensor([[1.0], [3.0]])
    assert constant_loss(yr, 1, "mse") == pytest.approx(0.5)


@pytest.mark.parametrize("m", [1, 4])
def test_bisected_boundaries_within_2_percent_of_2_and_4_over_lambda0(m, one_thread):
    """Two-layer linear net, y = 0 (the paper's solvable case): a coarse grid, then bisection to 2%."""
    g = torch.Generator().manual_seed(m)
    d = 8
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    x /= x.norm(dim=1, keepdim=True)
    y = torch.zeros(m, 1, dtype=torch.float64)

    def factory(w, seed):
        return TwoLayerLinear(d, w, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)

    res = lr_phase(factory, (x, y), widths=[2048], lrs=[0.5, 1.5, 3.0], steps=400, seeds=[0, 1], tol=0.02,
                   dtype=torch.float64)
    wp = res.per_width[0]
    assert [r.phase for r in wp.runs] == ["lazy", "catapult", "divergent"]
    assert abs(wp.lazy_catapult_boundary / 2 - 1) <= 0.02 and abs(wp.eta_max / 4 - 1) <= 0.02
    assert {(b.name, b.seed) for b in wp.boundaries} == {(n, s) for n in ("lazy|catapult", "catapult|divergent")
                                                         for s in (0, 1)}
    for b in wp.boundaries:  # each seed bracketed to the tolerance, with its own lambda_0
        assert b.hi - b.lo <= 0.02 * (b.hi + b.lo) / 2 and b.lo < b.estimate < b.hi
    assert len({b.lambda0 for b in wp.boundaries}) == 2
    assert res.classifier == classifier_rule() and "(1 + 0.01) L0" in res.classifier
    assert wp.lambda_examples == m


def test_bisect_brackets_a_threshold_to_the_tolerance():
    rng = np.random.default_rng(0)
    for t in rng.uniform(1.1, 9.9, 20):
        calls = []
        lo, hi, n = bisect(lambda c: calls.append(c) or c > t, 1.0, 10.0, 0.02)
        assert lo <= t < hi and hi - lo <= 0.02 * (hi + lo) / 2 and n == len(calls)
        assert n <= int(np.ceil(np.log2(9.0 / (0.02 * lo)))) + 1
    with pytest.raises(WidthkitError):
        bisect(lambda c: True, 2.0, 1.0, 0.02)


class SyntheticScan(PhaseScan):
    """A PhaseScan whose 'training run' is a known classifier: lazy below a, catapult below b, then divergent."""

    def __init__(self, a: float, b: float):
        self.lam0, self.a, self.b, self.calls = 1.0, a, b, []

    def run(self, c, measure=True):
        self.calls.append(c)
        return type("Run", (), {"phase": "lazy" if c < self.a else "catapult" if c < self.b else "divergent"})


@pytest.mark.parametrize("a,b", [(2.3, 9.7), (0.7, 3.3), (5.5, 40.0)])
def test_boundary_walks_the_grid_and_brackets_a_synthetic_classifier(a, b):
    grid = [1.0, 2.0, 4.0, 8.0]
    for name, t in (("lazy|catapult", a), ("catapult|divergent", b)):
        scan = SyntheticScan(a, b)
        found = scan.boundary(name, grid, {}, 1, tol=0.02)  # start anywhere: the walk finds the bracket
        if t < grid[0]:
            assert found.estimate is None and found.hi == grid[0] and "lowest" in found.note
            continue
        assert found.lo < t <= found.hi and found.hi - found.lo <= 0.02 * (found.hi + found.lo) / 2
        assert found.runs == len(scan.calls) == len(set(scan.calls))  # no lr is run twice
    scan = SyntheticScan(a, 1e9)  # never diverges: the walk doubles past the grid, then gives up
    nd = scan.boundary("catapult|divergent", grid, {}, 0, tol=0.02, extend=3)
    assert nd.estimate is None and nd.lo == 64.0 and "not crossed" in nd.note
