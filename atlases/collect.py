"""Collect a layer's activation vectors over a dataset and stream them to HDF5.

Conv layers (``[B,C,H,W]``) and token layers (``[B,T,D]``) give many vectors per
input; we keep ``positions_per_image`` random positions of each input (seeded), as
lucid's activation atlases do. Vectors go to resizable, chunked HDF5 datasets in
blocks, so 1e5-1e6 vectors never sit in memory at once; collection stops at
``max_vectors`` (the first vectors of the data order; shuffle the data for a sample).
Each vector keeps the input index and position it came from, the input's label if
given, and (with ``attribute_class``) its attribution toward that class logit.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from widthkit.errors import WidthkitError
from widthkit.progress import bar

from .data import guess_image_shape, is_signal, iter_batches
from .hooks import capture, get_layer, positions

THUMB = 32  # thumbnails kept per input for the viewer are at most THUMB x THUMB
MAX_SIGNAL = 4096  # 1-D signals of at most this length are kept whole (viewer thumbnails, icon prior)


@dataclasses.dataclass
class Activations:
    """Collected activation vectors, stored in an HDF5 file at ``path``.

    Datasets: ``vectors [N,D]`` float32, ``input_index [N]``, ``position [N]`` (flat
    spatial/token index), optional ``labels [N]``, ``attribution [N]``, and per input
    ``thumbs [M,C,t,t]`` (float16) when inputs are images, ``thumbs [M,L]`` when they are 1-D signals. Attributes: layer,
    input_shape, image_shape, input_lo/input_hi (per-channel input range).
    """

    path: Path

    def _file(self):
        return h5py.File(self.path, "r")

    def _attr(self, key, default=None):
        with self._file() as f:
            return f.attrs.get(key, default)

    @property
    def n(self) -> int:
        with self._file() as f:
            return int(f["vectors"].shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def dim(self) -> int:
        with self._file() as f:
            return int(f["vectors"].shape[1])

    @property
    def layer(self) -> str:
        return str(self._attr("layer"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._attr("input_shape"))

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        s = self._attr("image_shape")
        return tuple(int(v) for v in s) if s is not None and len(s) == 3 else None

    @property
    def input_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (lo, hi) of the inputs seen, used to map icons into the data's range."""
        return np.asarray(self._attr("input_lo")), np.asarray(self._attr("input_hi"))

    def read(self, name: str, sl=slice(None)) -> np.ndarray | None:
        """Read dataset ``name`` (or a slice/index array of it); None when absent."""
        with self._file() as f:
            if name not in f:
                return None
            if isinstance(sl, np.ndarray):
                order = np.argsort(sl)
                out = f[name][np.asarray(sl)[order]] if len(sl) else f[name][:0]
                res = np.empty_like(out)
                res[order] = out
                return res
            return f[name][sl]

    def vectors(self, sl=slice(None)) -> np.ndarray:
        return self.read("vectors", sl)

    @property
    def labels(self) -> np.ndarray | None:
        return self.read("labels")

    def chunks(self, size: int = 16384):
        """Yield ``(start, vectors[start:start+size])`` blocks, for streaming passes."""
        n = self.n
        for s in range(0, n, size):
            yield s, self.vectors(slice(s, min(n, s + size)))

    def inputs01(self, input_index: np.ndarray | None = None) -> np.ndarray | None:
        """Stored inputs scaled to [0, 1] by the input range, ``[k, C, t, t]`` or ``[k, L]`` (all when
        ``input_index`` is None; None when nothing was stored)."""
        uniq = None if input_index is None else np.unique(input_index)
        th = self.read("thumbs", slice(None) if uniq is None else uniq)
        if th is None:
            return None
        if uniq is not None:
            th = th[np.searchsorted(uniq, input_index)]
        lo, hi = self.input_range
        shape = (1, -1) + (1,) * (th.ndim - 2)
        lo, hi = lo.reshape(shape), hi.reshape(shape)
        return np.clip((th.astype(np.float32) - lo) / np.maximum(hi - lo, 1e-8), 0, 1)

    def thumbs(self, input_index: np.ndarray) -> np.ndarray | None:
        """Pictures ``[k, t, t, C]`` in [0, 1] of the given inputs (1-D signals drawn as lines; None when
        no inputs were stored)."""
        from .compose import pictures
        x = self.inputs01(input_index)
        if x is None:
            return None
        return x.transpose(0, 2, 3, 1) if x.ndim == 4 else pictures(x, None, THUMB)


def load_activations(path: str | Path) -> Activations:
    """Open activations collected earlier."""
    path = Path(path)
    if not path.exists():
        raise WidthkitError(f"no activations file at {path}; run atlases.collect(..., out=PATH) first")
    return Activations(path)


class _Writer:
    """Appends rows to resizable, chunked HDF5 datasets."""

    def __init__(self, f: h5py.File, name: str, shape: tuple, dtype, chunk_rows: int):
        self.ds = f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                   chunks=(chunk_rows, *shape))

    def append(self, rows: np.ndarray) -> None:
        n = self.ds.shape[0]
        self.ds.resize(n + len(rows), axis=0)
        self.ds[n:] = rows


def collect(model: nn.Module, layer: str, data, *, max_vectors: int = 100_000,
            positions_per_image: int = 1, out: str | Path | None = None, seed: int = 0,
            batch_size: int = 256, image_shape: tuple[int, int, int] | None = None,
            attribute_class: int | None = None, device: str | torch.device | None = None,
            keep_thumbs: bool = True) -> Activations:
    """Record ``layer``'s activation vectors over ``data`` into an HDF5 file (``out``).

    ``data``: a tensor x, an (x, y) pair, or an iterable of batches (x or (x, y)).
    ``image_shape``: ``(C,H,W)`` of flat inputs (guessed for square 1-/3-channel ones).
    ``attribute_class``: also store gradient x activation toward that class logit,
    summed over channels, per vector (used by :func:`atlases.class_atlas`).
    """
    get_layer(model, layer)  # validate the name before touching data
    if max_vectors < 1 or positions_per_image < 1:
        raise WidthkitError("max_vectors and positions_per_image must be >= 1")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="atlas-")) / "activations.h5"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    tmp = out.with_name(f".{out.name}.tmp")
    n_inputs = n_vec = 0
    lo = hi = None
    try:
        with h5py.File(tmp, "w") as f, capture(model, layer) as cap, bar(f"collect {layer}", max_vectors) as pb:
            writers: dict[str, _Writer] = {}
            for x, y in iter_batches(data, batch_size):
                if n_vec >= max_vectors:
                    break
                x = x.to(device)
                if not writers:
                    in_shape = tuple(x.shape[1:])
                    img_shape = tuple(image_shape) if image_shape else guess_image_shape(in_shape)
                    if img_shape and int(np.prod(img_shape)) != int(np.prod(in_shape)):
                        raise WidthkitError(f"image_shape {img_shape} does not match inputs of shape {in_shape}")
                    f.attrs["layer"] = layer
                    f.attrs["input_shape"] = np.asarray(in_shape, dtype=np.int64)
                    f.attrs["image_shape"] = np.asarray(img_shape or (), dtype=np.int64)
                acts, attr = _forward(model, cap, x, attribute_class)
                pos = positions(acts)  # [B, P, D]
                b, p, d = pos.shape
                k = min(positions_per_image, p)
                if p == 1:
                    idx = torch.zeros(b, 1, dtype=torch.long)
                else:
                    idx = torch.argsort(torch.rand(b, p, generator=gen), dim=1)[:, :k]
                vec = torch.gather(pos.detach().cpu(), 1, idx[..., None].expand(b, k, d)).reshape(b * k, d)
                take = min(len(vec), max_vectors - n_vec)
                inp = (torch.arange(b)[:, None].expand(b, k).reshape(-1) + n_inputs)[:take]
                if not writers:
                    rows = max(1, min(4096, (1 << 20) // (4 * d)))  # ~1 MiB chunks
                    writers["vectors"] = _Writer(f, "vectors", (d,), np.float32, rows)
                    writers["input_index"] = _Writer(f, "input_index", (), np.int64, 4096)
                    writers["position"] = _Writer(f, "position", (), np.int32, 4096)
                    if y is not None:
                        writers["labels"] = _Writer(f, "labels", (), np.int64, 4096)
                    if attr is not None:
                        writers["attribution"] = _Writer(f, "attribution", (), np.float32, 4096)
                    if img_shape and keep_thumbs:
                        c, hh, ww = img_shape
                        writers["thumbs"] = _Writer(f, "thumbs", (c, min(hh, THUMB), min(ww, THUMB)),
                                                    np.float16, 256)
                    elif is_signal(in_shape) and in_shape[-1] <= MAX_SIGNAL and keep_thumbs:
                        writers["thumbs"] = _Writer(f, "thumbs", in_shape, np.float16, 256)
                writers["vectors"].append(vec[:take].numpy().astype(np.float32))
                writers["input_index"].append(inp.numpy())
                writers["position"].append(idx.reshape(-1)[:take].numpy().astype(np.int32))
                if "labels" in writers:
                    if y is None:
                        raise WidthkitError("some batches have labels and some do not; give labels for all or none")
                    writers["labels"].append(y.reshape(b, -1)[:, 0].cpu()[:, None].expand(b, k)
                                             .reshape(-1)[:take].numpy().astype(np.int64))
                if "attribution" in writers:
                    a = torch.gather(attr.detach().cpu(), 1, idx).reshape(-1)[:take]
                    writers["attribution"].append(a.numpy().astype(np.float32))
                n_used = int(inp[-1] - n_inputs + 1) if take else 0
                if img_shape:
                    imgs = x[:n_used].detach().float().cpu().reshape(n_used, *img_shape)
                    blo, bhi = imgs.amin(dim=(0, 2, 3)).numpy(), imgs.amax(dim=(0, 2, 3)).numpy()
                    lo = blo if lo is None else np.minimum(lo, blo)
                    hi = bhi if hi is None else np.maximum(hi, bhi)
                    if "thumbs" in writers and n_used:
                        th = writers["thumbs"].ds.shape[2:]
                        if tuple(th) != tuple(img_shape[1:]):
                            imgs = F.interpolate(imgs, size=tuple(th), mode="area")
                        writers["thumbs"].append(imgs.numpy().astype(np.float16))
                else:
                    xf = x.detach().float().cpu()
                    blo, bhi = np.array([xf.min().item()]), np.array([xf.max().item()])
                    lo = blo if lo is None else np.minimum(lo, blo)
                    hi = bhi if hi is None else np.maximum(hi, bhi)
                    if "thumbs" in writers and n_used:
                        writers["thumbs"].append(xf[:n_used].numpy().astype(np.float16))
                n_inputs += b
                n_vec += take
                pb.advance(take)
            if not writers:
                raise WidthkitError("data yielded no batches; give a non-empty dataset")
            f.attrs["input_lo"] = lo
            f.attrs["input_hi"] = hi
            f.attrs["positions_per_image"] = positions_per_image
            f.attrs["seed"] = seed
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return Activations(out)


def _forward(model: nn.Module, cap, x: torch.Tensor, attribute_class: int | None):
    """Run the model; return the layer output and (optionally) per-position attribution ``[B, P]``."""
    if attribute_class is None:
        with torch.no_grad():
            model(x)
        return cap.value, None
    with torch.enable_grad():
        x = x.detach().requires_grad_(x.is_floating_point())
        logits = model(x)
        acts = cap.value
        if logits.dim() != 2 or not 0 <= attribute_class < logits.shape[1]:
            raise WidthkitError(f"attribute_class={attribute_class} is not a class of the model's "
                                f"output of shape {tuple(logits.shape)}")
        (grad,) = torch.autograd.grad(logits[:, attribute_class].sum(), acts)
    attr = positions(acts.detach() * grad).sum(-1)  # gradient x activation, summed over channels
    return acts.detach(), attr
