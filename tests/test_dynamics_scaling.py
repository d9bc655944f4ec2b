"""Width scaling of kernel motion (Dyer & Gur-Ari 2019) and the linearized model."""
from pathlib import Path

import torch
from torch import nn

from widthkit.analyses import Subject, get_analysis
from widthkit.dynamics import GD, Linearized, track_kernel
from widthkit.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_linearization_is_exact_for_a_model_linear_in_its_parameters():
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    x, y = torch.randn(12, 5, dtype=torch.float64), torch.randint(0, 3, (12,))
    xp = torch.randn(4, 5, dtype=torch.float64)
    scales = {"weight": 0.5, "bias": 2.0}
    lin = Linearized(model, x, y, "xent", scales)
    gd = GD(model, "xent", scales)
    for _ in range(25):
        assert abs(gd.step(x, y, 0.3) - lin.step(0.3)) < 1e-12
    with torch.no_grad():
        assert torch.allclose(lin.predict(xp), model(xp), atol=1e-12)
    tr = track_kernel(nn.Linear(5, 3).double(), x, y, lr=0.3, steps=10, every=5, loss="xent")
    assert max(tr.lin_gap) < 1e-12 and max(tr.kernel_change) < 1e-12  # a linear model's kernel is constant


def test_ntk_change_exponent_is_minus_one_in_ntk_parameterization():
    """Shipped recipe (tanh, one hidden layer, widths 64..1024): exponent in [-1.2, -0.8]."""
    a, r = get_analysis("ntk-scaling"), load_recipe(RECIPES / "ntk-scaling.toml")
    res = a.compute(Subject(r), a.options(r, params=["ntk"], every=30))  # kernel at t=0 and t=30 only
    kc = next(f for f in res.fits if f.quantity == "kernel_change")
    gap = next(f for f in res.fits if f.quantity == "lin_gap")
    assert -1.2 <= kc.slope <= -0.8, kc
    assert -1.3 <= gap.slope <= -0.7, gap
    assert kc.values[0] > kc.values[-1] > 0
