"""Neuron vs group: is a layer's class information in single neurons or in directions?

``best_neuron_acc``: the best test accuracy of a logistic probe on ONE neuron; ``group_acc``: the accuracy
of a logistic probe on the top-k PCA directions.  Both are :func:`widthkit.probes.fit_logistic` on
standardized features with a fixed small L2 penalty; the one-neuron probes are fitted together as
independent problems in one batched L-BFGS solve.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from widthkit.probes import fit_logistic, standardize
from widthkit.results import Result

L2 = 1e-4


def probe_accuracy(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *,
                   l2: float = L2) -> np.ndarray:
    """Test accuracy of G independent logistic probes; ``x_*`` is ``[S, G, F]`` (G probes on F features)."""
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
    """Best single-neuron probe accuracy vs top-k PCA-direction probe accuracy for one layer."""

    n_neurons: int
    k: int
    best_neuron: int
    best_neuron_acc: float
    group_acc: float


def neuron_vs_group(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *, k: int = 10,
                    seed: int = 0) -> NeuronGroup:
    """Compare the best one-neuron probe with a probe on the top-``k`` PCA directions (fit on train)."""
    from sklearn.decomposition import PCA
    x_tr, x_te = np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32)
    single = probe_accuracy(x_tr[:, :, None], y_tr, x_te[:, :, None], y_te)
    kk = int(min(k, x_tr.shape[1], len(x_tr)))
    pca = PCA(n_components=kk, random_state=seed).fit(x_tr)
    group = probe_accuracy(pca.transform(x_tr)[:, None, :], y_tr, pca.transform(x_te)[:, None, :], y_te)
    best = int(np.argmax(single))
    return NeuronGroup(n_neurons=x_tr.shape[1], k=kk, best_neuron=best, best_neuron_acc=float(single[best]),
                       group_acc=float(group[0]))
