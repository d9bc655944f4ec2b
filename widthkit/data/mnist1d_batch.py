"""mnist1d's per-sample ``transform`` as one batched torch computation (the online sampler's fast path).

mnist1d builds a signal from its digit template by: padding with ``p`` zeros, linear interpolation to
``L = template_len + padding[1]`` points, a random scale, a cyclic translation by ``k``, correlated noise
(Gaussian-filtered, sigma 2, scipy's ``reflect`` edges) where the signal is exactly zero, iid noise, a linear
shear and interpolation to ``final_seq_length``.  :class:`Mnist1dTransform` draws nothing itself: it applies
exactly those steps, for a whole batch at once, to per-sample parameters :class:`Mnist1dDraws` drawn first
(by :meth:`Mnist1dDraws.sample` from a torch generator, or replayed from mnist1d's own numpy stream in the tests).

Everything that does not depend on the noise is precomputed: every (template, padding, translation) signal,
interpolated with ``np.interp``'s own points and slope formula (mnist1d's ``interp1d`` delegates to it), so
where the signal is exactly zero (and gets correlated noise) is decided exactly as mnist1d decides it; the
filter as an ``L x L`` matrix (scipy's ``gaussian_filter`` applied to the identity).  The signal is exactly zero
where the noise goes, so ``where(quiet, noise, signal)`` is ``signal + quiet * noise``, and the final (linear)
interpolation of the signal and shear parts is precomputed too: a batch costs the draws, one gather, one
``L x L`` and one ``L x final`` matrix product and a few elementwise ops.  The results agree with ``transform`` to
float rounding (``tests/test_data.py``), at over 100x its speed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Mnist1dDraws:
    """Per-sample random parameters of mnist1d's transform, [N] each unless noted, in its draw order:
    ``pad`` (int zeros appended), ``scale_u`` (uniform [0,1) of the scale factor), ``shift`` (int translation),
    ``corr`` and ``iid`` (standard normal [N, L]), ``shear_u`` (uniform [0,1) of the shear)."""

    pad: torch.Tensor
    scale_u: torch.Tensor
    shift: torch.Tensor
    corr: torch.Tensor
    iid: torch.Tensor
    shear_u: torch.Tensor

    @staticmethod
    def sample(n: int, args, generator: torch.Generator) -> "Mnist1dDraws":
        """``n`` fresh draws from ``generator`` (float32), distributed as mnist1d draws them."""
        return Mnist1dDraws.from_random(args, *Mnist1dDraws.random(n, args, generator))

    @staticmethod
    def random(n: int, args, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random numbers behind ``n`` draws, each ``[n, ...]``: uniforms [n, 3], translations [n], normals
        [n, 2, L] (in the generator's order; rows of several calls concatenate into one :meth:`from_random`)."""
        u = torch.rand(3, n, generator=generator)
        shift = torch.randint(args.max_translation, (n,), generator=generator)
        noise = torch.randn(2, n, args.template_len + args.padding[1], generator=generator)
        return u.T, shift, noise.transpose(0, 1)

    @staticmethod
    def from_random(args, u: torch.Tensor, shift: torch.Tensor, noise: torch.Tensor) -> "Mnist1dDraws":
        """The draws made from :meth:`random`'s numbers."""
        lo, hi = args.padding
        return Mnist1dDraws(lo + (u[:, 0] * (hi - lo + 1)).long(), u[:, 1], shift, noise[:, 0], noise[:, 1], u[:, 2])


def _interp_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.interp`` from ``linspace(0,1,n_in)`` to ``linspace(0,1,n_out)``: left index j [n_out], the offset
    ``x - xp[j]`` and the spacing ``xp[j+1] - xp[j]``, so ``y[j] + (y[j+1]-y[j]) / spacing * offset`` is
    np.interp's own formula (a point on a grid node gets offset 0, hence y[j] exactly)."""
    xp, x = np.linspace(0, 1, n_in), np.linspace(0, 1, n_out)
    j = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, n_in - 2)
    return j, x - xp[j], xp[j + 1] - xp[j]


class Mnist1dTransform:
    """Batched mnist1d transform for ``args`` (mnist1d's dataset args) and ``templates`` (get_templates()),
    computing in ``dtype`` (the tables are built in float64 either way); outputs ``(signal - mean) / std``
    (the defaults give mnist1d's raw signals)."""

    def __init__(self, args, templates: dict, eps: float = 1e-8, dtype: torch.dtype = torch.float32,
                 mean: float = 0.0, std: float = 1.0):
        from scipy.ndimage import gaussian_filter
        self.args = args
        lo, hi = args.padding
        self.length = n = args.template_len + hi
        # every (template, padding, translation) signal before scaling and noise: [10 * P * T, L]
        t = torch.as_tensor(templates["x"], dtype=torch.float64) + eps
        padded = torch.zeros(len(t), n, dtype=torch.float64)
        padded[:, :t.shape[1]] = t  # zeros beyond a padded length are never read
        shifts = (torch.arange(n) - torch.arange(args.max_translation).unsqueeze(1)) % n  # [T, L]: x[-k:]+x[:-k]
        rows = []
        for p in range(lo, hi + 1):
            j, off, dx = (torch.as_tensor(a) for a in _interp_table(args.template_len + p, n))
            dilated = (padded[:, j + 1] - padded[:, j]) / dx * off + padded[:, j]  # np.interp's formula
            rows.append(dilated[:, shifts])  # [10, T, L]
        signals = torch.stack(rows, 1).reshape(-1, n)
        # where mnist1d puts correlated noise, as 1/0 (exact: decided in float64, before scaling)
        self.quiet = (signals == 0).to(dtype)
        self.n_pad, self.n_shift = hi - lo + 1, args.max_translation
        filt = np.stack([gaussian_filter(e, 2) for e in np.eye(n)])  # row i: the filter of e_i
        self.filt = torch.as_tensor(args.corr_noise_scale * filt, dtype=dtype)
        j, off, dx = _interp_table(n, args.final_seq_length)
        w = torch.zeros(n, args.final_seq_length, dtype=torch.float64)
        cols = torch.arange(args.final_seq_length)
        w[j, cols], w[j + 1, cols] = torch.as_tensor(1 - off / dx), torch.as_tensor(off / dx)
        # the last interpolation is linear, so the signal and shear parts are interpolated once, here
        ramp_out = torch.linspace(-0.5, 0.5, n, dtype=torch.float64) @ w / std
        self.clean = (signals @ w / std).to(dtype)  # [rows, final]
        self.shear_out = (-args.shear_scale * ramp_out).to(dtype)  # times the shear's uniform draw
        self.offset = (0.5 * args.shear_scale * ramp_out - mean / std).to(dtype)
        self.subsample = (w / std).to(dtype)  # [L, final]: the last linear interpolation (and 1/std) as a matrix

    def __call__(self, labels: torch.Tensor, d: Mnist1dDraws) -> torch.Tensor:
        """Signals [N, final_seq_length] for template ``labels`` [N] and draws ``d``."""
        a = self.args
        row = ((labels * self.n_pad + d.pad) * self.n_shift + d.shift).sub_(a.padding[0] * self.n_shift)
        noise = (d.corr @ self.filt).mul_(self.quiet.index_select(0, row))  # [N, L]
        noise.add_(d.iid, alpha=a.iid_noise_scale)
        scale = (d.scale_u * a.scale_coeff).add_(1 - 0.5 * a.scale_coeff).unsqueeze(1)  # 1 + c (u - 1/2)
        clean = self.clean.index_select(0, row).mul_(scale).addr_(d.shear_u, self.shear_out).add_(self.offset)
        return torch.addmm(clean, noise, self.subsample)
