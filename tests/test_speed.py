"""Speed machinery that must not change results: background prefetch of online batches."""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

from widthkit.data import load_task
from widthkit.data.prefetch import Prefetch
from widthkit.recipe import load_recipe
from widthkit.trainer import Batches


def test_prefetch_gives_the_same_batches_whatever_the_order_and_depth():
    recipe = load_recipe("quickstart", overrides=["data.task=mnist1d", "data.online=true", "data.batch_size=16"])
    task = load_task("mnist1d", online=True, n_train=40, n_test=20)
    inline = Batches(recipe, task, [0, 1, 2], torch.device("cpu"), prefetch=0)
    ahead = Batches(recipe, task, [0, 1, 2], torch.device("cpu"), prefetch=3)
    for step in [0, 1, 2, 7, 3, 8, 9, 0]:  # in order, jumps ahead and back (a resume)
        x0, y0 = inline(step)
        x1, y1 = ahead(step)
        assert x1.shape == (3, 16, 1, 40) and torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(inline(4)[0], inline(5)[0])  # fresh data every step
    ahead.close()


@pytest.mark.parametrize("spec", ["mnist1d", "teacher?noise=0.1&outputs=2", "teacher:1,3?classes=4"])
def test_chunked_online_batches_are_each_steps_own_samples(spec):
    """Online batches made several steps per batched call (staged samplers) or one by one (a rejection sampler),
    prefetched or inline, in any order: each step's batch is what its own generator draws alone."""
    from widthkit.seeds import derive_seed
    recipe = load_recipe("quickstart", overrides=[f"data.task={spec}", "data.online=true", "data.batch_size=16"])
    task = load_task(spec, online=True, n_train=40, n_test=20)
    ways = [Batches(recipe, task, [0, 1], torch.device("cpu"), prefetch=p) for p in (0, 1, 20)]
    assert ways[0].chunk == 64  # 1024 samples per call
    for step in [0, 1, 70, 63, 64, 2, 200, 0]:
        ref = [task.sample(16, torch.Generator().manual_seed(derive_seed(recipe.seed, s, "online", step)))
               for s in (0, 1)]
        for b in ways:
            x, y = b(step)
            assert x.shape[:2] == (2, 16) and x.is_contiguous()
            for i, (xr, yr) in enumerate(ref):
                assert torch.equal(x[i], xr) and torch.equal(y[i], yr)
    for b in ways:
        b.close()


def test_prefetch_keeps_the_last_result_and_chunks_within_a_memory_cap():
    from widthkit.data.prefetch import chunk_steps
    calls = []
    p = Prefetch(lambda k: calls.append(k) or k, depth=0)
    assert [p(0), p(0), p(1), p(1), p(0)] == [0, 0, 1, 1, 0] and calls == [0, 1, 0]
    assert chunk_steps(128, 160, 1) == 8 and chunk_steps(2048, 160, 1) == 1
    assert chunk_steps(128, 4 * 3 * 32 * 32, 8) == 2  # CIFAR-sized samples, 8 streams: 2 steps, 25 MiB


def test_prefetch_runs_ahead_in_one_single_threaded_worker():
    seen = []

    def fn(step):
        seen.append((step, threading.current_thread().name, torch.get_num_threads()))
        return step * step

    p = Prefetch(fn, depth=2)
    assert [p(s) for s in range(4)] == [0, 1, 4, 9]
    p.close()
    steps = [s for s, _, _ in seen]
    assert {0, 1, 2, 3} <= set(steps) <= set(range(6)) and len(steps) == len(set(steps))  # once each, <= 2 ahead
    assert all(name.startswith("widthkit-prefetch") and n == 1 for _, name, n in seen)
    assert Prefetch(fn, depth=0)(3) == 9 and seen[-1][1] == threading.current_thread().name


def test_ridge_solver_matches_sklearn_in_both_shapes():
    """The Cholesky ridge solver (probes, transfer's R^2) agrees with sklearn's Ridge, n > D and D > n."""
    from sklearn.linear_model import Ridge

    from widthkit.probes import _ridge_solutions
    rng = np.random.default_rng(0)
    for n, d in ((120, 30), (40, 90)):
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 3.0  # correlated, off-centre
        t = x[:, :5] @ rng.standard_normal((5, 4)) + 0.1 * rng.standard_normal((n, 4))
        for alpha, W, b in _ridge_solutions(x, t, (1e-3, 1.0, 100.0)):
            ref = Ridge(alpha=alpha, solver="svd").fit(x, t)
            np.testing.assert_allclose(W, ref.coef_, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(b, ref.intercept_, rtol=1e-6, atol=1e-8)


def test_umap_numba_functions_are_cached_on_disk(tmp_path, monkeypatch):
    """The atlas layout switches on numba's disk cache for umap's functions (they compile once, not per process)."""
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    from atlases.layout import _import_umap
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    umap = _import_umap()
    from umap import layouts, umap_
    for fn in (umap_.smooth_knn_dist, layouts._nb_optimize_layout_euclidean_single_epoch):  # not cache=True in umap
        assert isinstance(fn, Dispatcher) and not isinstance(fn._cache, NullCache)
    assert umap.UMAP is not None


def _members(family: str, width: int, n: int, **model):
    from widthkit.models import create_model
    in_shape = (1, 40) if family == "conv1d" else (1, 8, 8)
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(create_model(family, width=width, in_shape=in_shape, num_classes=10, **model))
    return out, in_shape


@pytest.mark.parametrize("family,model", [("conv1d", {}), ("conv1d", {"pool": "avg", "kernel_size": 3}),
                                          ("cnn", {"depth": 5}), ("cnn", {"pool": "max"})])
def test_conv_plan_equals_the_vmap_path_in_both_layouts(family, model):
    """Grouped convolutions (members as groups), NCHW or NHWC (1-D maps as height-1 2-D ones), give vmap's
    outputs and training steps."""
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec
    members, in_shape = _members(family, 8, 3, **model)
    opt = OptimSpec(name="adam", lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 16, *in_shape, generator=g), torch.randint(10, (3, 16), generator=g)
    ref = Ensemble(copy.deepcopy(members), {}, opt, "xent")
    ref._plan = None  # vmap(functional_call) over the plain modules
    ways = [Ensemble(copy.deepcopy(members), {}, opt, "xent", channels_last=cl) for cl in (False, True)]
    assert all(w._plan is not None and w._plan[0][0] == "members_as_channels" for w in ways)
    assert ways[0].conv_layouts == [False, True]
    for _ in range(3):
        lr, _ = ref.step(x, y, 1e-2)
        for w in ways:
            torch.testing.assert_close(w.step(x, y, 1e-2)[0], lr, rtol=1e-5, atol=1e-6)
    for w in ways:
        for k in ref.params:
            torch.testing.assert_close(w.params[k], ref.params[k], rtol=1e-4, atol=1e-5)


def test_nhwc_conv_plan_hands_on_nhwc_gradients_past_the_global_pool():
    """The global pool's backward returns an NCHW gradient; the plan converts it so ReLU's backward sees one layout."""
    from torch import nn

    from widthkit.engine import _ChannelsLastGrad
    h = torch.randn(2, 6, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    seen = []
    act = torch.relu(h)
    act.register_hook(lambda g: seen.append(g))
    out = nn.AdaptiveAvgPool2d(1)(_ChannelsLastGrad.apply(act))
    (grad,) = torch.autograd.grad(out.sum(), [h])
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad, (h > 0).float() / 9)


def test_conv_plan_only_for_what_it_can_run():
    from torch import nn

    from widthkit.engine import _sequential_plan
    ok = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert [k for k, _ in _sequential_plan(ok)] == ["members_as_channels", "conv", "apply", "apply", "unpack_members",
                                                    "linear"]
    for bad in (nn.Sequential(nn.Conv2d(1, 4, 3), nn.Linear(4, 2)),                       # no Flatten before Linear
                nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.Flatten()),
                nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 1, 1)),
                nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten()),
                nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())):                               # never flattened
        assert _sequential_plan(bad) is None


def test_probe_times_both_conv_layouts_and_the_trainer_uses_its_choice(tmp_path):
    from widthkit.build import build_member, load_recipe_task
    from widthkit.trainer import probe_strategy, train_members
    recipe = load_recipe("quickstart", overrides=["model.family=cnn", "model.depth=5", "train.seeds=2",
                                                  "train.steps=4", "train.eval_every=4"])
    task = load_recipe_task(recipe)
    batches = Batches(recipe, task, [0, 1], torch.device("cpu"))
    table = build_member(recipe, 8, 0, task)[1]
    record = probe_strategy(lambda idx: [build_member(recipe, 8, i, task)[0] for i in idx],
                            lambda idx: {"lr_scales": table.lr_scales(), "optim": recipe.optim},
                            recipe, batches, torch.device("cpu"), steps=1)
    keys = record["probe_seconds_per_member_step"]
    assert isinstance(record["channels_last"], bool) and any(k.endswith("-cl") for k in keys)
    assert len(keys) == 2 * len([k for k in keys if not k.endswith("-cl")])  # every size x threads, both layouts
    res, rec, _ = train_members(recipe, 8, [0, 1], task, build_member=build_member)
    assert "channels_last" in rec and np.isfinite(res.test_loss[-1]).all()


def test_conv_plan_keeps_less_activation_memory_than_vmap():
    """vmap's conv rule saves a batched copy per layer; the grouped plan saves each member's activations once."""
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec
    from widthkit.trainer import activation_bytes
    members, in_shape = _members("cnn", 8, 4, depth=5)
    x, y = torch.randn(4, 16, *in_shape), torch.randint(10, (4, 16))
    plan = Ensemble(members, {}, OptimSpec(), "xent")
    vm = Ensemble(members, {}, OptimSpec(), "xent")
    vm._plan = None
    single = Ensemble(members[:1], {}, OptimSpec(), "xent")
    assert activation_bytes(plan, x, y) < activation_bytes(vm, x, y)
    assert activation_bytes(plan, x, y) <= 4 * activation_bytes(single, x[:1], y[:1])


def test_compile_decision_counts_the_compile_time_against_the_job():
    from widthkit import compiled
    cpu = torch.device("cpu")
    assert compiled.pays(eager_s=0.010, compiled_s=0.004, compile_s=20, steps=10_000)     # 20 s repaid by 60 s
    assert not compiled.pays(eager_s=0.010, compiled_s=0.004, compile_s=20, steps=1_000)  # 6 s saved < 20 s
    assert not compiled.pays(eager_s=0.010, compiled_s=0.011, compile_s=0, steps=10**9)   # never slower than eager
    assert not compiled.worth_trying(0.001, 1500, cpu)   # the quick start: 1.5 s of steps, not worth a compile
    assert not compiled.worth_trying(0.020, 5000, cpu)   # 100 s of steps could save 43 s < a 45 s compile
    assert compiled.worth_trying(0.050, 5000, cpu)       # 250 s of steps: try
    assert compiled.worth_trying(0.002, 50_000, torch.device("cuda"))  # CUDA graphs save more
    assert compiled.split_strategy("chunk:2+compile") == ("chunk:2", "compile")
    assert compiled.split_strategy("auto") == ("auto", "auto")
    from widthkit.errors import WidthkitError
    assert load_recipe("quickstart", overrides=["train.strategy=chunk:2+compile"]).train.strategy == "chunk:2+compile"
    with pytest.raises(WidthkitError, match=r"optionally with \+compile or \+eager"):
        load_recipe("quickstart", overrides=["train.strategy=auto+fast"])
    built = []
    x, y = torch.randn(2, 5, 6), torch.randint(3, (2, 5))
    for mode, eager_s in (("auto", 0.001), ("eager", 1.0)):  # not worth it / forbidden: nothing is even built
        assert compiled.decide(lambda: built.append(1), x, y, 0.1, eager_s, 1500, mode, 1, cpu) == {} and not built
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec
    bn, _ = _members("cnn", 4, 2, depth=5, batchnorm=True)
    rec = compiled.decide(lambda: Ensemble(bn, {}, OptimSpec(), "xent"), x, y, 0.1, 1.0, 10**6, "compile", 1, cpu)
    assert rec["compile"] is False and "BatchNorm" in rec["compile_note"]


def _tiny_mlp_ensemble():
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec
    members = []
    for s in range(2):
        torch.manual_seed(s)
        members.append(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.ReLU(),
                                           torch.nn.Linear(8, 3)))
    return Ensemble(members, {}, OptimSpec(lr=0.1), "xent")


def test_failed_compile_falls_back_to_eager_and_says_so_once(monkeypatch, caplog):
    from widthkit import compiled

    def broken(*a, **k):
        raise RuntimeError("no C++ compiler\nmore details")
    monkeypatch.setattr(torch, "compile", broken)
    ens, ref = _tiny_mlp_ensemble(), _tiny_mlp_ensemble()
    x, y = torch.randn(2, 5, 6), torch.randint(3, (2, 5))
    with caplog.at_level("INFO", logger="widthkit"):
        rec = compiled.probe_compile(ens, x, y, 0.1, eager_s=0.01, steps=10**6, forced=True)
    assert rec["compile"] is False and "torch.compile failed (RuntimeError: no C++ compiler)" in rec["compile_note"]
    assert caplog.text.count("torch.compile failed") == 1
    assert ens._step == ens._train_step  # eager again: the same step as an untouched ensemble
    torch.testing.assert_close(ens.step(x, y, 0.1)[0], ref.step(x, y, 0.1)[0])


def test_losing_compile_is_dropped_and_forbidding_skips_it(monkeypatch, caplog):
    from widthkit import compiled
    from widthkit.build import build_member, load_recipe_task
    from widthkit.errors import WidthkitError
    from widthkit.trainer import train_members
    monkeypatch.setattr(torch, "compile", lambda fn, **k: fn)  # "compiles" instantly to the same speed
    ens = _tiny_mlp_ensemble()
    x, y = torch.randn(2, 5, 6), torch.randint(3, (2, 5))
    with caplog.at_level("INFO", logger="widthkit"):
        rec = compiled.probe_compile(ens, x, y, 0.1, eager_s=1e-9, steps=100)  # slower than a 1 ns eager step
    assert rec["compile"] is False and "would not pay" in rec["compile_note"] and ens._step == ens._train_step
    assert caplog.text.count("would not pay") == 1
    recipe = load_recipe("quickstart", overrides=["train.seeds=2", "train.steps=3", "train.eval_every=3"])
    task = load_recipe_task(recipe)
    _, record, _ = train_members(recipe, 8, [0, 1], task, build_member=build_member, strategy="vectorized+eager")
    assert record["strategy"] == "vectorized" and "compile" not in record
    _, record, _ = train_members(recipe, 8, [0, 1], task, build_member=build_member, strategy="vectorized+compile")
    assert record["compile"] is True and record["compile_seconds"] >= 0  # forced, and it worked
    with pytest.raises(WidthkitError, match=r"\+fast"):
        train_members(recipe, 8, [0, 1], task, build_member=build_member, strategy="auto+fast")


@pytest.mark.parametrize("family", ["mlp", "conv1d"])
def test_compiled_step_traces_the_plan_and_matches_eager(family):
    """Dynamo traces the whole batched forward+loss (eager backend: the tracing, not inductor's slow C++ build);
    training through it gives the eager ensemble's losses and weights."""
    from widthkit import compiled
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec
    torch._dynamo.reset()
    if family == "mlp":
        ens, ref = _tiny_mlp_ensemble(), _tiny_mlp_ensemble()
        x, y = torch.randn(2, 5, 6), torch.randint(3, (2, 5))
    else:
        members, in_shape = _members("conv1d", 4, 2)
        ens, ref = (Ensemble(copy.deepcopy(members), {}, OptimSpec(name="adam", lr=1e-2), "xent") for _ in range(2))
        x, y = torch.randn(2, 8, *in_shape), torch.randint(10, (2, 8))
    compiled.enable(ens, backend="eager")
    for i in range(3):
        torch.testing.assert_close(ens.step(x, y, 0.05 * (i + 1))[0], ref.step(x, y, 0.05 * (i + 1))[0])
    for k in ref.params:
        torch.testing.assert_close(ens.params[k], ref.params[k])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # really went through dynamo


def test_whole_step_compiles_to_one_graph_for_every_step():
    """Forward, loss, divergence bookkeeping, backward and a per-member Adam update trace as one graph (no graph
    break) that serves every step whatever its learning rate; through AOTAutograd (the path inductor compiles) it
    gives the eager losses, weights, optimizer state and divergence record, a NaN member included."""
    from widthkit import compiled
    from widthkit.engine import Ensemble
    from widthkit.recipe import OptimSpec
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    members, in_shape = _members("mlp", 8, 3)
    optims = [OptimSpec(name="adamw", lr=lr, weight_decay=wd) for lr, wd in ((1e-2, 0.0), (3e-2, 0.1), (1e-2, 0.1))]
    ens, ref = (Ensemble(copy.deepcopy(members), {"head.weight": 0.5}, optims, "xent") for _ in range(2))
    for e in (ens, ref):
        with torch.no_grad():
            e.params["head.bias"][2, 0] = float("nan")  # member 2 diverges at its first step
    x, y = torch.randn(3, 8, *in_shape), torch.randint(10, (3, 8))
    compiled.enable(ens, backend="aot_eager")
    for i in range(4):
        lr = ens.member_lrs(i, 4) * (4 - i)  # [E], a new value every step
        torch.testing.assert_close(ens.step(x, y, lr)[0], ref.step(x, y, lr)[0], equal_nan=True)
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for k in ref.params:
        torch.testing.assert_close(ens.params[k], ref.params[k], equal_nan=True)
    for k in ref.state:
        for a, b in zip(ens.state[k], ref.state[k]):
            torch.testing.assert_close(a, b, equal_nan=True)
    assert ens.alive.tolist() == ref.alive.tolist() == [True, True, False]
    assert ens.diverged_step.tolist() == ref.diverged_step.tolist() == [-1, -1, 0]
