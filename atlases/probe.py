"""Neuron vs group: is a layer's class information in single neurons or in groups of them?

Three linear probes on the same layer features (train split fit, test split accuracy):

* ``best_neuron_acc``: a probe on the single most class-selective neuron;
* ``topk_acc``: one probe on the ``k`` most class-selective neurons;
* ``group_acc``: one probe on the top-``k`` PCA directions of the layer (fit on train).

Gilboa & Gur-Ari (2019): in wide networks single neurons carry little class information while groups
(directions) keep it.  A neuron's class selectivity is the train accuracy of its closed-form one-feature
linear discriminant (class means, pooled variance, class priors; all neurons at once, no iterations).
The three probes are :func:`widthkit.probes.fit_logistic` (L-BFGS) on standardized features with a fixed
small L2 penalty, fitted together as independent problems in one batched solve.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from widthkit.probes import fit_logistic, standardize
from widthkit.results import Result

L2 = 1e-4


def selectivity(x: np.ndarray, y: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Train accuracy ``[D]`` of each neuron's one-feature linear discriminant on ``x [S, D]``, labels ``y [S]``.

    Per neuron: class means mu_c, pooled within-class variance s2, priors pi_c; it predicts
    ``argmax_c  x mu_c / s2 - mu_c^2 / (2 s2) + log pi_c`` (the Gaussian equal-variance Bayes rule).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y)
    classes, yi = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[yi]                          # [S, C]
    n_c = onehot.sum(0)
    mu = (onehot.T @ x) / n_c[:, None]                          # [C, D]
    s2 = np.maximum(((x - mu[yi]) ** 2).mean(0), 1e-12)         # [D]
    logp = np.log(n_c / len(y))[None, :, None]
    out = np.empty(x.shape[1])
    for s in range(0, x.shape[1], chunk):
        m, v = mu[:, s:s + chunk], s2[s:s + chunk]
        z = x[:, None, s:s + chunk] * (m / v)[None] - (m * m / (2 * v))[None] + logp   # [S, C, d]
        out[s:s + chunk] = (z.argmax(1) == yi[:, None]).mean(0)
    return out


def probe_accuracy(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *,
                   l2: float = L2) -> np.ndarray:
    """Test accuracy ``[G]`` of G independent logistic probes; ``x_*`` is ``[S, G, F]``."""
    x_tr, x_te = np.asarray(x_tr, np.float64), np.asarray(x_te, np.float64)
    S, G, Fd = x_tr.shape
    xt, xe = standardize(x_tr.reshape(S, G * Fd), x_te.reshape(len(x_te), G * Fd))
    xt = xt.reshape(S, G, Fd).transpose(1, 0, 2)
    xe = xe.reshape(len(x_te), G, Fd).transpose(1, 0, 2)
    k = int(max(np.max(y_tr), np.max(y_te))) + 1
    head = fit_logistic(xt, y_tr, k, l2)
    return (head.logits(xe).argmax(-1) == np.asarray(y_te)[None, :]).mean(1)


@dataclasses.dataclass
class NeuronGroup(Result):
    """Test accuracies of the best one-neuron probe, the top-k-neuron probe and the k-PCA-direction probe."""

    n_neurons: int
    k: int
    best_neuron: int
    best_neuron_acc: float
    group_acc: float
    topk_acc: float
    top_neurons: list[int]       # the k neurons of the top-k probe, best first


def neuron_vs_group(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *, k: int = 10,
                    seed: int = 0) -> NeuronGroup:
    """The three probes of the module docstring on features ``x_* [S, D]`` with labels ``y_* [S]``."""
    from sklearn.decomposition import PCA
    x_tr, x_te = np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32)
    kk = int(min(k, x_tr.shape[1], len(x_tr)))
    top = np.argsort(-selectivity(x_tr, y_tr), kind="stable")[:kk]
    pca = PCA(n_components=kk, random_state=seed).fit(x_tr)

    def probes(x):  # [S, 3, k]: best neuron (zero-padded to k features), top-k neurons, k PCA directions
        return np.stack([np.pad(x[:, top[:1]], ((0, 0), (0, kk - 1))), x[:, top], pca.transform(x)], 1)

    acc = probe_accuracy(probes(x_tr), y_tr, probes(x_te), y_te)
    return NeuronGroup(n_neurons=x_tr.shape[1], k=kk, best_neuron=int(top[0]), best_neuron_acc=float(acc[0]),
                       group_acc=float(acc[2]), topk_acc=float(acc[1]), top_neurons=[int(i) for i in top])
