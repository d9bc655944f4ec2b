"""Compose icons into one atlas PNG, each icon at its grid cell (y axis pointing up)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from widthkit.atomic import atomic_path


def to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    """``[..., H, W, C]`` floats in [0,1] (C = 1 or 3) -> uint8 RGB."""
    img = np.clip(np.asarray(img, np.float32), 0, 1)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (img * 255 + 0.5).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of one ``[H, W, C]`` image in [0,1] (or uint8)."""
    arr = img if img.dtype == np.uint8 else to_uint8_rgb(img)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def compose(layout, icons: np.ndarray, *, density_alpha: bool = False, background: float = 1.0) -> np.ndarray:
    """The atlas as a uint8 RGB array ``[G*s, G*s, 3]``; cell (gx, gy) is drawn at column gx, row G-1-gy.

    ``density_alpha`` blends each icon over the background with opacity
    ``min(1, count / median count)``, so sparse cells fade out.
    """
    g, s = layout.grid, icons.shape[1]
    canvas = np.full((g * s, g * s, 3), background, np.float32)
    rgb = to_uint8_rgb(icons).astype(np.float32) / 255.0
    ref = float(np.median(layout.counts)) if len(layout.counts) else 1.0
    for k, (gx, gy) in enumerate(layout.cells):
        r = (g - 1 - int(gy)) * s
        c = int(gx) * s
        a = min(1.0, layout.counts[k] / ref) if density_alpha else 1.0
        canvas[r:r + s, c:c + s] = a * rgb[k] + (1 - a) * canvas[r:r + s, c:c + s]
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)


def compose_png(layout, icons: np.ndarray, path: str | Path, *, density_alpha: bool = False) -> Path:
    """Write the composed atlas to ``path`` as PNG (atomically)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(compose(layout, icons, density_alpha=density_alpha)).save(tmp, format="PNG")
    return path
