"""Trainer data streams: per-member batches, and shared batches (members differ only in init)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from widthkit.data import load_task
from widthkit.recipe import from_dict
from widthkit.trainer import Batches


def recipe(task: str, online: bool, shared: bool):
    return from_dict({"model": {"family": "mlp", "widths": [8]},
                      "data": {"task": task, "batch_size": 16, "online": online, "shared_batches": shared}})


@pytest.mark.parametrize("task,online", [("digits", False), ("teacher?dim=8&n_test=64", True)])
def test_shared_batches_are_the_same_for_every_member_and_seed(task, online):
    t = load_task(task, online=online)
    shared = Batches(recipe(task, online, True), t, [0, 1, 2], torch.device("cpu"))
    other = Batches(recipe(task, online, True), t, [7], torch.device("cpu"))
    own = Batches(recipe(task, online, False), t, [0, 1, 2], torch.device("cpu"))
    for step in (0, 5, 200):  # 200 crosses an epoch boundary of the finite task
        x, y = shared(step)
        assert x.shape[0] == 3 and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2]) and torch.equal(y[0], y[2])
        xo, yo = other(step)
        assert torch.equal(xo[0], x[0]) and torch.equal(yo[0], y[0])  # independent of the member seeds
        xs, _ = own(step)
        assert not torch.equal(xs[0], xs[1])  # by default each member has its own stream
    assert not torch.equal(shared(0)[0], shared(1)[0])  # and the shared stream still moves on


def test_memory_budget_caps_the_group_size():
    """Activation memory is counted from autograd's saved tensors: linear in the member count once
    vmap's batched layout is in play, and ``train.memory_budget_mb`` caps the auto strategy's group
    at budget // (MB per member)."""
    from widthkit.build import build_member
    from widthkit.engine import Ensemble
    from widthkit.trainer import activation_bytes, train_members
    r = from_dict({"model": {"family": "cnn", "widths": [8], "depth": 5}, "data": {"task": "digits"},
                   "train": {"steps": 2, "seeds": 4, "eval_every": 2}})
    task = load_task("digits")
    members = [build_member(r, 8, s, task)[0] for s in range(8)]
    x, y = task.x_train[:8 * 16].view(8, 16, -1), task.y_train[:8 * 16].view(8, 16)
    def vmapped(ens):  # the vmap path (conv nets with BatchNorm or dropout); plain convs take the grouped plan
        ens._plan = None
        return ens
    nbytes = {k: activation_bytes(vmapped(Ensemble(members[:k], {}, r.optim, "xent")), x[:k], y[:k])
              for k in (1, 4, 8)}
    assert nbytes[1] > 16 * 8 * 8 * 8 * 4  # at least one conv layer's output is kept
    assert nbytes[4] >= 4 * nbytes[1]  # vmap's conv rule keeps a batched copy: never cheaper than alone
    assert abs(nbytes[8] / (2 * nbytes[4]) - 1) < 0.05
    r.data.batch_size = 64
    budget_mb = 2.5 * activation_bytes(Ensemble(members[:1], {}, r.optim, "xent"),
                                       task.x_train[:64][None], task.y_train[:64][None]) / 2**20
    r.train.memory_budget_mb = budget_mb
    res, record, _ = train_members(r, 8, [0, 1, 2, 3], task, build_member=build_member)
    assert record["group_size"] <= 2 and record["memory_budget_mb"] == budget_mb
    assert len(res.seeds) == 4 and np.isfinite(np.stack(res.test_loss)).all()
