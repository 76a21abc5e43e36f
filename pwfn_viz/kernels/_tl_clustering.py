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
def coverage_kernel(sorted_mu_ptr, sorted_sigma_ptr, delta_ptr, c_ptr, run_ends_ptr, n, k, steps,
                    BLOCK: tl.constexpr, BINS: tl.constexpr, HISTOGRAM: tl.constexpr):
    """run_ends[first] += 1 and run_ends[stop] -= 1 for every band; first = #c < lo, stop = #c <= hi.
    HISTOGRAM: count the block's ends locally first, then one atomic add per non-empty bin."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    m = tl.load(sorted_mu_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # stored float32 or float64:
    s = tl.load(sorted_sigma_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # exact in float64
    delta = tl.load(delta_ptr)
    first = _count_below(c_ptr, m - delta * s, k, steps, False)
    stop = _count_below(c_ptr, m + delta * s, k, steps, True)
    if HISTOGRAM:
        h = tl.histogram(first, BINS, mask=valid) - tl.histogram(stop, BINS, mask=valid)
        bins = tl.arange(0, BINS)
        tl.atomic_add(run_ends_ptr + bins, h, mask=h != 0)
    else:
        ones = tl.full([BLOCK], 1, dtype=tl.int32)
        tl.atomic_add(run_ends_ptr + first, ones, mask=valid)
        tl.atomic_add(run_ends_ptr + stop, -ones, mask=valid)


@triton.jit(do_not_specialize=["window_start", "window_stop", "band_lo", "band_hi"])
def fit_mask_kernel(sorted_mu_ptr, sorted_sigma_ptr, sorted_unassigned_ptr, delta_ptr, c_ptr, out_ptr,
                    window_start, window_stop, band_lo, band_hi, BLOCK: tl.constexpr):
    """out[i - window_start] = unassigned[i] & (m - delta*s <= c <= m + delta*s  or  band_lo <= i < band_hi)."""
    offs = window_start + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < window_stop
    m = tl.load(sorted_mu_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # stored float32 or float64:
    s = tl.load(sorted_sigma_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # exact in float64
    unassigned = tl.load(sorted_unassigned_ptr + offs, mask=valid, other=0) != 0
    delta = tl.load(delta_ptr)
    c = tl.load(c_ptr)
    inside = (m - delta * s <= c) & (m + delta * s >= c)
    in_band = (offs >= band_lo) & (offs < band_hi)
    fits = unassigned & (inside | in_band)
    tl.store(out_ptr + (offs - window_start), fits.to(tl.uint8), mask=valid)


@triton.jit(do_not_specialize=["n_taken", "centre_id", "k", "steps", "band_lo", "band_hi", "zero_rank"])
def snap_kernel(positions_ptr, network_index_ptr, sorted_mu_ptr, sorted_sigma_ptr, sigma_ptr, new_mu_ptr,
                new_sigma_ptr, assign_ptr, unassigned_ptr, sorted_unassigned_ptr, centre_ptr, delta_ptr, std_ptr,
                divisor_ptr, c_ptr, run_ends_ptr, n_taken, centre_id, k, steps,
                band_lo, band_hi, zero_rank, BLOCK: tl.constexpr, JOIN: tl.constexpr, RECOUNT: tl.constexpr,
                MU_VIA_F32: tl.constexpr, SIGMA_VIA_F32: tl.constexpr):
    """For each taken sorted position p (weight i = network_index[p]): new_mu[i] = c, new_sigma[i] by
    the join (0: std_mu, 1: keep, 2: sigma / divisor), assignment[i] = centre_id, unassigned[i] =
    sorted_unassigned[p] = 0. RECOUNT: the weight's band leaves the coverage counts (run_ends[first]
    += 1, run_ends[stop] -= 1, as in coverage_kernel), and a zero-band weight whose band misses 0
    leaves the zero centre's extra count (run_ends[zero_rank] += 1, run_ends[zero_rank + 1] -= 1).
    MU_/SIGMA_VIA_F32: that output is narrower than float64 and values reach it through float32, as
    torch converts a double to half or bfloat16 (the same roundings as the torch path)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_taken
    pos = tl.load(positions_ptr + offs, mask=valid, other=0).to(tl.int64)
    idx = tl.load(network_index_ptr + pos, mask=valid, other=0).to(tl.int64)
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
    tl.store(unassigned_ptr + idx, zero, mask=valid)
    tl.store(sorted_unassigned_ptr + pos, zero, mask=valid)
    if RECOUNT:
        m = tl.load(sorted_mu_ptr + pos, mask=valid, other=0.0).to(tl.float64)
        s = tl.load(sorted_sigma_ptr + pos, mask=valid, other=0.0).to(tl.float64)
        delta = tl.load(delta_ptr)
        lo = m - delta * s
        hi = m + delta * s
        first = _count_below(c_ptr, lo, k, steps, False)
        stop = _count_below(c_ptr, hi, k, steps, True)
        ones = tl.full([BLOCK], 1, dtype=tl.int32)
        tl.atomic_add(run_ends_ptr + first, ones, mask=valid)
        tl.atomic_add(run_ends_ptr + stop, -ones, mask=valid)
        extra = valid & (pos >= band_lo) & (pos < band_hi) & ~((lo <= 0) & (hi >= 0))
        tl.atomic_add(run_ends_ptr + zero_rank + tl.zeros([BLOCK], dtype=tl.int32), ones, mask=extra)
        tl.atomic_add(run_ends_ptr + zero_rank + 1 + tl.zeros([BLOCK], dtype=tl.int32), -ones, mask=extra)
