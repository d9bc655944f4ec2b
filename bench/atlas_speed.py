"""Benchmark: atlas icons rendered as ONE batch vs one by one (same icons, same steps).

    python bench/atlas_speed.py [--icons 100] [--steps 64] [--size 32] [--fft 20]
    python bench/atlas_speed.py --quickstart      # also time the quick-start atlas end to end
    python bench/atlas_speed.py --full            # and a full-quality one (5e4 activations, 20x20, 256 steps, 64 px)

Model: an MLP (64-128-128-10) trained briefly on sklearn's 8x8 digits (bundled, no
download); icons take the low-resolution path: optimized at the input's own 8x8 resolution under
the digits' Gaussian prior (``atlases.input_prior``, each icon starting from the mean digit) and shown
at ``--size`` px.  The directions are the average layer-3 activations of ``--icons`` random groups of
digits. ``--fft N`` also times lucent's FFT path (what images over 16 px get) on N of them.  Both runs
of a path use the same code (``render_directions``), differing only in ``batch``.  Writes the result under
"## Atlas icon rendering" in bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import atlases  # noqa: E402
from common import machine, update_results  # noqa: E402

HEADING = "## Atlas icon rendering"


def digits_mlp(seed: int = 0):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return m.eval(), x, y


def augmented(x, y, n, seed=0):
    """``n`` digits: the originals plus copies shifted by one pixel with light noise."""
    g = torch.Generator().manual_seed(seed)
    reps = -(-n // len(x))
    imgs = x.reshape(-1, 1, 8, 8).repeat(reps, 1, 1, 1)
    shifts = torch.randint(-1, 2, (len(imgs), 2), generator=g)
    out = torch.stack([torch.roll(im, tuple(s.tolist()), dims=(1, 2)) for im, s in zip(imgs, shifts)])
    out[: len(x)] = x.reshape(-1, 1, 8, 8)
    out = (out + 0.03 * torch.randn(out.shape, generator=g)).clamp(0, 1)
    return out.reshape(len(out), 64)[:n], y.repeat(reps)[:n]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--icons", type=int, default=100)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--quickstart", action="store_true", help="also time the quick-start atlas (1e4 acts, 12x12, 128 steps)")
    ap.add_argument("--full", action="store_true", help="also time a full-quality atlas (5e4 acts, 20x20, 256 steps, 64 px)")
    ap.add_argument("--fft", type=int, default=0, help="also time the FFT path on this many of the icons")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    model, x, y = digits_mlp()
    with atlases.hooks.capture(model, "3") as cap, torch.no_grad():
        model(x)
    groups = np.random.default_rng(0).integers(0, a.icons, len(x))
    dirs = np.stack([cap.value[groups == i].mean(0).numpy() for i in range(a.icons)])
    lines = [f"`python bench/atlas_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"({machine()}; under the shared heavy lock, on a machine other jobs were using); MLP 64-128-128-10 "
             "on 8x8 digits, layer `3`. Low-resolution path: icons optimized at the input's 8x8 resolution under "
             "the digits' Gaussian prior (what 8x8 inputs get); FFT path: lucent's decorrelated FFT images with "
             "its transforms at `size` px, resized to 8x8 inside the objective (what images over 16 px get).", "",
             "| path | icons | steps | size | batched (s) | one by one (s) | speed-up |",
             "|---|---|---|---|---|---|---|"]
    paths = [("low-resolution", a.icons, dict(native=True, prior=atlases.input_prior(x.numpy())))] + \
        ([("FFT", a.fft, dict(native=False))] if a.fft else [])
    for path, n, kw in paths:
        opts = dict(input_shape=(64,), size=a.size, steps=a.steps, seed=0, **kw)
        atlases.render_directions(model, "3", dirs[:1], progress="warm-up", **{**opts, "steps": 1})  # imports, caches
        t = time.perf_counter()
        batched = atlases.render_directions(model, "3", dirs[:n], **opts)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        single = atlases.render_directions(model, "3", dirs[:n], batch=1, **opts)
        ts = time.perf_counter() - t
        assert batched.shape == single.shape
        print(f"{path} path, {n} icons x {a.steps} steps at {a.size}px: batched {tb:.1f}s, one by one {ts:.1f}s, "
              f"speed-up {ts / tb:.1f}x")
        lines.append(f"| {path} | {n} | {a.steps} | {a.size} | {tb:.1f} | {ts:.1f} | {ts / tb:.1f}x |")
    settings = ([("Quick-start", dict(max_vectors=10_000, grid=12, steps=128, size=32))] if a.quickstart else []) + \
        ([("Full-quality", dict(max_vectors=50_000, grid=20, steps=256, size=64))] if a.full else [])
    for label, opts in settings:
        xa, ya = augmented(x, y, opts["max_vectors"])
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            r = atlases.make_atlas(model, "3", (xa, ya), d, **opts)
            tq = time.perf_counter() - t
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items())
        print(f"{label} atlas: {r.n_vectors} activations, {r.n_cells} icons, {opts['steps']} steps, "
              f"{opts['size']} px: {tq:.1f}s ({parts})")
        lines += ["", f"{label} atlas (`make_atlas`, {r.n_vectors} activations of augmented digits, "
                      f"{opts['grid']}x{opts['grid']} grid, {r.n_cells} icons, {opts['steps']} steps, {opts['size']} px): "
                      f"**{tq:.0f} s** total ({parts})."]
    if not a.no_write:
        update_results(HEADING, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
