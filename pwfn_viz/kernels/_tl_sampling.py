"""Triton kernels of fused reparameterised sampling (launched from :mod:`pwfn_viz.kernels.sampling`).

The noise of element i is ``tl.randn(seed, i)`` (Philox, counter-based): every kernel below
recomputes it from the seed instead of reading it from memory. ``i`` is the element's offset in
memory: the launcher hands every kernel its tensors in one shared layout (mu's, see
``sampling.Layout``), so offset i is the same logical element in every tensor and every kernel.
Arithmetic in float32. The loss terms' gradient scales (``reg_ptr``, ``decay_ptr``, ``scale_ptr``)
are one-element device tensors read by pointer, so that no launch waits for the host.
"""
import triton
import triton.language as tl

INTERPRET = bool(triton.knobs.runtime.interpret)


@triton.jit(do_not_specialize=["n"])
def sample_fwd_kernel(mu_ptr, sigma_ptr, fixed_ptr, fixed_value_ptr, seed_ptr, out_ptr, n, sigma_min,
                      BLOCK: tl.constexpr):
    """w = fixed ? fixed_value : mu + max(sigma, sigma_min) * eps."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    eps = tl.randn(tl.load(seed_ptr), offs)
    mu = tl.load(mu_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    sigma = tl.load(sigma_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    fixed = tl.load(fixed_ptr + offs, mask=valid, other=0) != 0
    value = tl.load(fixed_value_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    w = tl.where(fixed, value, mu + tl.maximum(sigma, sigma_min) * eps)
    tl.store(out_ptr + offs, w.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["n"])
def sample_bwd_kernel(grad_ptr, sigma_ptr, fixed_ptr, seed_ptr, reg_ptr, grad_mu_ptr, grad_sigma_ptr, n, sigma_min,
                      reg_coef, cap, BLOCK: tl.constexpr, NEED_MU: tl.constexpr, NEED_SIGMA: tl.constexpr,
                      HAS_REG: tl.constexpr):
    """grad_mu = free * g, grad_sigma = free * (g * eps * [sigma > sigma_min] - r * max(0, cap -
    sigma) * |eps|), free = not fixed; r = reg_coef * reg[0] (0 without HAS_REG: the regulariser
    armed for a kernel check, see ``FusedNoise.arm``)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    g = tl.load(grad_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    free = tl.load(fixed_ptr + offs, mask=valid, other=1) == 0
    if NEED_MU:
        tl.store(grad_mu_ptr + offs, tl.where(free, g, 0.0).to(grad_mu_ptr.dtype.element_ty), mask=valid)
    if NEED_SIGMA:
        eps = tl.randn(tl.load(seed_ptr), offs)
        sigma = tl.load(sigma_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        grad = tl.where(sigma > sigma_min, g * eps, 0.0)
        if HAS_REG:
            r = reg_coef * tl.load(reg_ptr).to(tl.float32)
            grad = grad - r * tl.maximum(cap - sigma, 0.0) * tl.abs(eps)
        tl.store(grad_sigma_ptr + offs, tl.where(free, grad, 0.0).to(grad_sigma_ptr.dtype.element_ty),
                 mask=valid)


@triton.jit(do_not_specialize=["n"])
def regulariser_sum_kernel(sigma_ptr, fixed_ptr, seed_ptr, partial_ptr, n, cap, scale, BLOCK: tl.constexpr):
    """partial[block] = scale * sum over the block of |eps| * max(0, cap - sigma)^2 on free weights."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    eps = tl.randn(tl.load(seed_ptr), offs)
    sigma = tl.load(sigma_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    free = (tl.load(fixed_ptr + offs, mask=valid, other=1) == 0) & valid
    gap = tl.maximum(cap - sigma, 0.0)
    total = tl.sum(tl.where(free, tl.abs(eps) * gap * gap, 0.0), axis=0)
    tl.store(partial_ptr + tl.program_id(0), total * scale)


@triton.jit(do_not_specialize=["n"])
def regulariser_grad_kernel(sigma_ptr, fixed_ptr, seed_ptr, scale_ptr, out_ptr, n, cap, coef,
                            BLOCK: tl.constexpr):
    """out = -free * r * max(0, cap - sigma) * |eps| with r = coef * scale[0]: the regulariser's
    gradient when the sampling backward cannot take it over."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    eps = tl.randn(tl.load(seed_ptr), offs)
    sigma = tl.load(sigma_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    free = tl.load(fixed_ptr + offs, mask=valid, other=1) == 0
    r = coef * tl.load(scale_ptr).to(tl.float32)
    grad = tl.where(free, -(r * tl.maximum(cap - sigma, 0.0) * tl.abs(eps)), 0.0)
    tl.store(out_ptr + offs, grad.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["n"])
def decay_sum_kernel(mu_ptr, fixed_ptr, partial_ptr, n, scale, BLOCK: tl.constexpr):
    """partial[block] = scale * sum over the block of mu^2 on free weights."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    mu = tl.load(mu_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    free = (tl.load(fixed_ptr + offs, mask=valid, other=1) == 0) & valid
    tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.where(free, mu * mu, 0.0), axis=0) * scale)


@triton.jit(do_not_specialize=["n"])
def noise_kernel(seed_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[i] = eps[i], exactly as the kernels above draw it (a test helper)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.randn(tl.load(seed_ptr), offs), mask=offs < n)
