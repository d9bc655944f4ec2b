"""Render atlas icons: feature visualization toward each cell's average direction.

Objective (lucid's ``direction_neuron_cossim``): for icon i with direction d_i (unit
norm, optionally whitened as ``d @ inv(cov)`` like lucid), maximize
``dot(a_i, d_i) * max(0.1, cos(a_i, d_i)) ** cossim_pow`` where ``a_i`` is the layer
activation of icon i at the centre position (conv layers), the mean over tokens
(token layers) or the vector itself (dense layers).

All icons are optimized together as ONE batch, one independent image per icon, one forward per
step. The loss is the *sum* of the per-icon objectives and Adam is element-wise, so each icon gets
exactly the update it would get alone; batching only removes per-call overhead. Batches are chunked
to a memory budget.  The parameterization is chosen for the input's size:

* images larger than ``LOWRES`` pixels a side: lucent's decorrelated FFT parameterization
  ``param.image(size, batch=n)`` with lucent's robustness transforms, rendered at ``size`` and resized
  (bilinear, antialiased) and reshaped (e.g. flattened) to the model's input *inside* the objective;
* low-resolution inputs (8x8 digits) and 1-D signals: the input's own resolution, under a Gaussian prior
  fitted to the data.  ``x = clip(x0 + L z, 0, 1)`` with ``L = cov^(1/2)`` of the collected inputs (pixels
  that never vary stay put, strokes move together: the data's analogue of lucid's colour/FFT
  decorrelation) and ``x0`` the mean of the 8 collected inputs whose activations point furthest along the
  direction (a ReLU unit that is off at the data mean has no gradient to start from).  ``z`` takes
  normalized gradient steps of ``radius / 32`` and is projected onto the ball ``|z| <= radius``: the
  icon stays within ``radius`` standard deviations (Mahalanobis distance) of ``x0``, on the data's own
  directions.  No transforms (a 1-px jitter is an eighth of an 8-px digit).  The icons are shown at
  ``size`` px by nearest-neighbour upsampling, 1-D ones as a line.

Pixel values in [0,1] are mapped to the data's per-channel input range.
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

from .compose import pictures
from .data import guess_image_shape, is_signal
from .hooks import capture, positions

LOWRES = 16  # inputs at most this many pixels a side (and 1-D signals) are rendered at their own resolution
RADIUS = 4.0  # how far (data standard deviations, Mahalanobis) a low-resolution icon may move from its start


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


def is_lowres(input_shape, image_shape=None) -> bool:
    """Inputs rendered at their own resolution: images of at most ``LOWRES`` px a side, and 1-D signals."""
    image_shape = image_shape if image_shape and len(image_shape) == 3 else guess_image_shape(tuple(input_shape))
    return max(image_shape[1:]) <= LOWRES if image_shape else is_signal(input_shape)


def input_prior(x01: np.ndarray, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """(mean ``[P]``, basis ``L = cov^(1/2)`` ``[P, P]``) of inputs ``x01 [M, P]`` scaled to [0, 1]:
    ``mean + L z`` with ``z ~ N(0, I)`` has the data's mean and covariance."""
    x01 = np.asarray(x01, np.float64).reshape(len(x01), -1)
    lam, U = np.linalg.eigh(np.cov(x01, rowvar=False) + ridge * np.eye(x01.shape[1]))
    return x01.mean(0), (U * np.sqrt(np.maximum(lam, 0))) @ U.T


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
                      seed: int = 0, ids: Sequence[int] | None = None, progress: str = "render icons",
                      prior: tuple[np.ndarray, np.ndarray] | None = None, native: bool | None = None,
                      init01: np.ndarray | None = None, radius: float = RADIUS) -> np.ndarray:
    """Feature-visualize each row of ``directions [K,D]``; returns icons ``[K,size,size,C]`` in [0,1].

    ``batch`` caps icons per optimization batch (default: as many as ``memory_mb`` allows;
    ``batch=1`` renders them one by one). ``ids`` seed each icon's initial image, so an
    icon starts from the same noise whichever batch it is in.  ``native`` renders at the input's own
    resolution (default: for inputs of at most ``LOWRES`` px a side and 1-D inputs), in the basis
    ``prior = input_prior(inputs)`` when given (else plain pixels), starting from ``init01 [K, P]``
    (default: the prior's mean) and moving at most ``radius`` in that basis (``lr`` is the FFT path's
    Adam rate); 1-D icons are RGB line drawings.
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
        image_shape = guess_image_shape(input_shape)
    if native is None:
        native = is_lowres(input_shape, image_shape)
    if image_shape is None and not (native and is_signal(input_shape)):
        raise WidthkitError(f"model inputs of shape {input_shape} are neither images nor 1-D signals; "
                            "pass image_shape=(C, H, W)")
    c, h, w = (int(v) for v in image_shape) if image_shape else (1, 1, input_shape[-1])
    if c not in (1, 3):
        raise WidthkitError(f"icons need 1- or 3-channel inputs, the model takes {c} channels")
    lo, hi = (np.zeros(c), np.ones(c)) if input_range is None else input_range
    lo = torch.as_tensor(np.broadcast_to(np.asarray(lo, np.float32), (c,)).copy()).view(1, c, 1, 1)
    hi = torch.as_tensor(np.broadcast_to(np.asarray(hi, np.float32), (c,)).copy()).view(1, c, 1, 1)
    ids = list(range(len(dirs))) if ids is None else list(ids)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dirs, lo, hi = dirs.to(device), lo.to(device), hi.to(device)
    tf = compose(standard_transforms(size) if transforms is None else transforms)
    npix = c * h * w
    if native:
        mean, basis = prior if prior is not None else (np.full(npix, 0.5), np.eye(npix))
        start = np.broadcast_to(mean if init01 is None else np.asarray(init01).reshape(len(dirs), -1), (len(dirs), npix))
        x0 = torch.as_tensor(start.copy(), dtype=torch.float32).to(device)
        basis = torch.as_tensor(basis, dtype=torch.float32).to(device)

    def new_images(ch):  # (tensor optimized, its image function) for the icons of chunk ``ch``
        gens = [torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ids[i])) for i in ch]
        if native:
            z = torch.stack([torch.randn(npix, generator=g) * 0.01 for g in gens]).to(device).requires_grad_(True)
            return z, lambda: (x0[ch.start:ch.stop] + z @ basis.T).clamp(0, 1).view(len(ch), c, h, w)
        params, image_f = param.image(size, batch=len(ch), channels=1 if c == 1 else None)
        with torch.no_grad():
            for j, g in enumerate(gens):
                params[0][j] = torch.randn(params[0].shape[1:], generator=g) * 0.01
        return params[0], image_f

    def to_input(img):  # icon pixels in [0,1] -> model input
        if not native:
            img = F.interpolate(tf(img), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return (lo + img * (hi - lo)).reshape(len(img), *input_shape)

    was_training = model.training
    model.eval()
    try:
        if batch is None:
            per = _per_icon_bytes(model, torch.zeros(1, *input_shape, device=device))
            per += 4 * 3 * c * (size + 32) ** 2 * 4 if not native else 4 * 3 * npix * 4  # image, transforms, grads
            batch = int(max(1, memory_mb * 2 ** 20 // per))
        batch = max(1, min(int(batch), len(dirs)))
        chunks = [range(s, min(len(dirs), s + batch)) for s in range(0, len(dirs), batch)]
        icons = np.empty((len(dirs), c, h, w) if native else (len(dirs), size, size, c), np.float32)
        with capture(model, layer) as cap, bar(progress, len(chunks) * steps) as pb, _numpy_seed(seed):
            for ch in chunks:
                spec, image_f = new_images(ch)
                opt = None if native else torch.optim.Adam([spec], lr=lr)
                d = dirs[ch.start:ch.stop]
                for _ in range(steps):
                    model(to_input(image_f()))
                    a = _objective_acts(cap.value, position)
                    dot = (a * d).sum(1)
                    cos = dot / a.norm(dim=1).clamp_min(1e-6)
                    obj = dot * cos.clamp_min(0.1) ** cossim_pow
                    (grad,) = torch.autograd.grad(-obj.sum(), spec)
                    if native:
                        _ball_step(spec, grad, radius / 32, radius)
                    else:
                        spec.grad = grad
                        opt.step()
                    pb.advance()
                with torch.no_grad():
                    img = image_f()
                    icons[ch.start:ch.stop] = (img if native else img.permute(0, 2, 3, 1)).cpu().numpy()
    finally:
        model.train(was_training)
    return pictures(icons, image_shape, size) if native else icons


@torch.no_grad()
def _ball_step(z: torch.Tensor, grad: torch.Tensor, step: float, radius: float) -> None:
    """One normalized descent step per row of ``z [K, P]`` (each row its own problem), then each row
    projected onto the ball ``|z| <= radius``."""
    z -= step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
    z *= (radius / z.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1)


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


ICONS = ("optimize", "examples")


def _input_kwargs(meta: dict, dirs: np.ndarray, acts=None, image_shape=None, top: int = 8) -> dict:
    """render_directions' input description from a layout's ``meta``; when ``acts`` stored the model's
    inputs at full resolution, the icon prior and each direction's starting image (the mean of the
    ``top`` inputs whose vectors have the largest dot product with it)."""
    shape = image_shape or meta.get("image_shape") or None
    kw = dict(input_shape=meta["input_shape"], image_shape=shape,
              input_range=(meta["input_lo"], meta["input_hi"]) if "input_lo" in meta else None)
    x = acts.inputs01() if acts is not None and is_lowres(meta["input_shape"], shape) else None
    if x is not None and x[0].size == int(np.prod(meta["input_shape"])):
        x = x.reshape(len(x), -1)
        kw["prior"] = input_prior(x)
        best = np.argsort(-(acts.vectors() @ np.asarray(dirs, np.float32).T), axis=0)[:top]   # [top, K]
        kw["init01"] = x[acts.read("input_index")[best]].mean(0)
    return kw


def example_icons(layout, acts, size: int, image_shape=None, index: np.ndarray | None = None) -> np.ndarray:
    """``icons = "examples"``: each kept cell's average input, as pictures ``[K, size, size, C]``
    (``index``: the vectors of ``acts`` the layout was made of, default all)."""
    x = acts.inputs01() if acts is not None else None
    if x is None or not len(layout.cell_of):
        raise WidthkitError("icons='examples' needs the collected inputs and a fresh layout; "
                            "use icons='optimize' for this atlas")
    inp = acts.read("input_index")
    vec = inp if index is None else inp[index]
    flat = layout.cells[:, 1] * layout.grid + layout.cells[:, 0]
    mean = np.stack([x[vec[layout.cell_of == c]].mean(0) for c in flat])
    return pictures(mean, image_shape or layout.meta.get("image_shape") or None, size)


def render_icons(model: nn.Module, layer: str | None, layout, *, size: int = 64, steps: int = 128,
                 batch: int | None = None, memory_mb: float = 1024, whiten: bool = False,
                 cossim_pow: float = 1.0, lr: float = 0.05, seed: int = 0, position=None,
                 image_shape=None, transforms=None, acts=None, icons: str = "optimize",
                 index: np.ndarray | None = None) -> np.ndarray:
    """Icons ``[K,size,size,C]`` for every kept cell of ``layout`` (all rendered as one batch).

    ``icons="examples"`` shows each cell's average input instead; ``acts`` (the collected activations)
    supplies the inputs for that and for the low-resolution icon prior.
    """
    if icons not in ICONS:
        from widthkit.errors import unknown
        raise unknown("icons", icons, ICONS)
    if icons == "examples":
        return example_icons(layout, acts, size, image_shape, index)
    meta = layout.meta
    layer = layer or meta.get("layer")
    dirs = layout.means.astype(np.float32)
    if whiten:
        if layout.cov is None:
            raise WidthkitError("whiten=True needs the activation covariance; load the layout from layout.h5")
        dirs = whiten_directions(dirs, layout.cov)
    ids = layout.cells[:, 1] * layout.grid + layout.cells[:, 0]
    return render_directions(model, layer, dirs, size=size, steps=steps, batch=batch, memory_mb=memory_mb,
                             cossim_pow=cossim_pow, lr=lr, transforms=transforms, position=position, seed=seed,
                             ids=ids, **_input_kwargs(meta, dirs, acts, image_shape))


def render_neurons(model: nn.Module, layer: str, neurons, layout, *, acts=None, size: int = 64,
                   steps: int = 128, seed: int = 0, image_shape=None, **kw) -> np.ndarray:
    """Feature visualizations ``[k, size, size, C]`` of single neurons (one-hot directions) of the
    layer ``layout`` was made of (``kw``: more :func:`render_directions` options)."""
    dirs = np.eye(layout.means.shape[1], dtype=np.float32)[list(neurons)]
    return render_directions(model, layer, dirs, size=size, steps=steps, seed=seed, ids=list(neurons),
                             progress="render neurons", **_input_kwargs(layout.meta, dirs, acts, image_shape), **kw)
