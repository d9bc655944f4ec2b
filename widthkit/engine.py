"""The ensemble engine: E members of one architecture trained as one stacked computation.

Members' parameters are stacked along a leading member axis (``torch.func.
stack_module_state``) and the forward pass is ``vmap(functional_call(...))``, so one
call runs every member on its own minibatch.  Because members are independent, the
gradient of the *sum* of member losses gives every member its own exact gradient.
The optimizers (SGD with momentum/Nesterov, Adam, AdamW) are written functionally on
the stacked tensors and follow ``torch.optim``'s update formulas, so a vectorized run
matches members trained one by one with ``torch.optim`` up to float rounding.

Members may differ in their hyper-parameters (a packed sweep): learning rate, weight
decay, per-parameter lr scales and Adam epsilons (which carry the output multiplier of
muP).  Such a quantity is one float when every member agrees (the fast path) and a
tensor [E] otherwise, broadcast over each stacked parameter's member axis.

A member whose loss becomes NaN or inf is marked diverged at that step and its loss
leaves the total; the others are untouched (their gradients never mix with it).  Divergence is
tracked on the device, with no host synchronization inside the step loop.

Dropout masks come from one random stream per member (a generator seeded from the
member's ``noise_seeds`` entry and the step), drawn outside vmap and fed in like buffers,
so a member's masks do not depend on which members it is trained with.  Any other random
operation in the forward (e.g. stochastic depth) cannot be kept per member and raises.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .centered import centered_plan, split_centered
from .errors import WidthkitError
from .recipe import OptimSpec
from .seeds import derive_seed


def member_losses(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-member mean loss over the batch: out [E,B,K], y [E,B] (labels) or [E,B,K].

    ``mse`` is 0.5 * sum_k (f_k - y_k)^2 averaged over examples (labels become one-hot).
    ``xent`` is the softmax cross-entropy averaged over examples, taken over the class axis of [E,K,B]
    (on CPU its kernels run 5x faster there than over the last axis of [E*B,K], whatever out's memory layout).
    """
    E, B, K = out.shape
    if loss == "xent":
        return F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)
    target = F.one_hot(y, K).to(out.dtype) if y.dtype == torch.int64 else y.to(out.dtype).view(E, B, K)
    return 0.5 * (out - target).pow(2).sum(-1).mean(1)


def lr_at(step: int, spec: OptimSpec, total: int) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then constant, cosine or linear decay."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return spec.lr
    t = (step - spec.warmup_steps) / max(total - spec.warmup_steps, 1)
    if spec.schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    return spec.lr * max(1.0 - t, 0.0)


_DROPOUTS = {nn.Dropout: False, nn.Dropout1d: True, nn.Dropout2d: True, nn.Dropout3d: True}  # -> per channel


class MemberDropout(nn.Module):
    """Dropout with given masks: stands in for ``nn.Dropout``/``DropoutNd`` in the ensemble's vmapped forward.

    ``mask`` (one flat tensor per member, fed through vmap like a buffer) holds the member's
    already scaled keep-masks for every call of this module in one forward, in call order;
    with no ``mask`` a training forward only records the sizes it needs (``sizes``).
    """

    def __init__(self, p: float, channelwise: bool):
        super().__init__()
        self.p, self.channelwise = float(p), channelwise
        self.register_buffer("mask", None, persistent=False)
        self.sizes: list[int] = []
        self.offset = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (*x.shape[:2], *[1] * (x.dim() - 2)) if self.channelwise else x.shape
        n = math.prod(shape)
        if self.mask is None:
            self.sizes.append(n)
            return x
        m = self.mask[self.offset:self.offset + n].reshape(shape)
        self.offset += n
        return x * m.to(x.dtype)


def _member_dropouts(template: nn.Module) -> tuple[nn.Module, dict[str, MemberDropout]]:
    """A copy of ``template`` whose dropout modules are :class:`MemberDropout`, and those by name."""
    names = [n for n, m in template.named_modules() if type(m) in _DROPOUTS and m.p > 0]
    if not names:
        return template, {}
    net = copy.deepcopy(template)
    found = {}
    for name in names:
        parent, _, leaf = name.rpartition(".")
        old = net.get_submodule(name)
        found[name] = MemberDropout(old.p, _DROPOUTS[type(old)])
        setattr(net.get_submodule(parent) if parent else net, leaf, found[name])
    return net, found


PackedScalar = float | torch.Tensor  # one value for all members, or one per member [E] (float64)

PER_MEMBER_OPTIM = ("lr", "weight_decay")  # optimizer fields the members of one group may differ in


def _per_member(values: list[float], device: torch.device) -> PackedScalar:
    """One float when every member has the same value, else a float64 tensor [E].

    Per-member values stay in double precision, as python floats do, and are rounded to the parameters'
    dtype only where they are applied (:func:`_rows`), so a packed member computes the same numbers as a
    member trained alone.
    """
    return float(values[0]) if len(set(values)) == 1 else torch.tensor(values, dtype=torch.float64, device=device)


def _rows(table: torch.Tensor, likes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Row i of ``table`` [len(likes), E] (float64), rounded to ``likes[i]``'s dtype once and shaped [E, 1, ...]
    to broadcast over the stacked parameter ``likes[i]`` [E, ...]."""
    rows = table.to(likes[0].dtype).unbind(0)
    return [r.view(-1, *[1] * (like.dim() - 1)) for r, like in zip(rows, likes)]


def _member_view(a: PackedScalar, like: torch.Tensor) -> torch.Tensor:
    """``a`` in ``like``'s dtype, shaped to broadcast over a stacked parameter [E, ...]."""
    if isinstance(a, float):
        return like.new_tensor(a).view([1] * like.dim())
    return a.to(like.dtype).view(-1, *[1] * (like.dim() - 1))


def _each(a: PackedScalar, n: int) -> list[float] | torch.Tensor:
    """``a`` for each of ``n`` tensors: n floats, or a table [n, E]."""
    return [a] * n if isinstance(a, float) else a.expand(n, -1)


def _axpy(ys: list[torch.Tensor], xs: list[torch.Tensor], alphas: list[float] | torch.Tensor, inplace: bool = True):
    """``ys[i] + alphas[i] * xs[i]`` for every tensor (in place, or as a new list); ``alphas`` are floats, or
    one per member, a float64 table [len(ys), E]."""
    if isinstance(alphas, torch.Tensor):
        views = _rows(alphas, ys)
        if inplace:
            torch._foreach_addcmul_(ys, xs, views)
            return ys
        return torch._foreach_addcmul(ys, xs, views)
    if not inplace:
        if len(set(alphas)) == 1:
            return torch._foreach_add(ys, xs, alpha=alphas[0])
        ys = [y.clone() for y in ys]
    for r in set(alphas):  # one fused update per distinct value (no scaled copy of xs)
        sel = [j for j, v in enumerate(alphas) if v == r]
        torch._foreach_add_([ys[j] for j in sel], [xs[j] for j in sel], alpha=r)
    return ys


class Ensemble:
    """E members of one architecture, stacked, with a functional optimizer.

    ``members`` are initialized ``nn.Module`` s of identical architecture; ``lr_scales``
    maps parameter names to per-parameter learning-rate multipliers and ``eps_scales`` to
    Adam epsilon multipliers (default 1), either one mapping for all members or a list with
    one per member.  ``optim`` is one :class:`OptimSpec` or a list with one per member; a
    list may differ only in :data:`PER_MEMBER_OPTIM` fields.  ``noise_seeds``
    (default ``0..E-1``) name each member's random stream: its dropout masks at step t
    are drawn from a generator seeded with ``derive_seed(noise_seeds[i], t)``.
    ``channels_last`` stores conv feature maps NHWC on the batched path (``conv_layouts`` lists the
    layouts worth timing for this architecture).
    """

    def __init__(self, members: list[nn.Module], lr_scales: dict[str, float] | list[dict[str, float]],
                 optim: OptimSpec | list[OptimSpec], loss: str, device: torch.device | str = "cpu",
                 autocast_dtype: torch.dtype | None = None, noise_seeds: list[int] | None = None,
                 eps_scales: dict[str, float] | list[dict[str, float]] | None = None, channels_last: bool = False):
        self.device = torch.device(device)
        self.channels_last = channels_last  # conv feature maps NHWC in the batched plan
        self.template = copy.deepcopy(members[0]).to("meta")
        self._net, self._dropouts = _member_dropouts(self.template)
        self.noise_seeds = list(range(len(members))) if noise_seeds is None else list(noise_seeds)
        if len(self.noise_seeds) != len(members):
            raise WidthkitError(f"noise_seeds has {len(self.noise_seeds)} entries for {len(members)} members; "
                                "give one per member")
        self._generators = [torch.Generator(self.device) for _ in members] if self._dropouts else []
        self._mask_sizes: dict[tuple, list[list[int]]] = {}
        params, buffers = stack_module_state([m.to(self.device) for m in members])
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        self.names = list(self.params)
        self.size = len(members)
        optims = optim if isinstance(optim, list) else [optim] * len(members)
        self.optim = optims[0]
        shared = {f.name for f in dataclasses.fields(OptimSpec)} - set(PER_MEMBER_OPTIM)
        if len(optims) != len(members) or any({k: getattr(o, k) for k in shared} !=
                                               {k: getattr(self.optim, k) for k in shared} for o in optims):
            raise WidthkitError(f"a group's {len(optims)} optimizer specs must be one per member ({len(members)}) "
                                f"and differ only in {', '.join(PER_MEMBER_OPTIM)}; train the others as separate jobs")
        self.member_optim = optims
        self._peaks = {o.lr: o for o in optims}  # one spec per peak lr: the schedule is the same for the rest
        self._last_lrs: tuple[list[float], PackedScalar] = ([], 0.0)  # member_lrs' last answer
        self.weight_decay = _per_member([o.weight_decay for o in optims], self.device)
        self.scales = self._per_param(lr_scales)
        self._scale_table = torch.stack([torch.as_tensor(s, dtype=torch.float64, device=self.device)
                                         .expand(self.size) for s in self.scales])  # [P, E]
        self._shared_scales = all(isinstance(s, float) for s in self.scales)
        self.eps = [e * self.optim.eps for e in self._per_param(eps_scales or {})]
        self.loss = loss
        self.autocast_dtype = autocast_dtype
        self.alive = torch.ones(self.size, dtype=torch.bool, device=self.device)
        self.diverged_step = torch.full((self.size,), -1, dtype=torch.int64, device=self.device)
        self.t = 0  # optimizer steps taken
        zeros = lambda: [torch.zeros_like(p) for p in self.params.values()]  # noqa: E731
        self.state: dict[str, list[torch.Tensor]] = {}
        if self.optim.name == "sgd" and self.optim.momentum > 0:
            self.state["momentum"] = zeros()
        elif self.optim.name in ("adam", "adamw"):
            self.state["exp_avg"], self.state["exp_avg_sq"] = zeros(), zeros()
        self._plan = _sequential_plan(self.template) if not self.buffers else None
        self._centered = centered_plan(self.template, self.buffers, _sequential_plan)
        plan = self._plan or self._centered or []
        self.conv_layouts = [False, True] if any(k == "conv" for k, _ in plan) else [False]  # NHWC?
        self._vforward = vmap(self._forward_one, in_dims=(0, 0, 0), randomness="error")
        self._step = self._train_step  # or its compiled version (widthkit.compiled)

    def _per_param(self, scales: dict[str, float] | list[dict[str, float]]) -> list[PackedScalar]:
        """Per parameter (in ``self.names`` order): its multiplier, a float or one per member [E]."""
        per = scales if isinstance(scales, list) else [scales] * self.size
        if len(per) != self.size:
            raise WidthkitError(f"got {len(per)} scale tables for {self.size} members; give one, or one per member")
        return [_per_member([float(d.get(n, 1.0)) for d in per], self.device) for n in self.names]

    def member_lrs(self, step: int, total: int) -> PackedScalar:
        """Every member's learning rate at ``step`` (its own spec through :func:`lr_at`, so the same double
        as a member trained alone): a float when they agree, else float64 [E]."""
        at = {peak: lr_at(step, o, total) for peak, o in self._peaks.items()}
        lrs = [at[o.lr] for o in self.member_optim]
        if lrs != self._last_lrs[0]:  # a constant schedule builds its tensor once
            self._last_lrs = (lrs, _per_member(lrs, self.device))
        return self._last_lrs[1]

    def _param_lrs(self, lr: PackedScalar, idx: list[int], table: bool = False) -> list[float] | torch.Tensor:
        """Learning rate times lr scale for parameters ``idx``: floats when the members share them (and not
        ``table``), else a float64 table [len(idx), E]."""
        if not isinstance(lr, torch.Tensor) and self._shared_scales and not table:
            return [lr * self.scales[i] for i in idx]
        table = self._scale_table if len(idx) == len(self.names) else self._scale_table[idx]
        return table * lr

    # -------------------------------------------------------------- forward
    def _forward_one(self, params, buffers, x):
        return functional_call(self._net, (params, buffers), (x,))

    def forward(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Outputs [E, B, K] for per-member inputs x [E, B, ...]."""
        ctx = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with ctx:
            if self._plan is not None:
                return _run_plan(self._plan, self.params, x, self.channels_last)
            if self._centered is not None:  # f - f0: the net's plan on the parameters, then on the frozen copy
                net, init = split_centered(self.params, self.buffers)
                return (_run_plan(self._centered, net, x, self.channels_last)
                        - _run_plan(self._centered, init, x, self.channels_last))
            self._net.train(train)  # (the plans hold no mode-dependent modules)
            buffers = {**self.buffers, **self._masks(x)} if train and self._dropouts else self.buffers
            for m in self._dropouts.values():
                m.offset = 0
            try:
                return self._vforward(self.params, buffers, x)
            except RuntimeError as e:
                if "randomness" not in str(e):
                    raise
                raise WidthkitError(f"{type(self.template).__name__} draws random numbers outside nn.Dropout "
                                    "modules (e.g. stochastic depth or fused attention dropout), which ensemble "
                                    "members cannot keep to themselves; set those rates to 0 or use nn.Dropout") \
                    from None

    def _masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every dropout module's scaled keep-masks for this step, [E, n], from each member's own stream."""
        key = tuple(x.shape[1:])
        if key not in self._mask_sizes:  # one member's forward (on copies of its buffers) tells the sizes
            for m in self._dropouts.values():
                m.sizes = []
            with torch.no_grad():
                functional_call(self._net, ({k: v[0] for k, v in self.params.items()},
                                            {k: v[0].clone() for k, v in self.buffers.items()}), (x[0],))
            self._mask_sizes[key] = [m.sizes for m in self._dropouts.values()]
        sizes = self._mask_sizes[key]
        total = sum(sum(s) for s in sizes)
        draws = torch.stack([torch.rand(total, device=self.device, generator=g.manual_seed(derive_seed(seed, self.t)))
                             for g, seed in zip(self._generators, self.noise_seeds)])
        out, start = {}, 0
        for (name, m), n in zip(self._dropouts.items(), sizes):
            u = draws[:, start:start + sum(n)]
            start += sum(n)
            out[f"{name}.mask"] = (u >= m.p).float() / (1.0 - m.p) if m.p < 1 else torch.zeros_like(u)
        return out

    def member_forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``i`` alone, in eval mode, through the plain module code path.

        This is exactly what :meth:`member` returns as an ``nn.Module`` computes, so
        stored evaluation outputs equal those of an extracted member bit for bit.
        """
        self.template.eval()
        with torch.no_grad():
            return functional_call(self.template, ({k: v[i] for k, v in self.params.items()},
                                                   {k: v[i] for k, v in self.buffers.items()}), (x,))

    # ------------------------------------------------------------- training
    def step(self, x: torch.Tensor, y: torch.Tensor, lr: PackedScalar) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step for every member on its own batch x [E,B,...], y [E,B(,K)].

        ``lr`` is one learning rate for all members or one per member [E] (see :meth:`member_lrs`).

        Returns per-member minibatch losses and accuracies [E] (detached, on device;
        accuracy is 0 for regression targets).
        """
        t = self.t + 1  # self.t (steps taken) seeds this step's dropout masks, so it moves on afterwards
        b1, b2 = self.optim.betas
        corr = (1 - b1 ** t, math.sqrt(1 - b2 ** t))  # Adam's bias corrections, in double precision
        if self._step == self._train_step:
            out = self._train_step(x, y, lr, t, corr)
        else:  # compiled (widthkit.compiled): the changing scalars enter as tensors, one graph serves every step
            scalar = lambda v: torch.as_tensor(v, dtype=torch.float32, device=self.device)  # noqa: E731
            out = self._step(x, y, scalar(lr), torch.tensor(t, device=self.device), tuple(map(scalar, corr)))
        self.t = t
        return out

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, lr: PackedScalar, t: int | torch.Tensor,
                    corr: tuple[PackedScalar, PackedScalar]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole step (what :mod:`widthkit.compiled` compiles): forward, loss, divergence bookkeeping,
        backward and the optimizer update, as optimizer step ``t`` (1-based) with Adam's bias corrections
        ``corr`` = (1 - beta1^t, sqrt(1 - beta2^t))."""
        losses, correct = self._forward_losses(x, y)
        finite = torch.isfinite(losses)
        self.diverged_step = self.diverged_step.masked_fill(self.alive & ~finite, t - 1)
        self.alive = self.alive & finite
        total = torch.where(self.alive, losses, torch.zeros_like(losses)).sum()
        grads = torch.autograd.grad(total, list(self.params.values()), allow_unused=True)
        self._update(grads, lr, corr)
        return losses.detach(), correct

    def _forward_losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member training losses [E] (float32, differentiable) and accuracies [E]."""
        out = self.forward(x, train=True)
        losses = member_losses(out.float(), y, self.loss)
        with torch.no_grad():
            correct = (out.max(-1).indices == y).float().mean(1) if y.dtype == torch.int64 else torch.zeros_like(losses)
        return losses, correct

    @torch.no_grad()
    def _update(self, grads, lr: PackedScalar, corr: tuple[PackedScalar, PackedScalar]) -> None:
        """One step of the optimizer on every stacked tensor, following ``torch.optim``.

        Members are independent, so a diverged member's NaN gradients only touch its
        own slices; no per-member masking is needed for the others to stay exact.
        Per-member values (lr, weight decay, scales, epsilons) multiply each member's slice.
        ``corr``: Adam's bias corrections (see :meth:`_train_step`).
        """
        o = self.optim
        wd = self.weight_decay
        idx = [i for i, g in enumerate(grads) if g is not None]
        values = list(self.params.values())
        params = [values[i] for i in idx]
        g = [grads[i] for i in idx]
        plr = self._param_lrs(lr, idx, table=o.name == "adamw" and isinstance(wd, torch.Tensor))
        decay = isinstance(wd, torch.Tensor) or wd != 0
        if o.name == "sgd":
            if decay:
                g = _axpy(g, params, _each(wd, len(g)), inplace=False)
            if o.momentum > 0:
                bufs = [self.state["momentum"][i] for i in idx]  # zeros at first: momentum * 0 + g is g exactly
                torch._foreach_mul_(bufs, o.momentum)
                torch._foreach_add_(bufs, g)
                g = torch._foreach_add(g, bufs, alpha=o.momentum) if o.nesterov else bufs
            _axpy(params, g, [-r for r in plr] if isinstance(plr, list) else -plr)
            return
        b1, b2 = o.betas
        if o.name == "adamw" and decay:
            if isinstance(plr, list):
                torch._foreach_mul_(params, [1.0 - r * wd for r in plr])
            else:  # 1 - lr * wd in double precision, rounded once, as for floats
                torch._foreach_mul_(params, _rows(1.0 - plr * wd, params))
        elif decay:
            g = _axpy(g, params, _each(wd, len(g)), inplace=False)
        m = [self.state["exp_avg"][i] for i in idx]
        v = [self.state["exp_avg_sq"][i] for i in idx]
        torch._foreach_lerp_(m, g, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)
        bc1, bc2_sqrt = corr
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        eps = [self.eps[i] for i in idx]
        if all(isinstance(e, float) for e in eps):
            torch._foreach_add_(denom, eps)
        else:
            torch._foreach_add_(denom, [_member_view(e, d) for e, d in zip(eps, denom)])
        if isinstance(plr, list):
            torch._foreach_addcdiv_(params, m, denom, [-r / bc1 for r in plr])
        else:  # p + (s * m) / d, addcdiv's own order, with each member's step s: what a member alone computes
            torch._foreach_addcdiv_(params, torch._foreach_mul(m, _rows(plr / -bc1, m)), denom)

    # ---------------------------------------------------------- extraction
    def member(self, i: int) -> nn.Module:
        """Member ``i`` as a plain ``nn.Module`` (eval mode) with identical outputs."""
        m = copy.deepcopy(self.template).to_empty(device=self.device)
        m.load_state_dict(self.member_state(i))
        return m.eval()

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member ``i``'s ``state_dict`` (parameters and buffers)."""
        sd = {k: v[i].detach().clone() for k, v in self.params.items()}
        sd.update({k: v[i].clone() for k, v in self.buffers.items()})
        return sd

    # --------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"params": {k: v.detach() for k, v in self.params.items()}, "buffers": self.buffers,
                "state": self.state, "alive": self.alive, "diverged_step": self.diverged_step, "t": self.t}

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for k, v in sd["params"].items():
                self.params[k].copy_(v)
            for k, v in sd["buffers"].items():
                self.buffers[k].copy_(v)
            for k, lst in sd["state"].items():
                for dst, src in zip(self.state[k], lst):
                    dst.copy_(src)
        self.alive = sd["alive"].to(self.device)
        self.diverged_step = sd["diverged_step"].to(self.device)
        self.t = int(sd["t"])


# ------------------------------------------------------------------ fast path
_ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Identity, nn.LeakyReLU, nn.ELU)
_PER_CHANNEL = (nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_POOLS_1D = (nn.AvgPool1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
_CONVS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


def _sequential_plan(template: nn.Module):
    """A batched plan for ``nn.Sequential`` models of [Conv/pool/elementwise ->] Flatten -> Linear/elementwise.

    Custom activation modules opt in with a class attribute ``elementwise = True``.

    Such models (the MLP, conv1d and buffer-free Myrtle families) skip vmap's per-op dispatch: each Linear
    becomes one ``baddbmm`` over the member axis and each Conv one grouped convolution with the members as
    groups (the packed-ensembles layout).  Returns None for any other architecture (a Flatten after the first
    Linear, a conv or pool after the Flatten, a non-zero padding mode).
    """
    if not isinstance(template, nn.Sequential):
        return None
    plan = []
    convs = flat = False  # seen a conv; past the Flatten or first Linear (no more convs or pools)
    for name, mod in template.named_children():
        if isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
            if flat:
                return None
            plan.append(("unpack_members" if convs else "flatten", None))
            flat = True
        elif type(mod) is nn.Linear and (flat or not convs):
            plan.append(("linear", name))
            flat = True
        elif type(mod) in _CONVS and mod.padding_mode == "zeros" and not flat:
            plan.append(("conv", (name, mod)))
            convs = True
        elif isinstance(mod, _PER_CHANNEL) and convs and not flat:
            plan.append(("apply", mod))
        elif isinstance(mod, _ELEMENTWISE) or getattr(mod, "elementwise", False):
            plan.append(("apply", mod))
        else:
            return None
    if convs and not flat:
        return None
    if convs:
        in_shape = getattr(template, "in_shape", None)
        plan.insert(0, ("members_as_channels", tuple(in_shape) if in_shape else None))
    return plan


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient NHWC: the gradients of the global pool and of the Flatten come
    back NCHW, and an elementwise backward (ReLU's) on an NCHW gradient and an NHWC feature map is ~30x slower."""

    @staticmethod
    def forward(ctx, h):
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


def _run_plan(plan, params: dict[str, torch.Tensor], x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Run the plan on x [E, B, ...]; returns [E, B, K].

    Conv stages keep the members in the channel axis, h [B, E*C, *spatial] (member-major channels), so each
    conv is one ``groups=E`` convolution and pools act per channel; ``channels_last`` stores feature maps NHWC,
    1-D ones as 2-D maps of height 1 (faster or slower depending on width and device: the probe measures both).  At the Flatten each member's features
    become a column block, h^T [E, features, B]: feature-major, where each layer is ``W @ h^T``, whose weight
    gradient ``grad @ h`` comes out contiguous in W's own layout; with ``h @ W^T`` it would be a transposed
    view, and the optimizer's elementwise updates on it run several times slower for wide layers.
    """
    E, B = x.shape[:2]
    h = x.reshape(E, B, -1).transpose(1, 2)
    for i, (kind, arg) in enumerate(plan):
        after_conv = i > 0 and plan[i - 1][0] == "conv"
        if kind == "members_as_channels":
            h = x.reshape(E, B, *arg) if arg else x
            h = h.transpose(0, 1).reshape(B, E * h.shape[2], *h.shape[3:])
            if channels_last:  # NHWC; 1-D maps as 2-D ones of height 1 (their convs run 1.5x faster on CPU)
                h = (h.unsqueeze(2) if h.dim() == 3 else h).contiguous(memory_format=torch.channels_last)
        elif kind == "conv":
            name, mod = arg
            w = params[f"{name}.weight"]
            w = w.reshape(-1, *w.shape[2:])
            b = params.get(f"{name}.bias")
            b = None if b is None else b.reshape(-1)
            if h.dim() == 4 and isinstance(mod, nn.Conv1d):  # on a height-1 NHWC map
                pad = mod.padding if isinstance(mod.padding, str) else (0, *mod.padding)
                h = F.conv2d(h, w.unsqueeze(2), b, (1, *mod.stride), pad, (1, *mod.dilation), E * mod.groups)
            else:
                h = _CONVS[type(mod)](h, w, b, mod.stride, mod.padding, mod.dilation, E * mod.groups)
        elif kind == "apply" and after_conv and type(arg) is nn.ReLU:  # a conv's output is not saved: reuse it
            h = torch.relu_(h)
        elif kind == "apply" and h.dim() == 4 and isinstance(arg, _PER_CHANNEL):
            h = _ChannelsLastGrad.apply(h) if channels_last else h
            h = arg(h.squeeze(2)) if isinstance(arg, _POOLS_1D) else arg(h)
        elif kind == "unpack_members":  # the Flatten after the conv stages
            h = _ChannelsLastGrad.apply(h) if channels_last and h.dim() == 4 else h
            h = h.reshape(B, E, -1).permute(1, 2, 0)
        elif kind == "linear":
            w = params[f"{arg}.weight"]
            b = params.get(f"{arg}.bias")
            h = torch.bmm(w, h) if b is None else torch.baddbmm(b.unsqueeze(2), w, h)
        elif kind == "apply":
            h = arg(h)
    return h.transpose(1, 2)
