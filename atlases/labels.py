"""lucid's cell labels: the class each atlas cell's average activation pushes up most.

For cell k with mean activation m_k and member vectors a_i (input x_i, logits z(x_i)), the effect on
logit c is the first-order expansion of the rest of the network around each member, evaluated at the
cell mean and averaged over the members (Carter et al. 2019's linear approximation):

    effect[k, c] = mean_i  z_c(x_i) + g_c(x_i) . (m_k - a_i),      g_c(x_i) = d z_c / d a  at x_i

For the penultimate layer (logits = W a + b) this is exactly the head applied to the cell mean,
``W m_k + b``; for earlier layers it goes through the gradient.  The label is ``argmax_c effect[k, c]``.
The mean gradient over all vectors, ``[C, D]``, says which class each single neuron pushes up most.
"""
from __future__ import annotations

import numpy as np
import torch

from widthkit.errors import WidthkitError

from .data import iter_batches
from .hooks import capture, positions


def logit_effects(model: torch.nn.Module, layer: str, data, acts, lay, *, index: np.ndarray | None = None,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(``effect [K, C]`` per kept cell of ``lay``, mean gradient ``[C, D]``) over the collected vectors.

    ``data`` is what ``acts`` was collected from (same order); ``index`` the subset ``lay`` was made of.
    """
    ids = np.arange(acts.n) if index is None else np.asarray(index)
    inp, pos = acts.read("input_index")[ids], acts.read("position")[ids]
    flat = lay.cells[:, 1] * lay.grid + lay.cells[:, 0]
    slot = np.full(lay.grid * lay.grid, -1)
    slot[flat] = np.arange(len(flat))
    cell = slot[lay.cell_of]                      # kept-cell slot of each layout vector (-1: dropped)
    means = torch.as_tensor(lay.means, dtype=torch.float64)
    sums = grad_sum = None
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    start = 0
    try:
        with capture(model, layer) as cap:
            for x, _ in iter_batches(data, batch_size):
                if start > inp.max():
                    break
                rows = np.flatnonzero((inp >= start) & (inp < start + len(x)))
                start += len(x)
                if not len(rows):
                    continue
                with torch.enable_grad():
                    x = x.to(dev).detach().requires_grad_(x.is_floating_point())
                    z = model(x)
                    if z.dim() != 2:
                        raise WidthkitError(f"cell labels need [B, classes] logits, the model gives {tuple(z.shape)}")
                    out = cap.value
                    b = torch.as_tensor(inp[rows] - (start - len(x)))
                    p = torch.as_tensor(pos[rows].astype(np.int64))
                    a = positions(out.detach())[b, p].double()                       # [n, D]
                    g = torch.stack([positions(torch.autograd.grad(z[:, c].sum(), out, retain_graph=True)[0])[b, p]
                                     for c in range(z.shape[1])], 1).double()     # [n, C, D]
                if sums is None:
                    sums = torch.zeros(len(flat), z.shape[1], dtype=torch.float64)
                    grad_sum = torch.zeros(z.shape[1], a.shape[1], dtype=torch.float64)
                grad_sum += g.sum(0)
                keep = cell[rows] >= 0
                k = torch.as_tensor(cell[rows][keep])
                g, a = g[keep], a[keep]
                lin = z.detach().double()[b[keep]] + (g * (means[k][:, None, :] - a[:, None, :])).sum(-1)
                sums.index_add_(0, k, lin)
    finally:
        model.train(was_training)
    if sums is None:
        raise WidthkitError("the data yielded none of the collected vectors; pass the data they were collected from")
    counts = torch.as_tensor(np.bincount(cell[cell >= 0], minlength=len(flat)), dtype=torch.float64).clamp_min(1)
    return (sums / counts[:, None]).numpy(), (grad_sum / len(ids)).numpy()
