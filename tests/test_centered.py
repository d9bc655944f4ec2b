"""Vyas et al.'s conventions: the centered model f - f0, richness gamma0 and the mean-field 1/N readout."""
from __future__ import annotations

import pytest
import torch

from widthkit.build import build_architecture, build_member
from widthkit.centered import Centered
from widthkit.data import load_task
from widthkit.dynamics import ntk_top_eigenvalue
from widthkit.engine import Ensemble
from widthkit.errors import WidthkitError
from widthkit.recipe import from_dict


def recipe(center=False, gamma0=1.0, readout="param", kind="ntk", optim="sgd", width=32):
    return from_dict({"model": {"family": "mlp", "widths": [width], "depth": 3},
                      "param": {"kind": kind, "center": center, "gamma0": gamma0, "readout": readout},
                      "optim": {"name": optim, "lr": 0.5}, "train": {"loss": "mse"}, "data": {"task": "digits"}})


@pytest.fixture(scope="module")
def task():
    return load_task("digits")


def test_centered_output_is_exactly_zero_at_init_and_its_gradients_are_the_nets(task):
    x = task.x_train[:64]
    model, table = build_member(recipe(center=True), 32, 0, task)
    plain, plain_table = build_member(recipe(), 32, 0, task)
    assert isinstance(model, Centered) and torch.equal(model(x), torch.zeros(64, 10))
    # same init as the uncentered member, same lr scales under the net. prefix, nothing trainable in the copy
    assert {n: p for n, p in model.named_parameters()}.keys() == {"net." + n for n, _ in plain.named_parameters()}
    assert table.lr_scales() == {"net." + n: s for n, s in plain_table.lr_scales().items()}
    v = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for step in range(3):  # the gradient of any output functional is the uncentered net's, also after training
        g_c = torch.autograd.grad((model(x) * v).sum(), list(model.net.parameters()))
        g_u = torch.autograd.grad((model.net(x) * v).sum(), list(model.net.parameters()))
        assert all(torch.equal(a, b) for a, b in zip(g_c, g_u))
        opt.zero_grad()
        (model(x) - v).pow(2).mean().backward()
        opt.step()
        assert not any(b.grad is not None for b in model.init.buffers())
    assert model(x).abs().max() > 0 and torch.equal(model(x), model.net(x) - plain(x))  # f0 stayed frozen


def test_centered_members_in_the_stacked_ensemble(task):
    """Zero output for every stacked member at init; one ensemble SGD step equals torch.optim on the member;
    the stored state loads back into the recipe's architecture shell."""
    r = recipe(center=True)
    members, tables = zip(*(build_member(r, 32, s, task) for s in range(3)))
    x, y = task.x_train[:48].view(3, 16, -1), task.y_train[:48].view(3, 16)
    ens = Ensemble([m for m in members], tables[0].lr_scales(), r.optim, "mse")
    assert ens._centered is not None  # the MLP fast path runs the net and its frozen copy
    assert torch.equal(ens.forward(x), torch.zeros(3, 16, 10))
    assert torch.equal(ens._vforward(ens.params, ens.buffers, x), torch.zeros(3, 16, 10))  # the generic vmap path
    ref = build_member(r, 32, 1, task)[0]
    ens.step(x, y, 0.5)
    scales = tables[0].lr_scales()
    out = ref(x[1])
    loss = 0.5 * (out - torch.nn.functional.one_hot(y[1], 10).float()).pow(2).sum(-1).mean()
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    with torch.no_grad():
        for (n, p), g in zip(ref.named_parameters(), grads):
            p.sub_(0.5 * scales[n] * g)
    torch.testing.assert_close(ens.forward(x, train=False)[1], ref(x[1]), rtol=1e-5, atol=1e-6)
    shell = build_architecture(r, 32, task)
    shell.load_state_dict(ens.member_state(1))
    torch.testing.assert_close(shell(x[1]), ref(x[1]), rtol=1e-5, atol=1e-6)


def test_gamma0_divides_the_output_and_keeps_the_function_space_kernel(task):
    """f_gamma0 = f / gamma0 at init, and with lr scaled by gamma0^2 the kernel that moves f is unchanged."""
    x = task.x_train[:32]
    base, t1 = build_member(recipe(), 32, 0, task)
    rich, t4 = build_member(recipe(gamma0=4.0), 32, 0, task)
    torch.testing.assert_close(rich(x), base(x) / 4.0, rtol=1e-5, atol=1e-7)
    lam1 = ntk_top_eigenvalue(base, x, lr_scales=t1.lr_scales()).eigenvalue
    lam4 = ntk_top_eigenvalue(rich, x, lr_scales=t4.lr_scales()).eigenvalue
    assert lam4 == pytest.approx(lam1, rel=1e-4)
    assert t4.rules[0].lr_scale == pytest.approx(16 * t1.rules[0].lr_scale)  # hidden: lr x gamma0^2
    _, ta = build_member(recipe(gamma0=4.0, kind="mup", optim="adam"), 32, 0, task)
    _, ta1 = build_member(recipe(kind="mup", optim="adam"), 32, 0, task)
    assert ta.rules[0].lr_scale == pytest.approx(4 * ta1.rules[0].lr_scale)  # Adam: lr x gamma0


def test_mean_field_readout_is_one_over_n(task):
    x = task.x_train[:32]
    n = 256
    ntk, t_ntk = build_member(recipe(width=n), n, 0, task)
    mf, t_mf = build_member(recipe(readout="mf", width=n), n, 0, task)
    torch.testing.assert_close(mf(x), ntk(x) / n ** 0.5, rtol=1e-5, atol=1e-7)  # 1/sqrt(N) -> 1/N
    w = mf.get_classifier().weight.detach() * n  # N(0, 1) weights, divided by N in the forward pass
    assert abs(float(w.std()) - 1) < 0.1
    head = {n for n, _ in mf.named_parameters() if n.startswith(mf.readout_name + ".")}  # weight and bias
    for a, b in zip(t_ntk.rules, t_mf.rules):  # SGD lr x N everywhere; the readout's folded 1/N^2 as well
        assert b.lr_scale == pytest.approx(a.lr_scale * (1.0 if a.name in head else n))
    with pytest.raises(WidthkitError, match="param.readout = 'mf'"):
        build_member(recipe(readout="mf", kind="mup"), 32, 0, task)


def test_shipped_vyas_recipe_is_centered_mean_field_sgd():
    from pathlib import Path

    from widthkit.build import load_recipe_task
    from widthkit.recipe import load_recipe
    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "ensemble-bias-vyas.toml")
    assert (r.param.kind, r.param.readout, r.param.center, r.optim.name) == ("ntk", "mf", True, "sgd")
    t = load_recipe_task(r)
    x, _ = t.sample(8, torch.Generator().manual_seed(0))
    m, table = build_member(r, 64, 0, t)
    assert torch.equal(m(x), torch.zeros(8, 1))
    assert {ru.name: ru.lr_scale for ru in table.rules}["net.head.weight"] == pytest.approx(1 / 64)  # N * 1/N^2
