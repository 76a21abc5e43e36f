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
def fit_mask_kernel(pm_ptr, ps_ptr, alive_ptr, params_ptr, out_ptr, a, z, band_lo, band_hi,
                    BLOCK: tl.constexpr):
    """out[i - a] = alive[i] & (m - delta*s <= c <= m + delta*s  or  band_lo <= i < band_hi)."""
    offs = a + tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < z
    m = tl.load(pm_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # stored float32 or float64:
    s = tl.load(ps_ptr + offs, mask=valid, other=0.0).to(tl.float64)   # exact in float64
    alive = tl.load(alive_ptr + offs, mask=valid, other=0) != 0
    delta = tl.load(params_ptr)
    c = tl.load(params_ptr + 1)
    inside = (m - delta * s <= c) & (m + delta * s >= c)
    in_band = (offs >= band_lo) & (offs < band_hi)
    fits = alive & (inside | in_band)
    tl.store(out_ptr + (offs - a), fits.to(tl.uint8), mask=valid)
