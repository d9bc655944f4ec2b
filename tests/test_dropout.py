"""Dropout: each member's masks come from its own random stream, so members do not depend on their grouping."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from widthkit.build import build_member, load_recipe_task
from widthkit.engine import Ensemble
from widthkit.errors import WidthkitError
from widthkit.models import list_models, register_model
from widthkit.recipe import from_dict
from widthkit.trainer import train_members


class DropoutMLP(nn.Module):
    """Two hidden layers sharing one nn.Dropout (called twice per forward), and a readout."""

    def __init__(self, d: int, width: int, k: int, p: float, noise: bool):
        super().__init__()
        self.fc0, self.fc1, self.head = nn.Linear(d, width), nn.Linear(width, width), nn.Linear(width, k)
        self.drop = nn.Dropout(p)
        self.noise = noise

    def get_classifier(self) -> nn.Linear:
        return self.head

    def forward(self, x):
        h = self.drop(torch.relu(self.fc0(x.flatten(1))))
        if self.noise and self.training:  # randomness outside nn.Dropout
            h = h + 0.01 * torch.randn_like(h)
        return self.head(self.drop(torch.relu(self.fc1(h))))


if "test_dropout_mlp" not in list_models():
    @register_model("test_dropout_mlp")
    def _dropout_mlp(*, width: int, in_shape: tuple, num_classes: int, p: float = 0.5, noise: bool = False):
        return DropoutMLP(math.prod(in_shape), width, num_classes, p, noise)


def recipe(p: float = 0.5, noise: bool = False):
    return from_dict({"model": {"family": "test_dropout_mlp", "widths": [16], "p": p, "noise": noise},
                      "param": {"kind": "mup"}, "data": {"task": "digits", "batch_size": 32},
                      "train": {"steps": 20, "seeds": 4, "eval_every": 10}, "optim": {"lr": 0.1, "momentum": 0.9}})


def train(r, strategy: str):
    return train_members(r, 16, [0, 1, 2, 3], load_recipe_task(r), build_member=build_member, strategy=strategy)[0]


def test_members_do_not_depend_on_the_grouping():
    r = recipe()
    runs = {s: train(r, s) for s in ("vectorized", "loop", "chunk:2")}
    ref = runs["vectorized"]
    for s in ("loop", "chunk:2"):
        for k, v in ref.state.items():
            np.testing.assert_allclose(runs[s].state[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{s}: {k}")
        np.testing.assert_allclose(np.stack(runs[s].test_loss), np.stack(ref.test_loss), rtol=1e-5, atol=1e-6)
    alone = train_members(r, 16, [2], load_recipe_task(r), build_member=build_member)[0]  # member 2 on its own
    for k, v in ref.state.items():
        np.testing.assert_allclose(alone.state[k][0], v[2], rtol=1e-5, atol=1e-6)
    no_dropout = train(recipe(p=0.0), "vectorized")
    assert not np.allclose(no_dropout.state["fc0.weight"], ref.state["fc0.weight"])  # the masks did act


def test_masks_are_per_member_and_per_step_and_extracted_members_are_plain():
    r = recipe()
    task = load_recipe_task(r)
    ens = Ensemble([build_member(r, 16, s, task)[0] for s in (0, 0)], {}, r.optim, "xent", noise_seeds=[5, 6])
    x = task.x_train[:8].unsqueeze(0).expand(2, *task.x_train[:8].shape)
    out = ens.forward(x)
    assert not torch.allclose(out[0], out[1])  # same weights and inputs, different masks
    ens.t = 1
    assert not torch.allclose(ens.forward(x)[0], out[0])  # fresh masks every step
    ens.t = 0
    torch.testing.assert_close(ens.forward(x), out)  # a pure function of (noise seed, step)
    same = Ensemble([build_member(r, 16, 0, task)[0]], {}, r.optim, "xent", noise_seeds=[6])
    torch.testing.assert_close(same.forward(x[:1])[0], out[1])
    member = ens.member(0)
    assert type(member.drop) is nn.Dropout and not member.training
    torch.testing.assert_close(member(task.x_test[:8]), ens.member_forward(0, task.x_test[:8]))


def test_other_randomness_is_one_line():
    r = recipe(noise=True)
    with pytest.raises(WidthkitError, match="random numbers outside nn.Dropout") as e:
        train(r, "vectorized")
    assert "\n" not in str(e.value)
