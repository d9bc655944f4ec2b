"""Catapult mechanism: the paper's one-sample update equations and the phase boundaries 2/lambda_0, 4/lambda_0."""
import numpy as np
import pytest
import torch

from widthkit.dynamics import GD, TwoLayerLinear, catapult_recurrence, classify, lr_phase, ntk_top_eigenvalue


def test_training_loop_follows_the_analytic_one_sample_updates():
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
def test_phase_boundaries_at_2_and_4_over_lambda0(m):
    g = torch.Generator().manual_seed(m)
    width, d = 2048, 8
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    x /= x.norm(dim=1, keepdim=True)
    y = torch.zeros(m, 1, dtype=torch.float64) if m == 1 else torch.randn(m, 1, generator=g, dtype=torch.float64)

    def factory(w, seed):
        return TwoLayerLinear(d, w, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)

    grid = np.round(np.arange(0.6, 2.41, 0.05), 3)  # units of 2/lambda_0
    res = lr_phase(factory=factory, data=(x, y), widths=[width], lrs=grid, steps=400, loss="mse",
                   dtype=torch.float64)
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
