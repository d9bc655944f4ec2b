"""Empirical NTK: agreement with explicit Jacobians, Lanczos eigenvalues, folded vs explicit multipliers."""
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from widthkit.dynamics import ntk, ntk_top_eigenvalue
from widthkit.errors import WidthkitError


def _explicit_jacobian(model, x):
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for p in model.parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def f(*ps):
        return functional_call(model, ({**dict(zip(names, ps)), **buffers}), (x,))

    out = f(*params)
    N, K = out.shape
    J = torch.autograd.functional.jacobian(f, params)
    return names, [j.reshape(N * K, -1) for j in J], N, K


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    cnn = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 3)).double()
    with torch.no_grad():  # non-trivial running statistics, used in eval mode
        cnn[1].running_mean.uniform_(-0.5, 0.5)
        cnn[1].running_var.uniform_(0.5, 2.0)
    return [(mlp, torch.randn(7, 5, dtype=torch.float64)), (cnn.eval(), torch.randn(6, 2, 5, 5, dtype=torch.float64))]


@pytest.mark.parametrize("which", [0, 1], ids=["mlp", "cnn-batchnorm-eval"])
def test_ntk_equals_explicit_jacobian_gram(which):
    model, x = _models()[which]
    names, Js, N, K = _explicit_jacobian(model, x)
    J = torch.cat(Js, 1)
    G = J @ J.T
    assert torch.allclose(ntk(model, x, mode="flat"), G, atol=1e-10)
    assert torch.allclose(ntk(model, x, mode="full").permute(0, 2, 1, 3).reshape(N * K, N * K), G, atol=1e-10)
    trace = G.view(N, K, N, K).diagonal(dim1=1, dim2=3).sum(-1)
    assert torch.allclose(ntk(model, x, mode="trace"), trace, atol=1e-10)
    # lr scales weight each parameter's contribution
    scales = {n: 0.25 + i for i, n in enumerate(names)}
    Js_ = torch.cat([j * math.sqrt(scales[n]) for j, n in zip(Js, names)], 1)
    assert torch.allclose(ntk(model, x, mode="flat", lr_scales=scales), Js_ @ Js_.T, atol=1e-10)


@pytest.mark.parametrize("which", [0, 1], ids=["mlp", "cnn-batchnorm-eval"])
def test_top_eigenvalue_matches_dense(which):
    model, x = _models()[which]
    G = ntk(model, x, mode="flat")
    N = x.shape[0]
    lam = torch.linalg.eigvalsh(G)[-1].item()
    r = ntk_top_eigenvalue(model, x, normalize=False)
    assert abs(r.eigenvalue - lam) <= 1e-4 * lam
    lt = torch.linalg.eigvalsh(ntk(model, x, mode="trace"))[-1].item()
    assert abs(ntk_top_eigenvalue(model, x, mode="trace", normalize=False).eigenvalue - lt) <= 1e-4 * lt
    # stability convention: mean-over-examples MSE divides by m
    r = ntk_top_eigenvalue(model, x)
    assert abs(r.eigenvalue - lam / N) <= 1e-4 * lam / N and abs(r.critical_lr - 2 * N / lam) < 1e-3 * N / lam
    # cross-entropy: eigenvalues of H Theta / m, H the softmax covariance per example
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    H = torch.block_diag(*[torch.diag(q) - torch.outer(q, q) for q in p])
    lx = torch.linalg.eigvals(H @ G).real.max().item() / N
    assert abs(ntk_top_eigenvalue(model, x, loss="xent").eigenvalue - lx) <= 1e-4 * lx


def test_ntk_eigenvalue_is_gd_stability_threshold():
    """The MSE convention is the real one: GD on the linear model diverges just above 2/lambda only."""
    torch.manual_seed(1)
    model = nn.Linear(6, 2, bias=False).double()
    x, y = torch.randn(10, 6, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    lam = ntk_top_eigenvalue(model, x).eigenvalue
    from widthkit.dynamics import GD
    for factor, grows in ((0.98, False), (1.02, True)):
        m = nn.Linear(6, 2, bias=False).double()
        m.load_state_dict(model.state_dict())
        gd = GD(m, "mse")
        losses = [gd.step(x, y, factor * 2 / lam) for _ in range(400)]
        assert (losses[-1] > losses[0]) == grows


class _ExplicitNTK(nn.Module):
    """Two-layer tanh net with explicit NTK multipliers sigma/sqrt(fan_in) and N(0, 1) weights."""

    def __init__(self, w1, b1, w2):
        super().__init__()
        self.w1, self.b1, self.w2 = nn.Parameter(w1.clone()), nn.Parameter(b1.clone()), nn.Parameter(w2.clone())

    def forward(self, x):
        h = torch.tanh(x @ self.w1.T * (1.5 / math.sqrt(self.w1.shape[1])) + self.b1)
        return h @ self.w2.T / math.sqrt(self.w2.shape[1])


def test_folded_parameterization_gives_the_explicit_kernel():
    torch.manual_seed(2)
    d, n, k = 4, 32, 3
    w1, b1, w2 = torch.randn(n, d).double(), torch.randn(n).double(), torch.randn(k, n).double()
    explicit = _ExplicitNTK(w1, b1, w2)
    folded = nn.Sequential(nn.Linear(d, n), nn.Tanh(), nn.Linear(n, k, bias=False)).double()
    m1, m2 = 1.5 / math.sqrt(d), 1 / math.sqrt(n)
    with torch.no_grad():
        folded[0].weight.copy_(w1 * m1)
        folded[0].bias.copy_(b1)
        folded[2].weight.copy_(w2 * m2)
    x = torch.randn(9, d, dtype=torch.float64)
    assert torch.allclose(explicit(x), folded(x), atol=1e-12)
    scales = {"0.weight": m1 ** 2, "0.bias": 1.0, "2.weight": m2 ** 2}
    assert torch.allclose(ntk(explicit, x, mode="flat"), ntk(folded, x, mode="flat", lr_scales=scales), atol=1e-10)
    # without the scales the folded kernel is a different (wrong) one
    assert not torch.allclose(ntk(explicit, x, mode="flat"), ntk(folded, x, mode="flat"), atol=1e-3)


def test_batchnorm_training_mode_uses_batch_jacobian_and_keeps_buffers():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)).double().train()
    x = torch.randn(6, 4, dtype=torch.float64)
    before = model[1].running_mean.clone()
    _, Js, _, _ = _explicit_jacobian(model, x)
    J = torch.cat(Js, 1)
    assert torch.allclose(ntk(model, x, mode="flat"), J @ J.T, atol=1e-10)
    assert torch.equal(model[1].running_mean, before)


def test_unknown_lr_scale_name_is_one_line_error():
    model = nn.Linear(3, 2)
    with pytest.raises(WidthkitError, match="unknown parameter 'wieght'.*did you mean 'weight'"):
        ntk(model, torch.randn(2, 3), lr_scales={"wieght": 1.0})
    with pytest.raises(WidthkitError, match="unknown ntk mode"):
        ntk(model, torch.randn(2, 3), mode="diag")
