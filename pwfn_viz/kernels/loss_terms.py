"""The loss terms of fused sampling: the sigma regulariser and the masked weight decay over the
tensors of a whole model.

:func:`fused_regulariser` ``= (lam / 2) * sum |eps| * max(0, cap - sigma)^2`` and
:func:`fused_weight_decay` ``= (wd / 2) * sum mu^2`` (sums over free, i.e. unfixed, weights;
docs/method.md, section 3): one reduction kernel per tensor and one sum for the value, no elementwise
autograd graph. Their backward computes ``-lam * G * max(0, cap - sigma) * |eps|`` (eps
regenerated from the pass's seed) and ``wd * G * mu`` on free weights, ``G`` being the gradient
that reaches the term (1, a ``GradScaler``'s scale, ``1 / accumulation steps``...). ``pwfn_viz.core.loss_terms.sigma_regulariser`` and
``masked_weight_decay`` call these for the tensors sampled by the fused kernel.
"""
from __future__ import annotations

import functools

import torch

from .sampling import BLOCK, _as_bytes, _grid, _tk


def _result_dtype(tensors) -> torch.dtype:
    """The dtype the torch path's sum would have (float32 for float32 tensors)."""
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else functools.reduce(torch.promote_types, dtypes)


def _block_sums(tensors, launch) -> torch.Tensor:
    """One float32 buffer of per-block partial sums for all tensors (``launch(i, grid, out)``
    fills tensor i's slice); the caller sums it once."""
    blocks = [_grid(t.numel())[0] for t in tensors]
    partial = torch.empty(sum(blocks), dtype=torch.float32, device=tensors[0].device)
    start = 0
    for i, b in enumerate(blocks):
        launch(i, (b,), partial[start:start + b])
        start += b
    return partial


class _FusedRegulariser(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam, cap, noises, fixeds, *sigmas):
        tk = _tk()

        def launch(i, grid, out):
            lay = noises[i].layout
            tk.regulariser_sum_kernel[grid](lay.put(sigmas[i]), _as_bytes(lay.put(fixeds[i])), noises[i].seed,
                                            out, sigmas[i].numel(), float(cap), float(lam) / 2, BLOCK=BLOCK)
        partial = _block_sums(sigmas, launch)
        ctx.save_for_backward(*sigmas)
        ctx.lam, ctx.cap, ctx.noises, ctx.fixeds = float(lam), float(cap), noises, fixeds
        return partial.sum().to(_result_dtype(sigmas))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grads = []
        for i, (sigma, fixed, noise) in enumerate(zip(ctx.saved_tensors, ctx.fixeds, ctx.noises)):
            if not ctx.needs_input_grad[4 + i]:
                grads.append(None)
                continue
            lay = noise.layout
            out = lay.empty(sigma.dtype, sigma.device)
            _tk().regulariser_grad_kernel[_grid(sigma.numel())](
                lay.put(sigma), _as_bytes(lay.put(fixed)), noise.seed, grad.reshape(1), out, sigma.numel(),
                ctx.cap, ctx.lam, BLOCK=BLOCK)
            grads.append(out)
        return (None, None, None, None, *grads)


class _FusedDecay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight_decay, noises, fixeds, *mus):
        tk = _tk()

        def launch(i, grid, out):
            lay = noises[i].layout
            tk.decay_sum_kernel[grid](lay.put(mus[i]), _as_bytes(lay.put(fixeds[i])), out, mus[i].numel(),
                                      float(weight_decay) / 2, BLOCK=BLOCK)
        partial = _block_sums(mus, launch)
        ctx.save_for_backward(*mus)
        ctx.wd, ctx.noises, ctx.fixeds = float(weight_decay), noises, fixeds
        return partial.sum().to(_result_dtype(mus))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grads = []
        for i, (mu, fixed, noise) in enumerate(zip(ctx.saved_tensors, ctx.fixeds, ctx.noises)):
            if not ctx.needs_input_grad[3 + i]:
                grads.append(None)
                continue
            lay = noise.layout   # the gradient in mu's layout, like the sampling backward's
            out = torch.mul(lay.put(mu), grad * ctx.wd, out=lay.empty(mu.dtype, mu.device))
            grads.append(out.masked_fill_(lay.put(fixed), 0))
        return (None, None, None, *grads)


def _check_terms(name: str, tensors, fixeds, noises) -> None:
    if not tensors or not len(tensors) == len(fixeds) == len(noises):
        raise ValueError(f"{name} needs one fixed mask and one FusedNoise per tensor (and at least one "
                         f"tensor); got {len(tensors)} tensors, {len(fixeds)} masks, {len(noises)} noises")
    for t, f, n in zip(tensors, fixeds, noises):
        if not t.numel() == f.numel() == n.numel or t.device != tensors[0].device:
            raise ValueError(f"{name}: a tensor of {t.numel()} entries on {t.device} does not match its "
                             f"mask ({f.numel()}), its noise ({n.numel}) or the first tensor's device "
                             f"({tensors[0].device}); call it once per device")


def fused_regulariser(sigmas, fixeds, noises, lam: float, cap: float) -> torch.Tensor:
    """``(lam / 2) * sum |eps| * max(0, cap - sigma)^2`` over the free weights of all ``sigmas``
    (one device), each with its pass's :class:`FusedNoise`; differentiable in the sigmas."""
    sigmas, fixeds, noises = tuple(sigmas), tuple(fixeds), tuple(noises)
    _check_terms("fused_regulariser", sigmas, fixeds, noises)
    return _FusedRegulariser.apply(float(lam), float(cap), noises, fixeds, *sigmas)


def fused_weight_decay(mus, fixeds, noises, weight_decay: float) -> torch.Tensor:
    """``(wd / 2) * sum mu^2`` over the free weights of all ``mus`` (one device); differentiable
    in the mus, gradient ``wd * mu`` on free weights."""
    mus, fixeds, noises = tuple(mus), tuple(fixeds), tuple(noises)
    _check_terms("fused_weight_decay", mus, fixeds, noises)
    return _FusedDecay.apply(float(weight_decay), noises, fixeds, *mus)
