"""Curvature beyond the top eigenvalues, against the dense Hessian of a model with a few hundred parameters.

The model is trained first, so its Hessian has the outliers-plus-bulk shape of real networks.  Hutch++
(curvlinops, 30 queries) must give the trace within 5%; the deflated SLQ density's mean and second moment
must match the dense eigenvalues' within 5%; the Gauss-Newton operator must equal ``J^T H_L J`` built
from the dense Jacobian.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from widthkit.dynamics.curvature import GaussNewtonOperator, curvature, density, trace_estimate
from widthkit.dynamics.losses import get_loss
from widthkit.errors import WidthkitError

pytest.importorskip("curvlinops")


def trained(loss: str, steps: int = 300):
    """A 212-parameter tanh MLP trained by full-batch GD on 64 examples of a 4-class (or 4-output) task."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x = torch.randn(64, 8, dtype=torch.float64)
    y = x[:, :4].argmax(1) if loss == "xent" else torch.tanh(x[:, :4] + x[:, 4:])
    opt = torch.optim.SGD(model.parameters(), lr=0.5 if loss == "xent" else 0.1)
    for _ in range(steps):
        opt.zero_grad()
        get_loss(loss)(model(x), y).backward()
        opt.step()
    return model, x, y


def flat(model):
    names = [(n, p.shape, p.numel()) for n, p in model.named_parameters()]

    def unflat(theta):
        out, i = {}, 0
        for n, shape, k in names:
            out[n] = theta[i:i + k].view(shape)
            i += k
        return out
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), unflat


def dense_hessian(model, loss, x, y):
    theta, unflat = flat(model)
    return torch.autograd.functional.hessian(lambda t: get_loss(loss)(functional_call(model, unflat(t), (x,)), y),
                                             theta)


@pytest.fixture(scope="module")
def xent():
    model, x, y = trained("xent")
    ev = torch.linalg.eigvalsh(dense_hessian(model, "xent", x, y))
    return model, x, y, ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hutchpp_trace_and_slq_moments_match_the_dense_hessian(xent, seed):
    model, x, y, ev = xent
    assert 200 <= len(ev) <= 400
    c = curvature(model, "xent", (x, y), queries=30, lanczos_steps=20, repeats=8, top_k=8, seed=seed)
    assert c.num_params == len(ev) and c.queries == 30
    assert c.trace == pytest.approx(float(ev.sum()), rel=0.05)
    assert c.mean == pytest.approx(float(ev.mean()), rel=0.05)
    assert c.second == pytest.approx(float((ev ** 2).mean()), rel=0.05)
    np.testing.assert_allclose(c.top, ev.flip(0)[:8].numpy(), rtol=1e-6)
    w = np.asarray(c.weights)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-9)
    # the smoothed density is a probability density
    nodes = np.asarray(c.nodes)
    grid = np.linspace(nodes.min() - 1, nodes.max() + 1, 4000)
    assert np.trapezoid(density(nodes, w, grid, sigma=0.02), grid) == pytest.approx(1.0, rel=1e-3)


def test_hutchinson_is_unbiased_and_hutchpp_beats_it(xent):
    from widthkit.dynamics.hessian import HessianOperator, training_mode
    model, x, y, ev = xent
    with training_mode(model):
        op = HessianOperator(model, "xent", (x, y))
        hutch = [trace_estimate(op, 30, "hutchinson", s) for s in range(6)]
        pp = [trace_estimate(op, 30, "hutch++", s) for s in range(6)]
        with pytest.raises(WidthkitError, match="multiple of 3"):
            trace_estimate(op, 31)
    tr = float(ev.sum())
    assert np.mean(np.abs(np.array(pp) - tr)) < np.mean(np.abs(np.array(hutch) - tr))
    assert np.mean(hutch) == pytest.approx(tr, rel=0.25)


@pytest.mark.parametrize("loss", ["xent", "mse"])
def test_gauss_newton_equals_dense_jacobian_product(loss):
    model, x, y = trained(loss, steps=50)
    theta, unflat = flat(model)
    J = torch.autograd.functional.jacobian(lambda t: functional_call(model, unflat(t), (x,)), theta)  # [N, K, P]
    if loss == "xent":
        p = torch.softmax(model(x), -1).detach()
        HL = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    else:
        HL = torch.eye(4, dtype=torch.float64).expand(len(x), 4, 4)
    G = torch.einsum("nkp,nkl,nlq->pq", J, HL, J) / len(x)
    op = GaussNewtonOperator(model, loss, [(x[:40], y[:40]), (x[40:], y[40:])])  # batches: example-weighted
    V = torch.randn(len(theta), 3, dtype=torch.float64)
    np.testing.assert_allclose(torch.stack([op(V[:, i]) for i in range(3)], 1), G @ V, rtol=1e-8, atol=1e-10)
    assert torch.linalg.eigvalsh(G).min() > -1e-10                # positive semi-definite
    if loss == "mse":  # for MSE at a near-fit, the Hessian is the Gauss-Newton matrix plus a small residual term
        H = dense_hessian(model, loss, x, y)
        assert torch.linalg.matrix_norm(H - G) < 0.5 * torch.linalg.matrix_norm(G)
    c = curvature(model, loss, (x, y), operator="gauss-newton", queries=30, lanczos_steps=10, repeats=2, top_k=4)
    assert c.trace == pytest.approx(float(G.trace()), rel=0.05)
    assert min(min(r) for r in c.nodes) > -1e-8


def test_member_retrained_to_a_step_gives_the_stored_outputs_there(tmp_path_factory):
    """``widthkit hessian --step S`` off the snapshots retrains the member to step S: its test outputs equal those
    the ladder stored at S; one step short of the end, its weights are not the final ones."""
    from test_ensemble_bias import tiny_run_path
    from widthkit.analyses.hessian import member_at, retrained_member
    from widthkit.store import open_run
    view = open_run(tiny_run_path(tmp_path_factory)).select(0)
    w, seed = view.widths[1], view.seeds[1]
    x = view.task().x_test
    for step in view.logit_steps(w)[1:-1]:
        model = retrained_member(view, w, seed, int(step))
        with torch.no_grad():
            out = model(x)
        np.testing.assert_allclose(out.numpy(), view.logits(w, int(step))[1], rtol=0, atol=1e-4)
    final = int(view.logit_steps(w)[-1])
    retrained = retrained_member(view, w, seed, final - 1)
    stored = view.load_member(w, seed)
    assert any(not torch.equal(a, b) for a, b in zip(retrained.state_dict().values(), stored.state_dict().values()))
    with pytest.raises(WidthkitError, match="past the run's last step"):
        member_at(view, w, seed, final + 1)
