"""``digits``: sklearn's 8x8 digits (bundled, offline), ``(1, 8, 8)``, a fixed stratified 75/25 split."""
from __future__ import annotations

from widthkit.data.registry import cache, register_task
from widthkit.data.source import Built, Request, channel_stats, check_classes, labels, select, standardize


@cache(maxsize=1)
def _digits_raw():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = d.images.reshape(-1, 1, 8, 8)
    # fixed split (seed 0), identical in every run
    return train_test_split(x, d.target, test_size=0.25, stratify=d.target, random_state=0)


@register_task("digits")
def build_digits(req: Request) -> Built:
    check_classes(req, 10)
    xtr, xte, ytr, yte = _digits_raw()
    mean, std = channel_stats(xtr, 16.0)
    xtr, ytr = select(req, "train", xtr, ytr)
    xte, yte = select(req, "test", xte, yte)
    return Built("classification", (1, 8, 8), 10, standardize(xtr, mean, std, 16.0), labels(ytr),
                 standardize(xte, mean, std, 16.0), labels(yte), class_names=[str(i) for i in range(10)])
