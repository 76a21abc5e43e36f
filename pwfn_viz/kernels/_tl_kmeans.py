"""Triton kernels of 1-D k-means on sorted values (launched from :mod:`pwfn_viz.kernels.kmeans`)."""
import triton
import triton.language as tl

from ._tl_clustering import _count_below

INTERPRET = bool(triton.knobs.runtime.interpret)


# searchsorted(ptr[0:k], x, right=RIGHT) per element of x: the clustering kernels' binary search
_first_index = _count_below


@triton.jit(do_not_specialize=["n", "kb", "steps"])
def boundaries_kernel(xs_ptr, c_ptr, pos_ptr, n, kb, steps, BLOCK: tl.constexpr):
    """pos[j] = first i with xs[i] - c[j] > c[j+1] - xs[i] (strictly closer to the upper centre),
    n if none; xs sorted, so the predicate is monotone in i and a binary search finds it."""
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = j < kb
    c_lo = tl.load(c_ptr + j, mask=valid, other=0.0)
    c_hi = tl.load(c_ptr + j + 1, mask=valid, other=0.0)
    lo = tl.zeros([BLOCK], dtype=tl.int64)
    hi = lo + n
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(xs_ptr + mid, mask=active & valid, other=0.0)
        go_right = (v - c_lo) <= (c_hi - v)
        lo = tl.where(active & go_right, mid + 1, lo)
        hi = tl.where(active & ~go_right, mid, hi)
    tl.store(pos_ptr + j, lo, mask=valid)


@triton.jit(do_not_specialize=["n", "k", "steps"])
def assign_kernel(x_ptr, c_ptr, out_ptr, n, k, steps, BLOCK: tl.constexpr):
    """label = nearest of the sorted centres, ties to the lower one, equal centres: the first."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    x = tl.load(x_ptr + offs, mask=valid, other=0.0)
    above = _first_index(c_ptr, x, k, steps, False)           # first centre >= x
    has_below = above > 0
    has_above = above < k
    c_below = tl.load(c_ptr + above - 1, mask=valid & has_below, other=0.0)
    c_above = tl.load(c_ptr + above, mask=valid & has_above, other=0.0)
    take_below = has_below & (~has_above | ((x - c_below) <= (c_above - x)))
    below = _first_index(c_ptr, c_below, k, steps, False)     # first of its run of equal centres
    tl.store(out_ptr + offs, tl.where(take_below, below, above).to(tl.int64), mask=valid)
