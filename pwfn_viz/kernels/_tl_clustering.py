"""Triton kernels of a clustering round (launched from :mod:`pwfn_viz.kernels.clustering`).

All comparisons are in float64 with the interval ends computed as ``m - delta * s`` and
``m + delta * s``, the same two roundings as the torch path (launch with
``enable_fp_fusion=False`` so that no fused multiply-add changes them).
"""
import triton
import triton.language as tl

INTERPRET = bool(triton.knobs.runtime.interpret)


@triton.jit
def _count_below(c_ptr, x, k, steps, RIGHT: tl.constexpr):
    """Per element of ``x``: how many of the sorted ``c[0:k]`` are < x (RIGHT: <= x), i.e.
    ``searchsorted(c, x, right=RIGHT)``, by ``steps = k.bit_length()`` halvings."""
    lo = tl.zeros(x.shape, dtype=tl.int32)
    hi = lo + k
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(c_ptr + mid, mask=active, other=0.0)
        if RIGHT:
            go_right = v <= x
        else:
            go_right = v < x
        lo = tl.where(active & go_right, mid + 1, lo)
        hi = tl.where(active & ~go_right, mid, hi)
    return lo


@triton.jit(do_not_specialize=["n", "k", "steps"])
def coverage_kernel(pm_ptr, ps_ptr, delta_ptr, c_ptr, diff_ptr, n, k, steps,
                    BLOCK: tl.constexpr, BINS: tl.constexpr, HISTOGRAM: tl.constexpr):
    """diff[first] += 1 and diff[stop] -= 1 for every interval; first = #c < lo, stop = #c <= hi.
    HISTOGRAM: count the block's ends locally first, then one atomic add per non-empty bin."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    m = tl.load(pm_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # stored float32 or float64:
    s = tl.load(ps_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # exact in float64
    delta = tl.load(delta_ptr)
    first = _count_below(c_ptr, m - delta * s, k, steps, False)
    stop = _count_below(c_ptr, m + delta * s, k, steps, True)
    if HISTOGRAM:
        h = tl.histogram(first, BINS, mask=valid) - tl.histogram(stop, BINS, mask=valid)
        bins = tl.arange(0, BINS)
        tl.atomic_add(diff_ptr + bins, h, mask=h != 0)
    else:
        ones = tl.full([BLOCK], 1, dtype=tl.int32)
        tl.atomic_add(diff_ptr + first, ones, mask=valid)
        tl.atomic_add(diff_ptr + stop, -ones, mask=valid)


@triton.jit(do_not_specialize=["a", "z", "band_lo", "band_hi"])
def fit_mask_kernel(pm_ptr, ps_ptr, alive_ptr, delta_ptr, c_ptr, out_ptr, a, z, band_lo, band_hi,
                    BLOCK: tl.constexpr):
    """out[i - a] = alive[i] & (m - delta*s <= c <= m + delta*s  or  band_lo <= i < band_hi)."""
    offs = a + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < z
    m = tl.load(pm_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # stored float32 or float64:
    s = tl.load(ps_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # exact in float64
    alive = tl.load(alive_ptr + offs, mask=valid, other=0) != 0
    delta = tl.load(delta_ptr)
    c = tl.load(c_ptr)
    inside = (m - delta * s <= c) & (m + delta * s >= c)
    in_band = (offs >= band_lo) & (offs < band_hi)
    fits = alive & (inside | in_band)
    tl.store(out_ptr + (offs - a), fits.to(tl.uint8), mask=valid)


@triton.jit(do_not_specialize=["n_taken", "centre_id", "k", "steps", "band_lo", "band_hi", "zero_rank"])
def snap_kernel(local_ptr, p_idx_ptr, pm_ptr, ps_ptr, sigma_ptr, new_mu_ptr, new_sigma_ptr, assign_ptr,
                alive_ptr, p_alive_ptr, centre_ptr, delta_ptr, std_ptr, divisor_ptr, c_ptr, diff_ptr, n_taken, centre_id, k, steps,
                band_lo, band_hi, zero_rank, BLOCK: tl.constexpr, JOIN: tl.constexpr, RECOUNT: tl.constexpr,
                MU_VIA_F32: tl.constexpr, SIGMA_VIA_F32: tl.constexpr):
    """For each taken sorted position p (weight i = p_idx[p]): new_mu[i] = c, new_sigma[i] by the
    join (0: std_mu, 1: keep, 2: sigma / divisor), assignment[i] = centre_id, alive[i] = p_alive[p]
    = 0. RECOUNT: the weight's interval leaves the coverage counts (diff[first] += 1, diff[stop]
    -= 1, as in coverage_kernel), and a zero-band weight whose interval misses 0 leaves the zero
    centre's extra count (diff[zero_rank] += 1, diff[zero_rank + 1] -= 1). MU_/SIGMA_VIA_F32: that
    output is narrower than float64 and values reach it through float32, as torch converts a double
    to half or bfloat16 (the same roundings as the torch path)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_taken
    pos = tl.load(local_ptr + offs, mask=valid, other=0).to(tl.int64)
    idx = tl.load(p_idx_ptr + pos, mask=valid, other=0).to(tl.int64)
    centre = tl.zeros([BLOCK], dtype=tl.float64) + tl.load(centre_ptr)
    if MU_VIA_F32:
        centre = centre.to(tl.float32)
    tl.store(new_mu_ptr + idx, centre.to(new_mu_ptr.dtype.element_ty), mask=valid)
    if JOIN == 0:
        std = tl.zeros([BLOCK], dtype=tl.float64) + tl.load(std_ptr)
        if SIGMA_VIA_F32:
            std = std.to(tl.float32)
        tl.store(new_sigma_ptr + idx, std.to(new_sigma_ptr.dtype.element_ty), mask=valid)
    if JOIN == 2:   # the float64 quotient, rounded to float32 then to a narrower dtype, equals torch's
        sg = tl.load(sigma_ptr + idx, mask=valid, other=0.0).to(tl.float64)   # float32-opmath division
        q = sg / tl.load(divisor_ptr)
        if SIGMA_VIA_F32:
            q = q.to(tl.float32)
        tl.store(new_sigma_ptr + idx, q.to(new_sigma_ptr.dtype.element_ty), mask=valid)
    tl.store(assign_ptr + idx, tl.zeros([BLOCK], dtype=tl.int32) + centre_id, mask=valid)
    zero = tl.zeros([BLOCK], dtype=tl.uint8)
    tl.store(alive_ptr + idx, zero, mask=valid)
    tl.store(p_alive_ptr + pos, zero, mask=valid)
    if RECOUNT:
        m = tl.load(pm_ptr + pos, mask=valid, other=0.0).to(tl.float64)
        s = tl.load(ps_ptr + pos, mask=valid, other=0.0).to(tl.float64)
        delta = tl.load(delta_ptr)
        lo = m - delta * s
        hi = m + delta * s
        first = _count_below(c_ptr, lo, k, steps, False)
        stop = _count_below(c_ptr, hi, k, steps, True)
        ones = tl.full([BLOCK], 1, dtype=tl.int32)
        tl.atomic_add(diff_ptr + first, ones, mask=valid)
        tl.atomic_add(diff_ptr + stop, -ones, mask=valid)
        extra = valid & (pos >= band_lo) & (pos < band_hi) & ~((lo <= 0) & (hi >= 0))
        tl.atomic_add(diff_ptr + zero_rank + tl.zeros([BLOCK], dtype=tl.int32), ones, mask=extra)
        tl.atomic_add(diff_ptr + zero_rank + 1 + tl.zeros([BLOCK], dtype=tl.int32), -ones, mask=extra)
