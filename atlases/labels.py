"""lucid's cell labels: the class each atlas cell's average activation pushes up most.

For cell k with mean activation m_k and member vectors a_i (input x_i, logits z(x_i)), the effect on
logit c is the first-order expansion of the rest of the network around each member, evaluated at the
cell mean and averaged over the members (Carter et al. 2019's linear approximation):

    effect[k, c] = mean_i  z_c(x_i) + g_c(x_i) . (m_k - a_i),      g_c(x_i) = d z_c / d a  at x_i

For the penultimate layer (logits = W a + b) this is exactly the head applied to the cell mean,
``W m_k + b``; for earlier layers it goes through the gradient.  The label is ``argmax_c effect[k, c]``.
The mean of ``J_i e_j`` over all vectors says which class single neuron j pushes up most.
"""
from __future__ import annotations

import numpy as np
import torch

from widthkit.errors import WidthkitError

from .data import iter_batches
from .hooks import capture, positions


def logit_effects(model: torch.nn.Module, layer: str, data, acts, lay, *, index: np.ndarray | None = None,
                  directions: np.ndarray | None = None, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """(``effect [K, C]`` per kept cell of ``lay``, ``[M, C]`` per row of ``directions [M, D]``).

    The second is the mean over the collected vectors of ``J_i d``: the linear effect on the logits of
    adding direction d to the activation (for a one-hot d, the class a single neuron pushes up most).
    ``data`` is what ``acts`` was collected from (same order); ``index`` the subset ``lay`` was made of.
    Each Jacobian-vector product is one double-backward pass (``J v = d/du <J^T u, v>``), so the cost does
    not grow with the number of classes: one pass per position kept per input, plus one per direction.
    """
    ids = np.arange(acts.n) if index is None else np.asarray(index)
    inp, pos = acts.read("input_index")[ids], acts.read("position")[ids].astype(np.int64)
    flat = lay.cells[:, 1] * lay.grid + lay.cells[:, 0]
    slot = np.full(lay.grid * lay.grid, -1)
    slot[flat] = np.arange(len(flat))
    cell = slot[lay.cell_of]                      # kept-cell slot of each layout vector (-1: dropped)
    order = np.argsort(inp, kind="stable")
    rank = np.empty(len(inp), np.int64)           # the how-many-th vector of its input (conv positions)
    rank[order] = np.arange(len(inp)) - np.searchsorted(inp[order], inp[order])
    means = torch.as_tensor(lay.means, dtype=torch.float64)
    dirs = None if directions is None else torch.as_tensor(np.asarray(directions), dtype=torch.float64)
    sums = dsum = None
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
                    u = torch.zeros_like(z, requires_grad=True)
                    (gt,) = torch.autograd.grad(z, cap.value, grad_outputs=u, create_graph=True)
                    jt = positions(gt)                                   # [B, P, D] = J^T u, linear in u
                    acts_b = positions(cap.value.detach()).double()

                    def jvp(b, p, v):  # per input: sum over its listed positions of J v  ->  [B, C]
                        V = torch.zeros(jt.shape, dtype=jt.dtype, device=jt.device)
                        V[torch.as_tensor(b), torch.as_tensor(p)] = v.to(V.dtype)
                        return torch.autograd.grad((jt * V).sum(), u, retain_graph=True)[0].double()

                    if sums is None:
                        sums = torch.zeros(len(flat), z.shape[1], dtype=torch.float64)
                        dsum = None if dirs is None else torch.zeros(len(dirs), z.shape[1], dtype=torch.float64)
                    b_all = inp[rows] - (start - len(x))
                    for r in range(int(rank[rows].max()) + 1):          # one vector per input per pass
                        sel = rows[(rank[rows] == r) & (cell[rows] >= 0)]
                        if not len(sel):
                            continue
                        b, p = inp[sel] - (start - len(x)), pos[sel]
                        k = torch.as_tensor(cell[sel])
                        jv = jvp(b, p, means[k] - acts_b[b, p])[torch.as_tensor(b)]
                        sums.index_add_(0, k, z.detach().double()[torch.as_tensor(b)] + jv)
                    if dirs is not None:
                        for j, d in enumerate(dirs):
                            dsum[j] += jvp(b_all, pos[rows], d.expand(len(rows), -1)).sum(0)
    finally:
        model.train(was_training)
    if sums is None:
        raise WidthkitError("the data yielded none of the collected vectors; pass the data they were collected from")
    counts = torch.as_tensor(np.bincount(cell[cell >= 0], minlength=len(flat)), dtype=torch.float64).clamp_min(1)
    return (sums / counts[:, None]).numpy(), None if dsum is None else (dsum / len(ids)).numpy()
