"""Hessian top eigenpairs (Lanczos) against the dense autograd Hessian; gradient overlap; stability."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from widthkit.dynamics import gradient_overlap, hessian_top_eigs, random_subspace, subspace_stability


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).double()
    x, y = torch.randn(64, 8, dtype=torch.float64), torch.randint(0, 4, (64,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = v[i:i + s.numel()].view(s)
            i += s.numel()
        return nn.functional.cross_entropy(functional_call(model, ps, (x,)), y)

    H = torch.autograd.functional.hessian(loss, flat)
    g = torch.autograd.functional.jacobian(loss, flat)
    return model, x, y, H, g


def test_hessian_top10_matches_dense_eigvalsh():
    model, x, y, H, _ = _setup()
    assert 300 <= H.shape[0] <= 600
    dense = torch.linalg.eigvalsh(H).flip(0)[:10]
    r = hessian_top_eigs(model, "xent", (x, y), 10)
    got = torch.tensor(r.eigenvalues, dtype=torch.float64)
    assert torch.all((got - dense).abs() <= 1e-3 * dense.abs())
    # eigenvectors are eigenvectors of the dense Hessian
    V = r.eigenvectors
    assert torch.allclose(H @ V, V * got, atol=1e-5 * dense[0].item())
    # list of batches = the example-weighted mean loss
    r2 = hessian_top_eigs(model, "xent", [(x[:40], y[:40]), (x[40:], y[40:])], 3)
    assert torch.allclose(torch.tensor(r2.eigenvalues, dtype=torch.float64), dense[:3], rtol=1e-6)


def test_gradient_overlap_against_dense_projection():
    model, x, y, H, g = _setup()
    w, U = torch.linalg.eigh(H)
    P = U[:, -4:]
    want = ((P.T @ g).pow(2).sum() / g.pow(2).sum()).item()
    o = gradient_overlap(model, "xent", (x, y), 4, tol=1e-8)
    assert o.overlap_sq == pytest.approx(want, rel=1e-5)
    assert o.overlap == pytest.approx(want ** 0.5, rel=1e-5)
    assert o.random_expected == pytest.approx(4 / H.shape[0])
    assert o.random_overlap_sq < 20 * o.random_expected
    assert "eigenvectors" not in o.to_dict()


def test_subspace_stability_limits():
    V = random_subspace(200, 5, seed=0)
    assert subspace_stability(V, V) == pytest.approx(1.0)
    # rotating within the span keeps the subspace
    R = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0]
    assert subspace_stability(V, V @ R) == pytest.approx(1.0)
    W = random_subspace(200, 5, seed=1)
    W = torch.linalg.qr(W - V @ (V.T @ W))[0]
    assert subspace_stability(V, W) == pytest.approx(0.0, abs=1e-12)


def test_hessian_in_training_mode_restores_batchnorm_buffers():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    before = {n: b.clone() for n, b in model.named_buffers()}
    hessian_top_eigs(model, "xent", (x, y), 2, max_iter=10)
    assert not model.training
    assert all(torch.equal(b, before[n]) for n, b in model.named_buffers())
