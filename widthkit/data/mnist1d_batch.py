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
filter as an ``L x L`` matrix (scipy's ``gaussian_filter`` applied to the identity), and the shear ramp.  So
the results agree with ``transform`` to float rounding (``tests/test_data.py``), at ~100x its speed.
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
        lo, hi = args.padding
        length = args.template_len + hi
        u = torch.rand(3, n, generator=generator)
        shift = torch.randint(args.max_translation, (n,), generator=generator)
        noise = torch.randn(2, n, length, generator=generator)
        return Mnist1dDraws(lo + (u[0] * (hi - lo + 1)).long(), u[1], shift, noise[0], noise[1], u[2])


def _interp_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.interp`` from ``linspace(0,1,n_in)`` to ``linspace(0,1,n_out)``: left index j [n_out], the offset
    ``x - xp[j]`` and the spacing ``xp[j+1] - xp[j]``, so ``y[j] + (y[j+1]-y[j]) / spacing * offset`` is
    np.interp's own formula (a point on a grid node gets offset 0, hence y[j] exactly)."""
    xp, x = np.linspace(0, 1, n_in), np.linspace(0, 1, n_out)
    j = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, n_in - 2)
    return j, x - xp[j], xp[j + 1] - xp[j]


class Mnist1dTransform:
    """Batched mnist1d transform for ``args`` (mnist1d's dataset args) and ``templates`` (get_templates()),
    computing in ``dtype`` (the tables are built in float64 either way)."""

    def __init__(self, args, templates: dict, eps: float = 1e-8, dtype: torch.dtype = torch.float32):
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
        self.quiet = signals == 0  # where mnist1d puts correlated noise (exact: decided in float64, before scaling)
        self.signals = signals.to(dtype)
        self.n_pad, self.n_shift = hi - lo + 1, args.max_translation
        filt = np.stack([gaussian_filter(e, 2) for e in np.eye(n)])  # row i: the filter of e_i
        self.filt = torch.as_tensor(args.corr_noise_scale * filt, dtype=dtype)
        self.ramp = torch.as_tensor(np.linspace(-0.5, 0.5, n), dtype=dtype)
        j, off, dx = _interp_table(n, args.final_seq_length)
        w = np.zeros((n, args.final_seq_length))
        cols = np.arange(args.final_seq_length)
        w[j, cols], w[j + 1, cols] = 1 - off / dx, off / dx
        self.subsample = torch.as_tensor(w, dtype=dtype)  # [L, final]: the last linear interpolation as a matrix

    def __call__(self, labels: torch.Tensor, d: Mnist1dDraws) -> torch.Tensor:
        """Signals [N, final_seq_length] (unnormalized) for template ``labels`` [N] and draws ``d``."""
        a = self.args
        row = (labels * self.n_pad + d.pad - a.padding[0]) * self.n_shift + d.shift
        scale = (1 + a.scale_coeff * (d.scale_u - 0.5)).unsqueeze(1)
        x = torch.where(self.quiet[row], d.corr @ self.filt, self.signals[row] * scale)
        x = x + a.iid_noise_scale * d.iid - (a.shear_scale * (d.shear_u - 0.5)).unsqueeze(1) * self.ramp
        return x @ self.subsample
