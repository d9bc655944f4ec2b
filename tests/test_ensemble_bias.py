"""Ensemble bias (Vyas et al. 2023): synthetic outputs with known answers, then a tiny real ladder.

The session-scoped tiny ladder is built once per test session by :func:`tiny_run_path` and shared with
tests/test_transfer.py.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from widthkit.analyses import consistency
from widthkit.analyses import ensemble_bias as eb

_TINY: dict = {}
TINY_RECIPE = """
name = "tiny-ladder"
[model]
family = "mlp"
widths = [8, 16, 32, 64]
depth = 2
[param]
kind = "mup"
[data]
task = "digits:0-4"
batch_size = 32
[train]
loss = "xent"
steps = 60
seeds = 3
eval_every = 20
[optim]
lr = 0.5
"""


def tiny_run_path(tmp_path_factory):
    """Train (once per session) a 4-width, 3-seed muP MLP ladder on digits 0-4; returns its directory."""
    if "path" not in _TINY:
        from widthkit.ladder import train_ladder
        d = tmp_path_factory.mktemp("tiny_ladder")
        (d / "tiny.toml").write_text(TINY_RECIPE)
        train_ladder(str(d / "tiny.toml"), d / "run")
        _TINY["path"] = d / "run"
    return _TINY["path"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    from widthkit.store import open_run
    return open_run(tiny_run_path(tmp_path_factory))


class FakeRun:
    """Just the Run methods ensemble_bias reads, over synthetic outputs (for known-answer tests)."""

    def __init__(self, outputs: dict, targets, loss="mse", diverged=None, unfinished=(), steps=(0, 10)):
        self._out, self._t, self.loss_name = outputs, targets, loss
        self.widths = sorted(outputs)
        self.unfinished = list(unfinished)
        self.seeds = list(range(next(iter(outputs.values())).shape[0]))
        self._div = diverged or {}
        self._steps = list(steps)
        self.path = "fake"

    def logit_steps(self, w):
        return np.array(self._steps)

    def logits(self, w, step=None):
        # outputs move from the common mean toward their final values over "training"
        frac = 1.0 if step is None else self._steps.index(step) / (len(self._steps) - 1)
        o = self._out[w]
        return o.mean(0, keepdims=True) + frac * (o - o.mean(0, keepdims=True))

    def diverged(self, w):
        d = np.zeros(len(self.seeds), bool)
        d[self._div.get(w, [])] = True
        return d

    def targets(self):
        return self._t


def _members(rng, mu, E, width, scale=2.0):
    return mu[None] + rng.standard_normal((E,) + mu.shape) * scale / math.sqrt(width)


def test_variance_exponent_is_minus_one_for_one_over_sqrt_n_noise():
    """f = mu + noise/sqrt(N): the fitted variance exponent is -1 within 0.1 (xent, centred logits)."""
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((300, 5))
    y = rng.integers(0, 5, 300)
    widths = [16, 64, 256, 1024]
    run = FakeRun({w: _members(rng, mu, 6, w) for w in widths}, y, loss="xent")
    res = eb.ensemble_bias(run, subsets=16, over_training=False)
    assert abs(res.variance_fit.slope + 1.0) < 0.1
    assert res.variance_fit.slope_err < 0.1
    # the variance of class-centred logits is (C-1)/C * scale^2 / N
    assert res.per_width[0].variance == pytest.approx(0.8 * 4 / 16, rel=0.1)


def test_infinite_ensemble_recovers_mean_predictor_loss_mse():
    """For MSE, L(K) is linear in 1/K and its intercept is the mean predictor's loss."""
    rng = np.random.default_rng(1)
    n, C, E = 400, 3, 8
    mu = rng.standard_normal((n, C))
    y = mu + 0.5 * rng.standard_normal((n, C))
    true = 0.5 * np.mean(np.sum((mu - y) ** 2, 1))          # loss of the infinite ensemble
    out = _members(rng, mu, E, 16)                            # variance 0.25 per coordinate
    inf = eb.infinite_ensemble(out, y, "mse", n_subsets=32)
    assert abs(inf.l_inf - true) < 3 * inf.l_inf_err + 1e-3
    assert inf.l_inf_err < 0.02
    # slope of the 1/K line is 0.5 * C * variance
    assert inf.c == pytest.approx(0.5 * C * 0.25, rel=0.15)
    single = np.mean([eb.loss_and_error(o, y, "mse")[0] for o in out])
    assert inf.curve.loss[0] == pytest.approx(single)       # K=1 averages every member
    assert single > inf.l_inf + 0.2


def test_infinite_ensemble_xent_approaches_mean_logit_loss():
    """Cross-entropy with small logit noise: L_inf is the loss of the mean logits (to O(noise^4))."""
    rng = np.random.default_rng(2)
    mu = 2 * rng.standard_normal((500, 4))
    y = np.array([rng.choice(4, p=np.exp(m) / np.exp(m).sum()) for m in mu])
    true = eb.loss_and_error(mu, y, "xent")[0]
    out = _members(rng, mu, 8, 64, scale=4.0)                 # logit std 0.5
    inf = eb.infinite_ensemble(out, y, "xent", n_subsets=32)
    assert inf.curve.loss[0] > true + 0.05                    # single members are clearly worse
    assert abs(inf.l_inf - true) < max(3 * inf.l_inf_err, 0.01)


def test_bias_of_narrower_width_and_its_power_law():
    """Mean predictors offset by 0.8 N^-0.5 from the wide one: bias found, alpha recovered."""
    rng = np.random.default_rng(3)
    n, C = 600, 2
    mu = rng.standard_normal((n, C))
    y = mu.copy()
    d = rng.standard_normal((n, C))
    d /= np.sqrt((d ** 2).sum(1).mean())                      # E||d||^2 = 1 exactly
    widths = [4, 16, 64, 256, 1024]
    outs = {w: _members(rng, mu + 0.8 * w ** -0.5 * d * math.sqrt(2), 8, w, scale=0.5) for w in widths}
    run = FakeRun(outs, y, loss="mse", diverged={16: [2]}, unfinished=[2048])
    res = eb.ensemble_bias(run, subsets=24)
    assert 2048 in res.skipped_widths and res.excluded == {16: [2]}
    assert len(res.per_width[1].seeds) == 7
    linf = np.array([p.ensemble.l_inf for p in res.per_width])
    assert linf == pytest.approx(0.64 * np.array(widths, float) ** -1.0, abs=0.01)   # 0.5*||0.8 N^-.5 d sqrt2||^2
    assert not res.per_width[0].reaches_wide and res.per_width[0].bias_vs_single > 0.1
    assert res.bias_fit is not None and res.bias_fit.alpha_lo <= 1.0 <= res.bias_fit.alpha_hi
    assert abs(res.bias_fit.alpha - 1.0) < 0.15
    # agreement: identical at step 0 (all members equal their mean... up to the width offset), drifting later
    ag = consistency.output_agreement(run, {p.width: p.seeds for p in res.per_width})
    assert ag.steps == [0, 10]
    assert ag.single_msd[-1][0] == pytest.approx(0.0, abs=1e-12)   # widest vs itself, identical members at step 0
    assert ag.single_msd[0][1] > ag.single_msd[0][0]               # narrow members drift apart from the wide ones
    assert ag.ensemble_msd[0][1] < ag.single_msd[0][1]             # ensembling removes the variance part


def test_step_and_average_validation():
    rng = np.random.default_rng(4)
    run = FakeRun({8: _members(rng, np.zeros((10, 3)), 3, 8)}, np.zeros(10, int), loss="mse")
    from widthkit.errors import WidthkitError
    with pytest.raises(WidthkitError, match="valid steps: 0, 10"):
        eb.ensemble_bias(run, step=5)
    with pytest.raises(WidthkitError, match="needs a cross-entropy run"):
        eb.ensemble_bias(run, average="probs")


def test_real_ladder_end_to_end(tiny_run, tmp_path, capsys):
    """On a trained ladder: loss from stored logits equals the trainer's test loss; CLI writes JSON+plots."""
    res = eb.ensemble_bias(tiny_run, subsets=8)
    assert res.widths == [8, 16, 32, 64] and res.loss == "xent"
    for p in res.per_width:
        m = tiny_run.metrics(p.width)["test_loss"][:, -1]
        assert p.single_loss == pytest.approx(float(np.mean(m)), rel=1e-4)
        assert p.ensemble.curve.loss[-1] <= p.single_loss + 1e-9   # averaging logits never hurts on average here
    assert np.isfinite(res.variance_fit.slope)
    agreement = consistency.output_agreement(tiny_run, {w: list(tiny_run.seeds) for w in res.widths})
    assert agreement.steps == [0, 20, 40, 60]
    # all members start from the same muP-scaled init distribution: agreement grows as training proceeds
    top1 = np.array(agreement.single_top1)
    assert np.all((top1 >= 0) & (top1 <= 1))
    from widthkit.cli import main
    out = tmp_path / "eb"
    assert main(["ensemble-bias", str(tiny_run.path), "--out", str(out), "--json", "--subsets", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["widths"] == [8, 16, 32, 64]
    for name in ("ensemble_loss_vs_width", "ensemble_loss_vs_k", "ensemble_variance", "ensemble_over_training"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert main(["ensemble-bias", str(tiny_run.path), "--step", "7"]) == 2
    assert "valid steps: 0, 20, 40, 60" in capsys.readouterr().err


def test_headline_numbers_over_training():
    """Noise that shrinks as N^-1/2 from one step to the next: the variance exponent is -1 at every step, and
    L_inf(N) at each step is the loss of that step's mean predictor."""
    rng = np.random.default_rng(5)
    mu = rng.standard_normal((300, 2))
    widths = [16, 64, 256]
    steps = [[_members(rng, mu * t, 8, w) for t in (0.0, 1.0)] for w in widths]
    run = FakeRun({w: s[0] for w, s in zip(widths, steps)}, mu, loss="mse")
    run.logits = lambda w, step=None: steps[widths.index(w)][0 if step == 0 else 1]
    ot = eb.ensemble_bias(run, subsets=16).over_training
    assert ot.steps == [0, 10] and ot.widths == widths and not ot.log_time
    assert np.allclose(ot.variance_exponent, -1.0, atol=0.15)
    assert ot.l_inf[0][0] == pytest.approx(0.5 * np.mean(np.sum(mu ** 2, 1)), rel=0.05)  # step 0: predicts 0
    assert ot.l_inf[0][1] == pytest.approx(0.0, abs=0.02)                                # step 10: predicts mu
