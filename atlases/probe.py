"""Neuron vs group: is a layer's class information in single neurons or in directions?

``best_neuron_acc``: the best test accuracy of a linear (softmax) probe on ONE neuron;
``group_acc``: the accuracy of a linear probe on the top-k PCA directions. All probes
are trained jointly as independent problems in one batched torch optimization (summed
losses, Adam is element-wise), features standardized on the training split.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from widthkit.results import Result


def probe_accuracy(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *,
                   steps: int = 300, lr: float = 0.1, l2: float = 1e-4) -> np.ndarray:
    """Test accuracy of G independent softmax probes; ``x_*`` is ``[S, G, F]`` (G probes on F features)."""
    xt, xe = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xt, xe = (xt - mu) / sd, (xe - mu) / sd
    yt, ye = torch.as_tensor(y_tr, dtype=torch.long), torch.as_tensor(y_te, dtype=torch.long)
    k = int(max(yt.max(), ye.max())) + 1
    _, g, f = xt.shape
    w = torch.zeros(g, f, k, requires_grad=True)
    b = torch.zeros(g, k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        logits = torch.einsum("sgf,gfk->sgk", xt, w) + b
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, k), yt.repeat_interleave(g), reduction="sum")
        loss = loss / len(xt) + l2 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (torch.einsum("sgf,gfk->sgk", xe, w) + b).argmax(-1)
    return (pred == ye[:, None]).float().mean(0).numpy()


@dataclasses.dataclass
class NeuronGroup(Result):
    """Best single-neuron probe accuracy vs top-k PCA-direction probe accuracy for one layer."""

    n_neurons: int
    k: int
    best_neuron: int
    best_neuron_acc: float
    group_acc: float


def neuron_vs_group(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, *, k: int = 10,
                    steps: int = 300, seed: int = 0) -> NeuronGroup:
    """Compare the best one-neuron probe with a probe on the top-``k`` PCA directions (fit on train)."""
    from sklearn.decomposition import PCA
    x_tr, x_te = np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32)
    single = probe_accuracy(x_tr[:, :, None], y_tr, x_te[:, :, None], y_te, steps=steps)
    kk = int(min(k, x_tr.shape[1], len(x_tr)))
    pca = PCA(n_components=kk, random_state=seed).fit(x_tr)
    group = probe_accuracy(pca.transform(x_tr)[:, None, :], y_tr, pca.transform(x_te)[:, None, :], y_te,
                           steps=steps)
    best = int(np.argmax(single))
    return NeuronGroup(n_neurons=x_tr.shape[1], k=kk, best_neuron=best, best_neuron_acc=float(single[best]),
                       group_acc=float(group[0]))
