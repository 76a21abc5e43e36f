"""Fused reparameterised sampling of a converted tensor (Triton), and its loss terms.

The torch path (``pwfn_viz.core.bayes._sample_hook``) draws ``eps`` with ``randn_like``, keeps it for
the regulariser and builds ``w`` from five separate tensor operations; the sigma regulariser and
the masked weight decay are ordinary autograd expressions. The fused path:

* forward: ``w = fixed ? fixed_value : mu + max(sigma, sigma_min) * eps`` in one kernel, with
  ``eps[i] = randn(seed, i)`` drawn inside it by a counter-based generator (Philox); eps is
  never written to memory. One int64 ``seed`` per tensor and pass is drawn from torch's
  generator on the tensor's device, so ``torch.manual_seed`` makes runs reproducible;
  :func:`draw_seeds` draws those of several tensors (a module's) in one launch, and
  :func:`fused_sample` takes one of them as a one-element view.
* loss terms (:mod:`pwfn_viz.kernels.loss_terms`): ``fused_regulariser`` ``= (lam / 2) * sum
  |eps| * max(0, cap - sigma)^2`` and ``fused_weight_decay`` ``= (wd / 2) * sum mu^2`` (sums over
  free, i.e. unfixed, weights; docs/method.md, section 3) each take the tensors of a whole model: one
  reduction kernel per tensor and one sum, no elementwise autograd graph.
* backward: recomputes eps from the seed; ``grad_mu = free * g`` and
  ``grad_sigma = free * g * eps * [sigma > sigma_min]`` in one kernel.

The layout rule (every launch on a tensor follows it, so that forward, loss terms and backward
see the same eps for the same element): the counter ``i`` of an element is its offset in memory
in *mu's layout* (:class:`Layout`): mu's own strides when mu is non-overlapping and dense in any
dimension order (contiguous, channels_last, channels_last_3d, any permutation), else row-major.
The layout is fixed when the pass samples and kept in its :class:`FusedNoise`. Every other tensor
of a launch (sigma, fixed, fixed_value, the incoming gradient, the decay's mu) is read as it is
when it lies that way and copied once into that layout otherwise; outputs (w, the gradients) are
allocated in it, so a channels_last parameter gets a channels_last weight and gradients, and no
pass copies anything. :meth:`FusedNoise.materialise` returns eps in logical (row-major) order.

The loss terms compute their own gradients with one elementwise kernel each (public autograd
only: no engine internals), so the gradients equal the torch path's for any scaling of the loss
and any number of backward calls.

The path is opt-in (``PWFN_BACKEND=triton`` or ``pwfn_viz.kernels.use_backend("triton")``): the
automatic choice keeps sampling on the torch path, which was measured faster on a GPU.

Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)::

    from pwfn_viz.constants import REGULARISER_LAMBDA, SIGMA_CAP
    from pwfn_viz.kernels.loss_terms import fused_regulariser, fused_weight_decay
    w, noise = fused_sample(mu, sigma, fixed, fixed_value)   # w requires grad through mu, sigma
    loss = (w * x).sum() + fused_regulariser([sigma], [fixed], [noise], REGULARISER_LAMBDA, SIGMA_CAP) \\
        + fused_weight_decay([mu], [fixed], [noise], 1e-4)
    (1024 * loss).backward()                                  # grads 1024x the torch path's
    eps = noise.materialise()                                 # the noise the kernels used (tests)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..constants import SAMPLING_SIGMA_FLOOR

BLOCK = 1024
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MU, SIGMA = 0, 1         # input positions of mu and sigma in the sampling node


def _tk():
    from .backend import triton_module
    return triton_module("_tl_sampling")


def _grid(n: int) -> tuple[int]:
    return (max(1, -(-n // BLOCK)),)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _is_dense(shape, stride) -> bool:
    """Non-overlapping and dense in some dimension order: sorted by stride, each stride is the
    product of the sizes before it (dimensions of size 1 may have any stride)."""
    if 0 in shape:
        return True
    expected = 1
    for size, step in sorted(((n, st) for n, st in zip(shape, stride) if n != 1), key=lambda p: p[1]):
        if step != expected:
            return False
        expected *= size
    return True


@dataclass(frozen=True)
class Layout:
    """Where a sampled tensor's elements lie in memory; the Philox counter of an element is its
    offset there (module docstring). ``Layout.of(mu)``: mu's strides if dense, else row-major.

    >>> Layout.of(torch.empty(2, 3, 4, 5).to(memory_format=torch.channels_last)).stride
    (60, 1, 15, 3)
    >>> Layout.of(torch.empty(4, 6)[:, ::2]).stride      # not dense: row-major
    (3, 1)
    """
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    @staticmethod
    def of(mu: torch.Tensor) -> "Layout":
        shape = tuple(mu.shape)
        dense = _is_dense(shape, mu.stride())
        return Layout(shape, tuple(mu.stride()) if dense else _contiguous_strides(shape))

    def holds(self, t: torch.Tensor) -> bool:
        """Does ``t`` (of this shape) lie in memory the way this layout says?"""
        return tuple(t.shape) == self.shape and all(
            a == b for n, a, b in zip(self.shape, t.stride(), self.stride) if n != 1)

    def empty(self, dtype: torch.dtype, device) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=dtype, device=device)

    def put(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (same number of elements, logical order) as it is when it lies this way, else
        copied once into this layout."""
        if tuple(t.shape) != self.shape:
            t = t.reshape(self.shape)
        return t if self.holds(t) else self.empty(t.dtype, t.device).copy_(t)


@dataclass
class _Armed:
    """The regulariser's gradient the next sampling backward adds (kernel checks): ``coef * scale[0]``."""
    scale: torch.Tensor      # one-element device tensor
    coef: float
    cap: float


class FusedNoise:
    """The noise of one fused sampling pass of one tensor, ``eps[i] = randn(seed, i)``, held as
    its seed only."""

    def __init__(self, seed: torch.Tensor, layout: Layout):
        self.seed, self.layout = seed, layout   # one-element int64 device tensor; see Layout
        self.numel = math.prod(layout.shape)
        self._armed: _Armed | None = None

    def materialise(self) -> torch.Tensor:
        """The float32 noise the kernels drew, flat in logical (row-major) order whatever the
        layout (a test and debugging helper: O(N) memory)."""
        out = self.layout.empty(torch.float32, self.seed.device)
        _tk().noise_kernel[_grid(self.numel)](self.seed, out, self.numel, BLOCK=BLOCK)
        return out.reshape(-1)

    def arm(self, lam: float, cap: float) -> None:
        """Make the pass's next backward add the regulariser's gradient ``-lam * max(0, cap -
        sigma) * |eps|`` at loss scale 1 inside the sampling kernel (kernel checks; training uses
        :func:`~pwfn_viz.kernels.loss_terms.fused_regulariser`, which follows the loss's scale)."""
        one = torch.ones(1, dtype=torch.float32, device=self.seed.device)
        self._armed = _Armed(one, float(lam), float(cap))

    def __repr__(self):
        return f"FusedNoise(numel={self.numel}, armed={self._armed is not None})"



def _as_bytes(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(torch.uint8)   # bool and uint8 have one byte: a view in any layout


class _FusedSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, fixed, fixed_value, noise: FusedNoise, sigma_min: float):
        lay = noise.layout
        sigma, fixed = lay.put(sigma), lay.put(fixed)
        out = lay.empty(mu.dtype, mu.device)
        _tk().sample_fwd_kernel[_grid(out.numel())](
            lay.put(mu), sigma, _as_bytes(fixed), lay.put(fixed_value), noise.seed, out, out.numel(),
            float(sigma_min), BLOCK=BLOCK)
        ctx.save_for_backward(sigma, fixed)          # in the layout: backward copies them no more
        ctx.noise, ctx.sigma_min, ctx.mu_dtype = noise, float(sigma_min), mu.dtype
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        sigma, fixed = ctx.saved_tensors
        need_mu, need_sigma = ctx.needs_input_grad[MU], ctx.needs_input_grad[SIGMA]
        noise = ctx.noise
        reg, noise._armed = noise._armed, None
        reg = reg if need_sigma else None
        if not (need_mu or need_sigma):
            return None, None, None, None, None, None
        lay = noise.layout
        grad = lay.put(grad)
        grad_mu = lay.empty(ctx.mu_dtype, grad.device) if need_mu else grad
        grad_sigma = lay.empty(sigma.dtype, grad.device) if need_sigma else grad
        _tk().sample_bwd_kernel[_grid(sigma.numel())](
            grad, sigma, _as_bytes(fixed), noise.seed, reg.scale if reg else grad, grad_mu, grad_sigma,
            sigma.numel(), ctx.sigma_min, reg.coef if reg else 0.0, reg.cap if reg else 0.0,
            BLOCK=BLOCK, NEED_MU=need_mu, NEED_SIGMA=need_sigma, HAS_REG=reg is not None)
        return (grad_mu if need_mu else None, grad_sigma if need_sigma else None, None, None, None, None)


def fused_sampling_applies(mu: torch.Tensor, sigma: torch.Tensor, fixed_value: torch.Tensor) -> bool:
    """Whether the fused kernel serves this tensor: the Triton backend is *forced* and applies to
    it (see ``pwfn_viz.kernels.use_triton``), and mu, sigma, fixed_value share a float32/16/bf16
    dtype. Not chosen automatically on a GPU: measured on an H200, the fused step was slower than
    sampling each module with plain torch operations (BENCHMARKS.md, training step)."""
    from .backend import forced_backend, use_triton
    return (forced_backend() == "triton" and mu.dtype in DTYPES and sigma.dtype == mu.dtype == fixed_value.dtype
            and mu.numel() < 2 ** 31 and use_triton(mu))


def draw_seeds(count: int, device) -> torch.Tensor:
    """``count`` seeds (int64) from torch's generator on ``device`` in one launch: one for each
    tensor a module samples in a pass; hand ``seeds[i:i + 1]`` to :func:`fused_sample`."""
    return torch.randint(0, 2 ** 62, (count,), dtype=torch.int64, device=device)


def _seed_tensor(seed, device) -> torch.Tensor:
    if seed is None:
        return draw_seeds(1, device)
    if not isinstance(seed, torch.Tensor):
        return torch.tensor([int(seed)], dtype=torch.int64, device=device)
    if seed.dtype != torch.int64 or seed.numel() != 1 or seed.device != torch.device(device):
        raise ValueError(f"fused_sample: a seed tensor must be one int64 element on {device} (e.g. "
                         f"draw_seeds(n, device)[i:i + 1]); got {seed.numel()} x {seed.dtype} on {seed.device}")
    return seed


def fused_sample(mu: torch.Tensor, sigma: torch.Tensor, fixed: torch.Tensor, fixed_value: torch.Tensor,
                 sigma_min: float = SAMPLING_SIGMA_FLOOR, seed: int | torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, FusedNoise]:
    """One training sample of a converted tensor and its :class:`FusedNoise` (see module docstring).
    ``w`` has mu's layout (:class:`Layout`).

    ``seed``: None draws one from torch's generator (a launch); a one-element int64 tensor on mu's
    device (a view of :func:`draw_seeds`' output) is used as it is, no copy; an int (tests) is
    that seed. Never give two tensors of one pass the same seed.
    """
    noise = FusedNoise(_seed_tensor(seed, mu.device), Layout.of(mu))
    return _FusedSample.apply(mu, sigma, fixed, fixed_value, noise, sigma_min), noise


def reference_sample(mu, sigma, fixed, fixed_value, eps, sigma_min: float = SAMPLING_SIGMA_FLOOR) -> torch.Tensor:
    """The torch path's formula with a given ``eps`` (the reference the tests compare against)."""
    w = mu + sigma.clamp(min=sigma_min) * eps.view_as(mu).to(mu.dtype)
    return torch.where(fixed, fixed_value, w)
