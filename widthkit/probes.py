"""Linear probes on frozen features: fit a new last layer with a regularization search.

* ``logistic``: multinomial logistic regression, full-batch L-BFGS (torch) on standardized features,
  objective mean cross-entropy + (l2/2) ||W||^2 (bias not penalized).  This equals sklearn's
  ``LogisticRegression(C=1/(l2*n))``.
* ``ridge``: closed-form ridge regression onto one-hot targets (classify by argmax); its loss is the
  mean of 0.5 * ||W h + b - onehot||^2.
* ``linear-sgd``: the logistic objective minimized by minibatch SGD with momentum (what a user fine-tuning
  a head would do); l2 is the weight decay.

The regularization strength is chosen on a validation split carved from the *training* features
(stratified); the chosen probe is then refitted on all training features and evaluated once on test.
Also: ridge input reconstruction R^2 and k-NN accuracy, the two "information in the hidden state" probes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import unknown
from .results import Result

PROBES = ("logistic", "linear-sgd", "ridge")
L2_GRID = tuple(float(x) for x in np.logspace(-5, 0, 6))
RIDGE_GRID = tuple(float(x) for x in np.logspace(-3, 4, 8))


@contextlib.contextmanager
def small_problem_threads(work: float, limit: float = 1e10):
    """Run problems of less than ``limit`` flops (``work``) on one thread, torch and BLAS: thread start-up and
    contention cost more than they save.  Measured on a busy 2-core machine: small torch problems 10-30x slower
    with 2 threads; 8 Cholesky solves of a 1024x1024 ridge system (3e9 flops) 0.26 s on one thread, 2.4-6.7 s
    on two."""
    old = torch.get_num_threads()
    if work >= limit or old == 1:
        yield
        return
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(old)


def standardize(train: np.ndarray, *others: np.ndarray, eps: float = 1e-6):
    """Standardize columns with the training mean and std; returns (train, *others) as float64."""
    train = np.asarray(train, np.float64)
    mu = train.mean(0)
    sd = train.std(0)
    sd = np.where(sd > eps, sd, 1.0)
    return tuple((np.asarray(a, np.float64) - mu) / sd for a in (train, *others))


@dataclass
class LinearHead:
    """Weights of a fitted probe on standardized features: logits = x @ W.T + b."""

    W: np.ndarray
    b: np.ndarray
    kind: str

    def logits(self, x: np.ndarray) -> np.ndarray:
        """[N, C] for one probe; [G, N, C] for G probes on x [G, N, F]."""
        return np.asarray(x, np.float64) @ np.swapaxes(self.W, -1, -2) + self.b[..., None, :]


def fit_logistic(x, y, num_classes: int, l2: float, max_iter: int = 200, tol: float = 1e-6,
                 init: LinearHead | None = None) -> LinearHead:
    """Multinomial logistic regression by full-batch L-BFGS (scipy's L-BFGS-B, float64, as sklearn's
    ``LogisticRegression`` solves it); ``init`` warm-starts it.

    ``x`` is [N, F] (one probe) or [G, N, F]: G independent probes on the same labels, fitted as one
    problem whose objective is the sum of theirs (so each reaches its own optimum); then W is [G, C, F].
    The objective and its gradient are computed in closed form with numpy: on these small problems a torch
    optimizer's per-iteration overhead (and its first-use import of torch._dynamo, about 2 s) costs more
    than the arithmetic.
    """
    from scipy.optimize import minimize
    X = np.asarray(x, np.float64)
    y = np.asarray(y)
    lead, n, C = X.shape[:-2], len(y), num_classes
    shape_W = (*lead, C, X.shape[-1])
    size_W = int(np.prod(shape_W))
    onehot = np.eye(C)[y]                                           # [N, C]
    theta = np.zeros(size_W + int(np.prod(lead, dtype=int)) * C) if init is None else \
        np.concatenate([np.ravel(init.W), np.ravel(init.b)]).astype(np.float64)

    def objective(theta):
        W, b = theta[:size_W].reshape(shape_W), theta[size_W:].reshape(*lead, C)
        z = X @ np.swapaxes(W, -1, -2) + b[..., None, :]            # [..., N, C]
        m = z.max(-1, keepdims=True)
        e = np.exp(z - m)
        s = e.sum(-1, keepdims=True)
        dz = (e / s - onehot) / n                                   # d(mean cross-entropy)/dz
        f = ((m + np.log(s)).sum() - (z * onehot).sum()) / n + 0.5 * l2 * (W * W).sum()
        grad = np.concatenate([(np.swapaxes(dz, -1, -2) @ X + l2 * W).ravel(), dz.sum(-2).ravel()])
        return f, grad

    with small_problem_threads(X.size * C):
        theta = minimize(objective, theta, jac=True, method="L-BFGS-B",
                         options=dict(maxiter=max_iter, maxfun=max_iter * 5 // 4, maxcor=20, gtol=tol,
                                      ftol=1e-12)).x
    return LinearHead(theta[:size_W].reshape(shape_W), theta[size_W:].reshape(*lead, C), "logistic")


def fit_linear_sgd(x, y, num_classes: int, l2: float, epochs: int = 60, batch_size: int = 128,
                   lr: float = 0.1, seed: int = 0) -> LinearHead:
    """The logistic objective by minibatch SGD (momentum 0.9, cosine schedule)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    Y = torch.as_tensor(np.asarray(y), dtype=torch.long)
    head = torch.nn.Linear(X.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    n = len(X)
    steps = epochs * max(1, -(-n // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    with small_problem_threads(batch_size * X.shape[1] * num_classes):
        _sgd_epochs(head, opt, sched, X, Y, l2, epochs, batch_size, g)
    return LinearHead(head.weight.detach().double().numpy(), head.bias.detach().double().numpy(), "linear-sgd")


def _sgd_epochs(head, opt, sched, X, Y, l2, epochs, batch_size, g) -> None:
    n = len(X)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(head(X[idx]), Y[idx]) + 0.5 * l2 * (head.weight ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def _ridge_solutions(x, t, alphas):
    """Ridge (intercept unpenalized) for every alpha: one Cholesky solve of the centred Gram system per alpha, in
    the smaller of the primal ``X^T X`` [D,D] and dual ``X X^T`` [n,n] forms.  Exact, and 3-4x faster than a
    decomposition of the design (an SVD or eigendecomposition) for the 8 alphas of a validation search.

    Yields ``(alpha, W [K,D], b [K])`` with ``W = (X^T X + alpha I)^-1 X^T T = X^T (X X^T + alpha I)^-1 T``.
    """
    from scipy.linalg import cho_factor, cho_solve
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64)
    xm, tm = x.mean(0), t.mean(0)
    xc, tc = x - xm, t - tm
    primal = xc.shape[0] >= xc.shape[1]
    gram = xc.T @ xc if primal else xc @ xc.T
    rhs = xc.T @ tc if primal else tc
    eye = np.eye(len(gram))
    for a in alphas:
        sol = cho_solve(cho_factor(gram + a * eye), rhs)
        W = sol if primal else xc.T @ sol     # [D, K]
        yield a, W.T, tm - xm @ W


def fit_ridge(x, y, num_classes: int, l2: float) -> LinearHead:
    """Closed-form ridge onto one-hot targets."""
    onehot = np.eye(num_classes)[np.asarray(y)]
    _, W, b = next(_ridge_solutions(x, onehot, [l2]))
    return LinearHead(W, b, "ridge")


def fit_head(kind: str, x, y, num_classes: int, l2: float, seed: int = 0,
             init: LinearHead | None = None) -> LinearHead:
    """Fit probe ``kind``; ``init`` warm-starts the logistic probe (regularization paths)."""
    if kind == "logistic":
        return fit_logistic(x, y, num_classes, l2, init=init)
    if kind == "linear-sgd":
        return fit_linear_sgd(x, y, num_classes, l2, seed=seed)
    if kind == "ridge":
        return fit_ridge(x, y, num_classes, l2)
    raise unknown("probe", kind, PROBES)


def evaluate(head: LinearHead, x, y, num_classes: int) -> tuple[float, float]:
    """(accuracy, loss): cross-entropy for logistic probes, 0.5 squared error to one-hot for ridge."""
    z = head.logits(x)
    y = np.asarray(y)
    acc = float(np.mean(np.argmax(z, 1) == y))
    if head.kind == "ridge":
        loss = float(0.5 * np.mean(np.sum((z - np.eye(num_classes)[y]) ** 2, 1)))
    else:
        m = z.max(1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
        loss = float(np.mean(lse - z[np.arange(len(y)), y]))
    return acc, loss


def stratified_split(y, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation): about ``frac`` of every class goes to validation (at least one
    example when the class has two or more)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(frac * len(idx)))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1) if len(idx) else 0
        val.extend(idx[:k])
        fit.extend(idx[k:])
    return np.sort(np.array(fit, int)), np.sort(np.array(val, int))


@dataclass
class ProbeFit(Result):
    """A probe chosen on validation and scored on test."""

    probe: str
    l2: float
    val_accuracy: float
    test_accuracy: float
    test_loss: float
    n_train: int
    grid: list


def default_grid(kind: str) -> tuple:
    return RIDGE_GRID if kind == "ridge" else L2_GRID


def fit_probe(kind: str, x_train, y_train, x_test, y_test, num_classes: int, grid=None,
              val_frac: float = 0.2, seed: int = 0) -> ProbeFit:
    """Standardize, pick l2 on a stratified validation split of the training set, refit on all of it,
    and score on test.  ``x_test`` is used only for the final score."""
    if kind not in PROBES:
        raise unknown("probe", kind, PROBES)
    with small_problem_threads(np.size(x_train) * num_classes):
        return _fit_probe(kind, x_train, y_train, x_test, y_test, num_classes, grid, val_frac, seed)


def _fit_probe(kind, x_train, y_train, x_test, y_test, num_classes, grid, val_frac, seed) -> ProbeFit:
    grid = list(default_grid(kind) if grid is None else grid)
    y_train = np.asarray(y_train)
    xtr, xte = standardize(x_train, x_test)
    fit_idx, val_idx = stratified_split(y_train, val_frac, seed)
    best = (float("nan"), float("nan"), grid[len(grid) // 2], None)  # no validation data: middle of grid
    if len(grid) > 1 and len(val_idx) > 0:
        xf, xv = standardize(np.asarray(x_train)[fit_idx], np.asarray(x_train)[val_idx])
        head = None
        best = (-1.0, float("inf"), grid[0], None)
        for l2 in sorted(grid, reverse=True):  # strong -> weak, warm-started along the path
            head = fit_head(kind, xf, y_train[fit_idx], num_classes, l2, seed, init=head)
            acc, loss = evaluate(head, xv, y_train[val_idx], num_classes)
            if (acc, -loss) > (best[0], -best[1]):
                best = (acc, loss, l2, head)
    head = fit_head(kind, xtr, y_train, num_classes, best[2], seed, init=best[3])
    acc, loss = evaluate(head, xte, y_test, num_classes)
    return ProbeFit(kind, float(best[2]), float(best[0]), acc, loss, int(len(y_train)), grid)


def few_shot_indices(y, shots: int, seed: int) -> np.ndarray:
    """``shots`` random training examples of every class (fewer if a class has fewer)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:shots] for c in np.unique(y)]))


def ridge_r2(h_train, x_train, h_test, x_test, alphas=RIDGE_GRID, val_frac: float = 0.2, seed: int = 0) -> float:
    """Held-out R^2 of reconstructing inputs ``x`` from hidden states ``h`` by ridge regression.

    R^2 = 1 - sum of squared errors / total sum of squares over all input coordinates (test set,
    around the training mean).  The ridge strength is chosen on a validation split of the train set.
    """
    d = min(len(h_train), np.shape(h_train)[1])  # side of the Gram system factorized per alpha
    with small_problem_threads(len(alphas) * d ** 3 / 3):
        return _ridge_r2(h_train, x_train, h_test, x_test, alphas, val_frac, seed)


def _ridge_r2(h_train, x_train, h_test, x_test, alphas, val_frac, seed) -> float:
    xtr = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
    xte = np.asarray(x_test, np.float64).reshape(len(x_test), -1)
    htr, hte = standardize(h_train, h_test)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(htr))
    nv = max(1, int(val_frac * len(htr)))
    v, f = perm[:nv], perm[nv:]
    hf, hv = standardize(np.asarray(h_train)[f], np.asarray(h_train)[v])

    def r2(pred, truth, mean):
        return 1.0 - float(((pred - truth) ** 2).sum() / ((truth - mean) ** 2).sum())

    best = max(((r2(hv @ W.T + b, xtr[v], xtr[f].mean(0)), a) for a, W, b in _ridge_solutions(hf, xtr[f], alphas)))
    _, W, b = next(_ridge_solutions(htr, xtr, [best[1]]))
    return r2(hte @ W.T + b, xte, xtr.mean(0))


def knn_accuracy(h_train, y_train, h_test, y_test, k: int = 10, chunk: int = 1024) -> float:
    """k-nearest-neighbour accuracy (cosine similarity on standardized features, majority vote)."""
    with small_problem_threads(float(len(h_train)) * len(h_test)):
        return _knn(h_train, y_train, h_test, y_test, k, chunk)


def _knn(h_train, y_train, h_test, y_test, k, chunk) -> float:
    htr, hte = standardize(h_train, h_test)
    htr /= np.linalg.norm(htr, axis=1, keepdims=True) + 1e-12
    hte /= np.linalg.norm(hte, axis=1, keepdims=True) + 1e-12
    y_train = np.asarray(y_train)
    C = int(y_train.max()) + 1
    k = min(k, len(htr))
    correct = 0
    for i in range(0, len(hte), chunk):
        sim = hte[i:i + chunk] @ htr.T
        nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(nn), C))
        np.add.at(votes, (np.repeat(np.arange(len(nn)), k), y_train[nn].ravel()), 1.0)
        correct += int((votes.argmax(1) == np.asarray(y_test)[i:i + chunk]).sum())
    return correct / len(hte)
