"""Last-layer transfer (Gilboa & Gur-Ari 2019): probes against sklearn, then a tiny real ladder.

Shares the session-scoped tiny ladder (muP MLP on digits 0-4) of tests/test_ensemble_bias.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from widthkit import probes as P
from widthkit.analyses import transfer as T
from widthkit.errors import WidthkitError

from test_ensemble_bias import tiny_run_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from widthkit.store import open_run
    return open_run(tiny_run_path(tmp_path_factory))


def _digits():
    from widthkit.data import load_task
    t = load_task("digits")
    f = lambda x: x.reshape(len(x), -1).numpy()  # noqa: E731
    return f(t.x_train), t.y_train.numpy(), f(t.x_test), t.y_test.numpy()


def test_logistic_probe_matches_sklearn():
    """Same objective as LogisticRegression(C=1/(l2 n)): same test accuracy within 1 point, same weights."""
    from sklearn.linear_model import LogisticRegression
    x, y, xt, yt = _digits()
    xs, xts = P.standardize(x, xt)
    for l2 in (1e-3, 1e-1):
        head = P.fit_logistic(xs, y, 10, l2)
        acc, _ = P.evaluate(head, xts, yt, 10)
        sk = LogisticRegression(C=1 / (l2 * len(y)), max_iter=3000, tol=1e-8).fit(xs, y)
        assert abs(acc - sk.score(xts, yt)) <= 0.01
        assert np.abs(head.W - sk.coef_).max() < 0.05 * np.abs(sk.coef_).max()
    fit = P.fit_probe("logistic", x, y, xt, yt, 10)          # with its own L2 search on a validation split
    sk_best = max(LogisticRegression(C=c, max_iter=3000).fit(xs, y).score(xts, yt) for c in (0.1, 1.0, 10.0))
    assert fit.test_accuracy >= sk_best - 0.02 and fit.test_accuracy > 0.93


def test_batched_logistic_probes_each_reach_their_own_optimum():
    """G probes fitted as one problem ([G, N, F]) give each probe's own fit, and a warm start the same optimum."""
    x, y, _, _ = _digits()
    xs = P.standardize(x)[0]
    groups = np.stack([xs[:, :20], xs[:, 20:40], xs[:, 40:60]])           # [3, N, 20]
    both = P.fit_logistic(groups, y, 10, 1e-2, max_iter=1000, tol=1e-8)
    assert both.W.shape == (3, 10, 20) and both.b.shape == (3, 10)
    for g in range(3):
        one = P.fit_logistic(groups[g], y, 10, 1e-2, max_iter=1000, tol=1e-8)
        assert np.abs(both.W[g] - one.W).max() < 1e-4 * max(1.0, np.abs(one.W).max())
    warm = P.fit_logistic(groups, y, 10, 1e-2, max_iter=1000, tol=1e-8,
                          init=P.fit_logistic(groups, y, 10, 1.0, max_iter=1000))
    assert np.abs(warm.W - both.W).max() < 1e-4 * np.abs(both.W).max()


def test_ridge_and_sgd_probes_and_information_probes():
    x, y, xt, yt = _digits()
    ridge = P.fit_probe("ridge", x, y, xt, yt, 10)
    # closed form agrees with sklearn Ridge on the same standardized features
    from sklearn.linear_model import Ridge
    xs, xts = P.standardize(x, xt)
    sk = Ridge(alpha=ridge.l2).fit(xs, np.eye(10)[y])
    assert ridge.test_accuracy == pytest.approx(float(np.mean(sk.predict(xts).argmax(1) == yt)), abs=1e-9)
    sgd = P.fit_probe("linear-sgd", x, y, xt, yt, 10, grid=[1e-4])
    assert sgd.test_accuracy > 0.9
    # input reconstruction: the inputs themselves give R^2 ~ 1, a random 4-dim projection much less
    assert P.ridge_r2(x, x, xt, xt) > 0.99
    proj = np.random.default_rng(0).standard_normal((64, 4))
    assert P.ridge_r2(x @ proj, x, xt @ proj, xt) < 0.6
    # k-NN on raw digits is a well-known ~97%; on shuffled labels it is at chance
    assert P.knn_accuracy(x, y, xt, yt) > 0.93
    assert P.knn_accuracy(x, np.random.default_rng(0).permutation(y), xt, yt) < 0.25
    with pytest.raises(WidthkitError, match="valid: linear-sgd, logistic, ridge"):
        P.fit_probe("svm", x, y, xt, yt, 10)


def test_ancova_matching_removes_accuracy_confound():
    """k-NN = 0.5 * source acc + width effect: matching recovers the pure width effect."""
    rng = np.random.default_rng(0)
    xs = [0.80 + 0.01 * rng.standard_normal(6) + 0.05 * i for i in range(3)]
    ys = [0.5 * x + 0.02 * i for i, x in enumerate(xs)]
    b, err = T.ancova_slope(xs, ys)
    assert b == pytest.approx(0.5, abs=1e-9) and err < 1e-6


def test_transfer_on_tiny_ladder_and_cache_reuse(tiny_run, monkeypatch):
    """digits 0-4 -> 5-9: target classes the source never saw; second call loads no model."""
    res = T.transfer(tiny_run, target="digits:5-9", probe="ridge", shots=[3], draws=2, n_info=300)
    assert res.widths == [8, 16, 32, 64] and res.target_classes == 5
    for p in res.per_width:
        assert p.feature_dim == p.width                    # penultimate of an MLP = last hidden layer
        assert len(p.target_acc) == 3 and 0.2 < p.target_acc_mean <= 1.0
        assert p.few_shot[3].acc_mean <= p.target_acc_mean + 0.05
        assert p.source_acc == pytest.approx(list(tiny_run.metrics(p.width)["test_acc"][:, -1]))
    assert res.per_width[-1].target_acc_mean > 0.6           # wide random-ish features transfer well
    files = sorted((tiny_run.cache_dir / "transfer").glob("*.h5"))
    assert len(files) == 4
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_model(*a, **k):
        raise AssertionError("features were re-extracted")
    monkeypatch.setattr(type(tiny_run), "load_member", no_model)
    again = T.transfer(tiny_run, target="digits:5-9", probe="ridge", shots=[3], draws=2, n_info=300)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert [p.target_acc for p in again.per_width] == [p.target_acc for p in res.per_width]
    # the default logistic probe on the same cached features: at least as good as ridge on average
    logi = T.transfer(tiny_run, target="digits:5-9", n_info=300, information=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert np.mean([p.target_acc_mean for p in logi.per_width]) > \
        np.mean([p.target_acc_mean for p in res.per_width]) - 0.03


def test_features_match_the_model_and_named_layers(tiny_run):
    model = tiny_run.load_member(8, 0)
    x = tiny_run.task().x_test[:50]
    h = T.extract_features(model, x, "penultimate", batch_size=16)
    with torch.no_grad():
        logits = model(x)
    head = model.get_classifier()
    # the penultimate features reproduce the logits through the classifier
    assert np.allclose(h @ head.weight.detach().numpy().T + head.bias.detach().numpy(), logits.numpy(), atol=1e-5)
    assert T.extract_features(model, x, "fc0").shape == (50, 8)
    with pytest.raises(WidthkitError) as e:
        T.extract_features(model, x, "fc9")
    msg = str(e.value)
    assert "unknown layer 'fc9'" in msg and "penultimate" in msg and "fc0" in msg and "\n" not in msg


def test_user_errors_are_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's data.root is "" = ./data, which has no CIFAR here
    with pytest.raises(WidthkitError, match="unknown layer 'fc7'.*valid: .*fc1"):
        T.transfer(tiny_run, target="digits:5-9", layer="fc7")
    with pytest.raises(WidthkitError, match="cifar-100-python.*cs.toronto.edu"):
        T.transfer(tiny_run, target="cifar100")
    with pytest.raises(WidthkitError, match="input shape|inputs of shape"):
        T.transfer(tiny_run, target="mnist1d")
    from widthkit.cli import main
    assert main(["transfer", str(tiny_run.path), "--target", "digits:5-9", "--layer", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("widthkit transfer: error: unknown layer 'nope'") and "\n" not in err


def test_cli_transfer_and_bench_suite_file(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ./data has no CIFAR here
    from widthkit.cli import main
    out = tmp_path / "tr"
    assert main(["transfer", str(tiny_run.path), "--target", "digits:5-9", "--probe", "ridge", "--layer", "fc0",
                 "--no-information", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layer"] == "fc0" and data["probe"] == "ridge"
    assert (out / "transfer.png").stat().st_size > 1000
    # a suite file: one task reuses the trained ladder (resume), one needs missing data and is reported
    import shutil
    from test_ensemble_bias import TINY_RECIPE
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run.path, runs / "tiny-ladder")
    (tmp_path / "src.toml").write_text(TINY_RECIPE)
    (tmp_path / "suite.toml").write_text(
        '[[task]]\nname = "d"\nsource = "src.toml"\ntarget = "digits:5-9"\n'
        '[[task]]\nname = "c"\nsource = "src.toml"\ntarget = "cifar10"\n')
    rc = main(["transfer-bench", str(tmp_path / "suite.toml"), "--runs", str(runs), "--probe", "ridge", "--json"])
    captured = capsys.readouterr()
    assert rc == 1
    bench = json.loads(captured.out)
    assert list(bench["tasks"]) == ["d"] and "cifar-10-batches-py" in bench["errors"]["c"]
    assert (runs / "results" / "transfer_bench.png").exists()
    assert main(["transfer-bench", "nosuch"]) == 2


def test_match_steps_picks_the_level_every_width_reaches():
    curves = {8: ([0, 10, 20], [0.1, 0.6, 0.7]), 16: ([0, 10, 20], [0.1, 0.65, 0.9]), 32: ([0, 5], [0.2, 0.95])}
    level, steps = T.match_steps(curves)
    assert level == 0.7 and steps == {8: 20, 16: 10, 32: 5}
    assert T.match_steps(curves, level=0.15) == (0.15, {8: 0, 16: 0, 32: 0})  # ties go to the earliest step


def test_transfer_at_matched_source_accuracy_reads_the_matched_snapshots(tiny_run, tmp_path):
    from test_ensemble_bias import TINY_RECIPE
    from widthkit.ladder import train_ladder
    recipe = TINY_RECIPE.replace("widths = [8, 16, 32, 64]", "widths = [8, 32]").replace(
        "eval_every = 20", 'eval_every = 10\nsnapshots = "every:10"')
    run = train_ladder(recipe, tmp_path / "run")
    res = T.transfer(run, target="digits:5-9", probe="ridge", n_info=200)
    m = res.matched
    best = {w: max(np.mean(run.metrics(w)["test_acc"][:, j]) for j in range(7)) for w in (8, 32)}
    assert m.level == pytest.approx(min(best.values())) and m.rule.startswith("the highest")
    for p in m.per_width:
        acc = run.metrics(p.width)["test_acc"][:, list(run.metrics(p.width)["step"]).index(p.step)]
        assert p.source_acc == pytest.approx(list(acc))
        others = [abs(np.mean(run.metrics(p.width)["test_acc"][:, j]) - m.level) for j in range(7)]
        assert abs(p.source_acc_mean - m.level) == pytest.approx(min(others))
    wide = m.per_width[1]
    assert wide.step < 60  # the wide net reaches the narrow net's best accuracy before the end
    at = T.transfer(run, target="digits:5-9", probe="ridge", n_info=200, step=wide.step, matched=False)
    assert at.per_width[1].target_acc == wide.target_acc and at.per_width[1].recon_r2 == wide.recon_r2
    reading = " ".join(T.Transfer().blocks(res, tmp_path)[0].lines)
    assert f"at matched source accuracy {m.level:.1%}" in reading and "per width doubling" in reading
    # a run without snapshots says why there is no matched comparison
    plain = T.transfer(tiny_run, target="digits:5-9", probe="ridge", n_info=300, information=False)
    assert plain.matched is None and "train.snapshots" in plain.matched_note
