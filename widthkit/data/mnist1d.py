"""``mnist1d``: MNIST-1D generated locally with the ``mnist1d`` package, ``(1, 40)``.

The fixed set is the package's standard 4000/1000 set (seed 42), never downloaded, made by the package's own
per-sample transform.  Online: fresh samples from the same generative process, made in batches by
:class:`~widthkit.data.mnist1d_batch.Mnist1dTransform` (the same transform, over 100x faster) from a torch
generator (a :class:`~widthkit.data.task.StagedSampler`: several steps' draws are made in one call), and
normalized with the fixed set's constants (the package standardizes with one mean/std over the
generated set).
"""
from __future__ import annotations

import numpy as np
import torch

from widthkit.data.mnist1d_batch import Mnist1dDraws, Mnist1dTransform
from widthkit.data.registry import cache, register_task
from widthkit.data.source import Built, Request, check_classes, labels, numpy_seed, select
from widthkit.data.task import StagedSampler
from widthkit.errors import WidthkitError


def _mnist1d_raw(targets: np.ndarray, args) -> np.ndarray:
    """Unnormalized MNIST-1D signals for labels ``targets``: mnist1d's own per-sample transform of its
    templates, drawing from numpy's global RNG in the same order as ``mnist1d.data.make_dataset``."""
    from mnist1d.data import get_templates
    from mnist1d.transform import transform
    t = get_templates()
    if len(targets) == 0:
        return np.zeros((0, args.final_seq_length))
    return np.stack([transform(t["x"][y], t["t"], args)[0] for y in targets])


def mnist1d_fixed(args) -> dict:
    """Exactly ``mnist1d.data.make_dataset(args)`` (tests check equality), plus the normalization constants
    ``mean``/``std`` that make_dataset applies, so online samples can be normalized identically.
    Unlike make_dataset it leaves numpy's global RNG as it was."""
    if args.shuffle_seq:
        raise WidthkitError("mnist1d: shuffle_seq is not supported")
    with numpy_seed(args.seed):
        targets = np.repeat(np.arange(10), args.num_samples // 10)
        raw = _mnist1d_raw(targets, args)
        perm = np.random.permutation(len(targets))
    raw, targets = raw[perm], targets[perm]
    mean, std = raw.mean(), raw.std()
    x = (raw - mean) / std
    split = int(len(targets) * args.train_split)
    return dict(x=x[:split], y=targets[:split], x_test=x[split:], y_test=targets[split:], mean=mean, std=std)


@cache(maxsize=1)
def _mnist1d_fixed_default() -> dict:
    from mnist1d.data import get_dataset_args
    return mnist1d_fixed(get_dataset_args())


@register_task("mnist1d", online=True)
def build_mnist1d(req: Request) -> Built:
    from mnist1d.data import get_dataset_args, get_templates
    check_classes(req, 10)
    d = _mnist1d_fixed_default()
    xtr, ytr = select(req, "train", d["x"], d["y"])
    xte, yte = select(req, "test", d["x_test"], d["y_test"])
    as_x = lambda a: torch.as_tensor(a, dtype=torch.float32).reshape(-1, 1, a.shape[-1])  # noqa: E731
    args, mean, std = get_dataset_args(), d["mean"], d["std"]
    keep = torch.tensor(req.classes if req.classes is not None else range(10), dtype=torch.long)
    transform = Mnist1dTransform(args, get_templates(), mean=float(mean), std=float(std))

    def draw(n: int, generator: torch.Generator) -> tuple:  # random numbers only: few ops per step
        return torch.randint(len(keep), (n,), generator=generator), *Mnist1dDraws.random(n, args, generator)

    def make(pick, *random):
        y = keep[pick]
        return transform(y, Mnist1dDraws.from_random(args, *random)).unsqueeze(1), y
    return Built("classification", (1, 40), 10, as_x(xtr), labels(ytr), as_x(xte), labels(yte),
                 StagedSampler(draw, make), [str(i) for i in range(10)])
