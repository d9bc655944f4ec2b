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


def pictures(x01: np.ndarray, image_shape, size: int) -> np.ndarray:
    """Inputs scaled to [0, 1] as display pictures ``[N, size, size, C]``, inventing no detail.

    Images (``image_shape = (C, H, W)``; ``x01`` is ``[N, C*H*W]`` or ``[N, C, H, W]``) are upsampled by
    an integer nearest-neighbour factor and centred on a white square (their aspect is kept); 1-D signals
    (``image_shape`` None, ``x01 [N, L]``) are drawn as a line, value up, on a white RGB square.
    """
    x01 = np.clip(np.asarray(x01, np.float32), 0, 1)
    n = len(x01)
    if image_shape:
        c, h, w = (int(v) for v in image_shape)
        f = max(1, size // max(h, w))
        img = np.repeat(np.repeat(x01.reshape(n, c, h, w), f, 2), f, 3).transpose(0, 2, 3, 1)[:, :size, :size]
        out = np.ones((n, size, size, c), np.float32)
        r, q = (size - img.shape[1]) // 2, (size - img.shape[2]) // 2
        out[:, r:r + img.shape[1], q:q + img.shape[2]] = img
        return out
    from PIL import ImageDraw
    x01 = x01.reshape(n, -1)
    xs = np.linspace(1, size - 2, x01.shape[1])
    out = np.empty((n, size, size, 3), np.float32)
    for i, sig in enumerate(x01):
        im = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(im).line(list(zip(xs, 1 + (1 - sig) * (size - 3))), fill=(40, 70, 160), width=max(1, size // 40))
        out[i] = np.asarray(im, np.float32) / 255
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of one ``[H, W, C]`` image in [0,1] (or uint8)."""
    arr = img if img.dtype == np.uint8 else to_uint8_rgb(img)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _font(px: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=max(6, px))


def tag(img: np.ndarray, text: str, px: int, alpha: float = 0.55) -> None:
    """Write ``text`` small in the bottom-right corner of uint8 RGB ``img [H, W, 3]`` (in place), red on
    a light box of opacity ``alpha``, so it reads on any icon and the icon still shows through."""
    from PIL import ImageDraw
    d = ImageDraw.Draw(Image.fromarray(img))
    font = _font(px)
    x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font)
    w, h = x1 - x0 + 2, y1 - y0 + 2
    x, y = img.shape[1] - w, img.shape[0] - h
    box = img[y:, x:].astype(np.float32)
    img[y:, x:] = (alpha * np.array([255, 255, 220]) + (1 - alpha) * box + 0.5).astype(np.uint8)
    im = Image.fromarray(img)
    ImageDraw.Draw(im).text((x + 1 - x0, y + 1 - y0), text, fill=(200, 0, 0), font=font)
    img[:] = np.asarray(im)


def backdrop(icons: np.ndarray) -> float:
    """The canvas grey for icons ``[K, s, s, C]``: black when their outer ring of pixels is mostly dark
    (digits: bright ink on black), so only the strokes stand out, else white."""
    ring = np.concatenate([icons[:, 0], icons[:, -1], icons[:, :, 0], icons[:, :, -1]], 1)
    return 0.0 if len(icons) and float(np.mean(ring)) < 0.25 else 1.0


def compose(layout, icons: np.ndarray, *, density_alpha: bool = False, background: float | None = None,
            class_names=None) -> np.ndarray:
    """The atlas as a uint8 RGB array ``[G*s, G*s, 3]``; cell (gx, gy) is drawn at column gx, row G-1-gy.

    ``background`` is the canvas grey (default :func:`backdrop`).  ``density_alpha`` blends each icon over
    the background with opacity
    ``min(1, count / median count)``, so sparse cells fade out.  Cells with a label
    (``layout.labels``) carry it small in their corner (``class_names`` or the class index).
    """
    g, s = layout.grid, icons.shape[1]
    canvas = np.full((g * s, g * s, 3), backdrop(icons) if background is None else background, np.float32)
    rgb = to_uint8_rgb(icons).astype(np.float32) / 255.0
    ref = float(np.median(layout.counts)) if len(layout.counts) else 1.0
    for k, (gx, gy) in enumerate(layout.cells):
        r = (g - 1 - int(gy)) * s
        c = int(gx) * s
        a = min(1.0, layout.counts[k] / ref) if density_alpha else 1.0
        canvas[r:r + s, c:c + s] = a * rgb[k] + (1 - a) * canvas[r:r + s, c:c + s]
    out = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    labels = getattr(layout, "labels", None)
    if labels is not None and s >= 16:
        for k, (gx, gy) in enumerate(layout.cells):
            r, c = (g - 1 - int(gy)) * s, int(gx) * s
            tag(out[r:r + s, c:c + s], str(class_names[labels[k]] if class_names else labels[k]), s // 4)
    return out


def compose_row(icons: np.ndarray, captions: list[str], path: str | Path, gap: int = 4) -> Path:
    """Icons ``[k, s, s, C]`` side by side, each with its caption underneath, as one PNG (atomically)."""
    from PIL import ImageDraw
    k, s = len(icons), icons.shape[1]
    font = _font(max(8, s // 6))
    cap = int(font.size * 1.4) + 2
    grey = int(255 * backdrop(icons))
    im = Image.new("RGB", (k * (s + gap) + gap, s + cap + gap), (grey,) * 3)
    for i, (icon, text) in enumerate(zip(to_uint8_rgb(icons), captions)):
        im.paste(Image.fromarray(icon), (gap + i * (s + gap), gap))
        ImageDraw.Draw(im).text((gap + i * (s + gap), s + gap + 1), text, fill=(255 - grey,) * 3, font=font)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return path


def compose_png(layout, icons: np.ndarray, path: str | Path, *, density_alpha: bool = False,
                class_names=None) -> Path:
    """Write the composed atlas to ``path`` as PNG (atomically)."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(compose(layout, icons, density_alpha=density_alpha, class_names=class_names)).save(
            tmp, format="PNG")
    return path
