"""Fused reparameterised sampling of a converted tensor: one kernel forward, one backward.

The torch path (``pwfn_viz.bayes._sample_hook``) draws ``eps`` with ``randn_like``, keeps it for
the regulariser and builds ``w`` from five separate tensor operations. The fused path:

* forward: ``w = fixed ? fixed_value : mu + max(sigma, sigma_min) * eps`` in one kernel, with
  ``eps[i] = randn(seed, i)`` drawn inside it by a counter-based generator (Philox); eps is
  never written to memory. One int64 ``seed`` per tensor and pass is drawn from torch's
  generator on the tensor's device, so ``torch.manual_seed`` makes runs reproducible.
* backward: recomputes eps from the same seed; ``grad_mu = free * g`` and
  ``grad_sigma = free * (g * eps * [sigma > sigma_min] - lam * max(0, cap - sigma) * |eps|)``:
  the sigma regulariser's gradient (METHOD.md section 3) is fused into the same kernel.

The regulariser's ``lam`` and ``cap`` come from ``pwfn_viz.bayes.sigma_regulariser(model, lam,
cap)``: calling it after the pass *arms* that pass's :class:`FusedNoise` (it returns the value,
for logging, without a gradient on fused tensors), and the backward adds the gradient. So the
same training loop gives the same gradients on both paths; a pass for which the regulariser is
never asked gets no regulariser gradient, as on the torch path. Limits: the fused term assumes
the regulariser enters the loss with weight 1 and unscaled (a ``GradScaler`` or a loss divided
for gradient accumulation scales the task gradient but not this term), and calling
``sigma_regulariser`` twice for one pass arms it once (the torch path would count it twice).

Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)::

    w, noise = fused_sample(mu, sigma, fixed, fixed_value)   # w requires grad through mu, sigma
    noise.arm(2 ** -11, 0.05)                                 # what sigma_regulariser does
    w.sum().backward()                                        # mu.grad, sigma.grad as above
    eps = noise.materialise()                                 # the noise the kernels used (tests)
"""
from __future__ import annotations

import torch

BLOCK = 1024
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIGMA_MIN = 2.0 ** -30   # the same floor as pwfn_viz.bayes.SIGMA_MIN (callers pass theirs)


def _tk():
    from . import triton_module
    return triton_module("_tl_sampling")


def _grid(n: int) -> tuple[int]:
    return (max(1, -(-n // BLOCK)),)


class FusedNoise:
    """The noise of one fused sampling pass of one tensor, ``eps[i] = randn(seed, i)``, held as
    its seed only; ``lam`` / ``cap`` are the regulariser settings its backward uses (0: none)."""

    def __init__(self, seed: torch.Tensor, numel: int):
        self.seed, self.numel = seed, numel
        self.lam, self.cap = 0.0, 0.0

    def arm(self, lam: float, cap: float) -> None:
        """Make this pass's backward add the regulariser's gradient with these settings."""
        self.lam, self.cap = float(lam), float(cap)

    def materialise(self) -> torch.Tensor:
        """The float32 noise the kernels drew (flat; a test and debugging helper: O(N) memory)."""
        out = torch.empty(self.numel, dtype=torch.float32, device=self.seed.device)
        _tk().noise_kernel[_grid(self.numel)](self.seed, out, self.numel, BLOCK=BLOCK)
        return out

    def regulariser_sum(self, sigma: torch.Tensor, fixed: torch.Tensor, cap: float) -> torch.Tensor:
        """sum |eps| * max(0, cap - sigma)^2 over unfixed entries, float32 scalar, no gradient."""
        blocks = _grid(self.numel)[0]
        partial = torch.empty(blocks, dtype=torch.float32, device=sigma.device)
        _tk().regulariser_sum_kernel[(blocks,)](sigma.detach().contiguous(), _as_bytes(fixed),
                                                self.seed, partial, self.numel, float(cap), BLOCK=BLOCK)
        return partial.sum()

    def __repr__(self):
        return f"FusedNoise(numel={self.numel}, lam={self.lam}, cap={self.cap})"


def _as_bytes(mask: torch.Tensor) -> torch.Tensor:
    return mask.contiguous().view(torch.uint8)


class _FusedSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, fixed, fixed_value, noise: FusedNoise, sigma_min: float):
        out = torch.empty_like(mu, memory_format=torch.contiguous_format)
        _tk().sample_fwd_kernel[_grid(mu.numel())](
            mu.contiguous(), sigma.contiguous(), _as_bytes(fixed), fixed_value.contiguous(), noise.seed,
            out, mu.numel(), float(sigma_min), BLOCK=BLOCK)
        ctx.save_for_backward(sigma, fixed)
        ctx.noise, ctx.sigma_min = noise, float(sigma_min)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        sigma, fixed = ctx.saved_tensors
        need_mu, need_sigma = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_mu or need_sigma):
            return None, None, None, None, None, None
        grad = grad.contiguous()
        grad_mu = torch.empty_like(sigma, memory_format=torch.contiguous_format) if need_mu else grad
        grad_sigma = torch.empty_like(sigma, memory_format=torch.contiguous_format) if need_sigma else grad
        noise = ctx.noise
        _tk().sample_bwd_kernel[_grid(sigma.numel())](
            grad, sigma.contiguous(), _as_bytes(fixed), noise.seed, grad_mu, grad_sigma, sigma.numel(),
            ctx.sigma_min, noise.lam, noise.cap, BLOCK=BLOCK, NEED_MU=need_mu, NEED_SIGMA=need_sigma)
        return (grad_mu if need_mu else None, grad_sigma if need_sigma else None, None, None, None, None)


def fused_sampling_applies(mu: torch.Tensor, sigma: torch.Tensor, fixed_value: torch.Tensor) -> bool:
    """Whether the fused kernel serves this tensor: the Triton backend applies to it (see
    ``pwfn_viz.kernels.use_triton``) and mu, sigma, fixed_value share a float32/16/bf16 dtype."""
    from . import use_triton
    return (mu.dtype in DTYPES and sigma.dtype == mu.dtype == fixed_value.dtype
            and mu.numel() < 2 ** 31 and use_triton(mu))


def fused_sample(mu: torch.Tensor, sigma: torch.Tensor, fixed: torch.Tensor, fixed_value: torch.Tensor,
                 sigma_min: float = SIGMA_MIN, seed: int | None = None) -> tuple[torch.Tensor, FusedNoise]:
    """One training sample of a converted tensor and its :class:`FusedNoise` (see module docstring).

    ``seed`` (tests): use this seed instead of drawing one from torch's generator.
    """
    if seed is None:
        seed_t = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64, device=mu.device)
    else:
        seed_t = torch.tensor([int(seed)], dtype=torch.int64, device=mu.device)
    noise = FusedNoise(seed_t, mu.numel())
    return _FusedSample.apply(mu, sigma, fixed, fixed_value, noise, sigma_min), noise


def reference_sample(mu, sigma, fixed, fixed_value, eps, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """The torch path's formula with a given ``eps`` (the reference the tests compare against)."""
    w = mu + sigma.clamp(min=sigma_min) * eps.view_as(mu).to(mu.dtype)
    return torch.where(fixed, fixed_value, w)
