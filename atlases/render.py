"""Render atlas icons: feature visualization toward each cell's average direction.

Objective (lucid's ``direction_neuron_cossim``): for icon i with direction d_i (unit
norm, optionally whitened as ``d @ inv(cov)`` like lucid), maximize
``dot(a_i, d_i) * max(0.1, cos(a_i, d_i)) ** cossim_pow`` where ``a_i`` is the layer
activation of icon i at the centre position (conv layers), the mean over tokens
(token layers) or the vector itself (dense layers).

All icons are optimized together as ONE batch: lucent's decorrelated FFT image
parameterization ``param.image(size, batch=n)`` with one independent image per icon,
lucent's robustness transforms, one forward per step. The loss is the *sum* of the
per-icon objectives and Adam is element-wise, so each icon gets exactly the update it
would get alone; batching only removes per-call overhead. Batches are chunked to a
memory budget. Models whose inputs are small or not image-shaped (an MLP on 8x8
digits) are rendered at ``size`` and resized to the model's input size (bilinear,
antialiased) and reshaped (e.g. flattened) *inside* the objective, after the
transforms; pixel values in [0,1] are mapped to the data's per-channel input range.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from widthkit.errors import WidthkitError
from widthkit.progress import bar

from .hooks import capture, positions


def standard_transforms(size: int) -> list:
    """lucent's ``standard_transforms`` with pad/jitter scaled to the icon size (same at 128 px)."""
    with warnings.catch_warnings():  # kornia (imported by lucent) warns about torch.jit.script on import
        warnings.simplefilter("ignore", FutureWarning)
        from lucent.optvis import transform as T

    s = size / 128.0
    return [
        T.pad(max(1, round(12 * s)), mode="constant", constant_value=0.5),
        T.jitter(max(2, round(8 * s))),
        T.random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        T.random_rotate(list(range(-10, 11)) + 5 * [0]),
        T.jitter(max(2, round(4 * s))),
    ]


def whiten_directions(directions: np.ndarray, cov: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """lucid's whitening ``d @ inv(cov)``, with a small ridge (``ridge * mean eigenvalue``) for stability."""
    d = cov.shape[0]
    reg = cov + ridge * max(float(np.trace(cov)) / d, 1e-12) * np.eye(d)
    return directions @ np.linalg.inv(reg).astype(directions.dtype)


@contextlib.contextmanager
def _numpy_seed(seed: int):
    """lucent's transforms draw from numpy's global RNG: seed it here, restore afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _per_icon_bytes(model: nn.Module, x1: torch.Tensor) -> int:
    """Rough memory per icon for one optimization step: 3x the float bytes of all leaf outputs."""
    total = [x1.numel()]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in hs:
            h.remove()
    return 3 * 4 * total[0]


def render_directions(model: nn.Module, layer: str, directions, *, input_shape: Sequence[int],
                      image_shape: Sequence[int] | None = None, input_range=None, size: int = 64,
                      steps: int = 128, batch: int | None = None, memory_mb: float = 1024,
                      cossim_pow: float = 1.0, lr: float = 0.05, transforms=None, position=None,
                      seed: int = 0, ids: Sequence[int] | None = None, progress: str = "render icons"
                      ) -> np.ndarray:
    """Feature-visualize each row of ``directions [K,D]``; returns icons ``[K,size,size,C]`` in [0,1].

    ``batch`` caps icons per optimization batch (default: as many as ``memory_mb`` allows;
    ``batch=1`` renders them one by one). ``ids`` seed each icon's initial image, so an
    icon starts from the same noise whichever batch it is in.
    """
    from lucent.optvis import param

    standard_transforms(size)  # imports lucent's transforms quietly
    from lucent.optvis.transform import compose

    dirs = torch.as_tensor(np.asarray(directions), dtype=torch.float32)
    if dirs.dim() != 2 or len(dirs) == 0:
        raise WidthkitError(f"directions must be a non-empty [K, D] array, got shape {tuple(dirs.shape)}")
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    input_shape = tuple(int(s) for s in input_shape)
    if image_shape is None or len(image_shape) != 3:
        from .data import guess_image_shape
        image_shape = guess_image_shape(input_shape)
    if image_shape is None:
        raise WidthkitError(f"model inputs of shape {input_shape} are not images; pass image_shape=(C, H, W)")
    c, h, w = (int(v) for v in image_shape)
    if c not in (1, 3):
        raise WidthkitError(f"icons need 1- or 3-channel inputs, the model takes {c} channels")
    lo, hi = (np.zeros(c), np.ones(c)) if input_range is None else input_range
    lo = torch.as_tensor(np.broadcast_to(np.asarray(lo, np.float32), (c,)).copy()).view(1, c, 1, 1)
    hi = torch.as_tensor(np.broadcast_to(np.asarray(hi, np.float32), (c,)).copy()).view(1, c, 1, 1)
    ids = list(range(len(dirs))) if ids is None else list(ids)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dirs, lo, hi = dirs.to(device), lo.to(device), hi.to(device)
    tf = compose(standard_transforms(size) if transforms is None else transforms)

    def to_input(img):  # icon pixels in [0,1] -> model input
        x = F.interpolate(tf(img), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return (lo + x * (hi - lo)).reshape(len(img), *input_shape)

    was_training = model.training
    model.eval()
    try:
        if batch is None:
            per = _per_icon_bytes(model, torch.zeros(1, *input_shape, device=device))
            per += 4 * 3 * c * (size + 32) ** 2 * 4  # the image, its transforms and their grads
            batch = int(max(1, memory_mb * 2 ** 20 // per))
        batch = max(1, min(int(batch), len(dirs)))
        chunks = [range(s, min(len(dirs), s + batch)) for s in range(0, len(dirs), batch)]
        icons = np.empty((len(dirs), size, size, c), np.float32)
        with capture(model, layer) as cap, bar(progress, len(chunks) * steps) as pb, _numpy_seed(seed):
            for ch in chunks:
                n = len(ch)
                params, image_f = param.image(size, batch=n, channels=1 if c == 1 else None)
                spec = params[0]
                with torch.no_grad():
                    for j, i in enumerate(ch):
                        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ids[i]))
                        spec[j] = torch.randn(spec.shape[1:], generator=g) * 0.01
                opt = torch.optim.Adam(params, lr=lr)
                d = dirs[ch.start:ch.stop]
                for _ in range(steps):
                    model(to_input(image_f()))
                    a = _objective_acts(cap.value, position)
                    dot = (a * d).sum(1)
                    cos = dot / a.norm(dim=1).clamp_min(1e-6)
                    obj = dot * cos.clamp_min(0.1) ** cossim_pow
                    (grad,) = torch.autograd.grad(-obj.sum(), spec)
                    spec.grad = grad
                    opt.step()
                    pb.advance()
                with torch.no_grad():
                    icons[ch.start:ch.stop] = image_f().permute(0, 2, 3, 1).cpu().numpy()
    finally:
        model.train(was_training)
    return icons


def _objective_acts(t: torch.Tensor, position) -> torch.Tensor:
    """The activation vector ``[B, D]`` the objective looks at (see module docstring)."""
    if t.dim() == 4 and position in (None, "center"):
        return t[:, :, t.shape[2] // 2, t.shape[3] // 2]
    p = positions(t)
    if position in (None, "mean"):
        return p.mean(1)
    if position == "center":
        return p[:, p.shape[1] // 2]
    return p[:, int(position)]


def render_icons(model: nn.Module, layer: str | None, layout, *, size: int = 64, steps: int = 128,
                 batch: int | None = None, memory_mb: float = 1024, whiten: bool = False,
                 cossim_pow: float = 1.0, lr: float = 0.05, seed: int = 0, position=None,
                 image_shape=None, transforms=None) -> np.ndarray:
    """Icons ``[K,size,size,C]`` for every kept cell of ``layout`` (all rendered as one batch)."""
    meta = layout.meta
    layer = layer or meta.get("layer")
    dirs = layout.means.astype(np.float32)
    if whiten:
        if layout.cov is None:
            raise WidthkitError("whiten=True needs the activation covariance; load the layout from layout.h5")
        dirs = whiten_directions(dirs, layout.cov)
    ids = layout.cells[:, 1] * layout.grid + layout.cells[:, 0]
    return render_directions(model, layer, dirs, input_shape=meta["input_shape"],
                             image_shape=image_shape or meta.get("image_shape") or None,
                             input_range=(meta["input_lo"], meta["input_hi"]) if "input_lo" in meta else None,
                             size=size, steps=steps, batch=batch, memory_mb=memory_mb, cossim_pow=cossim_pow,
                             lr=lr, transforms=transforms, position=position, seed=seed, ids=ids)
