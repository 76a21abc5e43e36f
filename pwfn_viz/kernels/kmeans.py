"""1-D k-means on sorted values: assignment and centroid update, Triton kernels + torch twins.

Semantics are those of :mod:`pwfn_viz.baselines.kmeans` (nearest centre, a value exactly half-way goes to
the lower centre, equal centres: the first of the run takes everything):

* :func:`kmeans_boundaries`: for sorted values ``xs`` and sorted centres ``c`` (k), the k - 1
  cluster ends ``pos`` (cluster j is ``xs[pos[j-1]:pos[j]]``), one binary search in ``xs`` per
  pair of neighbouring centres: O(k log N). Equal to ``pwfn_viz.baselines.kmeans._boundaries``.
* :func:`kmeans_assign`: the label of every value (any order), one binary search in ``c`` each.
* :func:`lloyd_step`: one Lloyd update from prefix sums: new centre = mean of its run of ``xs``
  (an empty cluster keeps its centre: relocating it is the caller's rule).

Example:
    >>> import torch
    >>> xs = torch.tensor([0.0, 1.0, 2.0, 10.0, 12.0], dtype=torch.float64)
    >>> c = torch.tensor([1.0, 6.0, 11.0], dtype=torch.float64)
    >>> kmeans_boundaries(xs, c).tolist(), kmeans_assign(xs, c).tolist()
    ([3, 3], [0, 0, 0, 2, 2])
    >>> prefix, shift = prefix_sums(xs)
    >>> lloyd_step(xs, prefix, shift, c)[0].tolist()
    [1.0, 6.0, 11.0]
"""
from __future__ import annotations

import torch

BLOCK = 1024


def _tk():
    from .backend import triton_module
    return triton_module("_tl_kmeans")


def _fix_duplicates(pos: torch.Tensor, c: torch.Tensor, n: int) -> torch.Tensor:
    """Equal neighbouring centres: the first takes everything (its end is the next real end);
    then make the ends non-decreasing (rounding can cross neighbouring midpoints)."""
    dup = c[:-1] == c[1:]
    if bool(dup.any()):
        kept = (~dup).nonzero().squeeze(1)
        ends = torch.cat([pos[kept], pos.new_full((1,), n)])
        pos = ends[torch.searchsorted(kept, torch.arange(pos.numel(), device=pos.device))]
    return pos.cummax(0).values


def boundaries_torch(xs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Torch twin of the boundary kernel: start at the midpoints, then step over runs of equal
    values until each end is the first value strictly closer to the upper centre."""
    n = xs.numel()
    lo, hi = c[:-1], c[1:]
    pos = torch.searchsorted(xs, lo / 2 + hi / 2, right=True)
    while True:
        at = xs[pos.clamp(max=n - 1)]
        up = (pos < n) & ((at - lo) <= (hi - at))            # xs[pos] still belongs below
        before = xs[(pos - 1).clamp(min=0)]
        down = (pos > 0) & ((before - lo) > (hi - before))   # xs[pos-1] already belongs above
        if not bool((up | down).any()):
            break
        pos = torch.where(up, torch.searchsorted(xs, at, right=True), pos)
        pos = torch.where(down, torch.searchsorted(xs, before, right=False), pos)
    return _fix_duplicates(pos, c, n)


def kmeans_boundaries(xs: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Cluster ends (int64, k - 1) of sorted float64 ``xs`` for sorted float64 centres ``c``."""
    from .backend import use_triton
    xs, c = xs.to(torch.float64).contiguous(), c.to(torch.float64).contiguous()
    if c.numel() < 2:
        return torch.zeros(0, dtype=torch.long, device=xs.device)
    if not use_triton(xs):
        return boundaries_torch(xs, c)
    n, kb = xs.numel(), c.numel() - 1
    pos = torch.empty(kb, dtype=torch.int64, device=xs.device)
    _tk().boundaries_kernel[(-(-kb // BLOCK),)](xs, c, pos, n, kb, n.bit_length(), BLOCK=BLOCK,
                                                enable_fp_fusion=False)
    return _fix_duplicates(pos, c, n)


def assign_torch(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Torch twin of the assignment kernel."""
    k = c.numel()
    above = torch.searchsorted(c, x)
    c_below = c[(above - 1).clamp(min=0)]
    c_above = c[above.clamp(max=k - 1)]
    take_below = (above > 0) & ((above == k) | ((x - c_below) <= (c_above - x)))
    return torch.where(take_below, torch.searchsorted(c, c_below), above)


def kmeans_assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Label (int64, same shape as ``x``) of every value: its nearest sorted centre in ``c``."""
    from .backend import use_triton
    flat, c = x.reshape(-1).to(torch.float64).contiguous(), c.to(torch.float64).contiguous()
    if not use_triton(flat):
        return assign_torch(flat, c).view(x.shape)
    n, k = flat.numel(), c.numel()
    out = torch.empty(n, dtype=torch.int64, device=flat.device)
    if n:
        _tk().assign_kernel[(-(-n // BLOCK),)](flat, c, out, n, k, k.bit_length(), BLOCK=BLOCK,
                                               enable_fp_fusion=False)
    return out.view(x.shape)


def prefix_sums(xs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(prefix, shift): float64 ``prefix[i] = sum(xs[:i] - shift)`` with ``shift`` the mean
    (centred values keep the segment sums accurate)."""
    xs = xs.to(torch.float64)
    shift = float(xs.mean())
    return torch.cat([xs.new_zeros(1), torch.cumsum(xs - shift, 0)]), shift


def lloyd_step(xs: torch.Tensor, prefix: torch.Tensor, shift: float, c: torch.Tensor):
    """One Lloyd iteration on sorted ``xs``: (new sorted centres, counts, ends ``pos``)."""
    c = c.to(torch.float64)
    pos = kmeans_boundaries(xs, c)
    edges = torch.cat([pos.new_zeros(1), pos, pos.new_full((1,), xs.numel())])
    counts = edges[1:] - edges[:-1]
    sums = prefix[edges[1:]] - prefix[edges[:-1]]
    new = torch.where(counts > 0, sums / counts.clamp(min=1) + shift, c)
    return new.sort().values, counts, pos
