"""Clustering-round kernels: coverage counts and the winning centre's fit mask.

Both are exact twins of the torch code in :mod:`pwfn_viz.clustering` (``_coverage`` and
``_fitting``), which call them when :func:`pwfn_viz.kernels.use_triton` says so:

* :func:`coverage_counts`: for each value-sorted centre, how many intervals
  ``[m - delta*s, m + delta*s]`` contain it. One pass over the weights: each finds the run of
  centres its interval covers by two binary searches, and the run ends go into a difference
  array of length K + 1 (a per-block histogram, then one atomic add per bin); a cumulative sum
  turns it into counts. O(N log K) work, O(K) extra memory, no host round trip.
* :func:`fitting_positions`: positions in ``[a, z)`` of the unassigned weights whose interval
  holds centre ``c`` (or that lie in the zero band), in increasing order.

Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)::

    pm = torch.tensor([0.1, 0.5], dtype=torch.float64); ps = torch.full((2,), 0.2, dtype=torch.float64)
    coverage_counts(pm, ps, 1.0, torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64))
    # tensor([1, 2, 1]): [-0.1, 0.3] holds 0 and 0.25, [0.3, 0.7] holds 0.5
"""
from __future__ import annotations

import torch

BLOCK = 1024
MAX_HISTOGRAM_BINS = 4096   # more centres than this: one atomic add per interval end instead


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _bins(k: int) -> int:
    """Histogram size: a power of two, at least one bin per warp lane, holding 0..k."""
    return max(32, 1 << k.bit_length())


def coverage_counts(pm: torch.Tensor, ps: torch.Tensor, delta: float, sorted_centres: torch.Tensor,
                    strategy: str | None = None) -> torch.Tensor:
    """Triton twin of ``pwfn_viz.clustering._coverage`` (same int64 counts, exactly).

    ``pm``, ``ps``: float32 or float64 interval centres and half-widths per ``delta`` (the arithmetic is
    float64); ``sorted_centres``:
    float64, ascending. ``strategy`` ("histogram" or "atomic") overrides the automatic choice of
    how the block's interval ends reach the difference array (used by the GPU self-check).
    """
    from . import triton_module
    tk = triton_module("_tl_clustering")
    k, n = sorted_centres.numel(), pm.numel()
    bins = _bins(k)
    strategy = strategy or ("histogram" if bins <= MAX_HISTOGRAM_BINS else "atomic")
    if strategy not in ("histogram", "atomic"):
        raise ValueError(f"strategy={strategy!r}: choose 'histogram' or 'atomic'")
    diff = torch.zeros(bins if strategy == "histogram" else k + 1, dtype=torch.int32, device=pm.device)
    if n:
        pm, ps = pm.contiguous(), ps.contiguous()   # float32 or float64; the kernel works in float64
        centres = sorted_centres.contiguous().to(torch.float64)
        delta_t = torch.tensor([float(delta)], dtype=torch.float64, device=pm.device)
        tk.coverage_kernel[(triton_cdiv(n, BLOCK),)](
            pm, ps, delta_t, centres, diff, n, k, k.bit_length(),
            BLOCK=BLOCK, BINS=bins if strategy == "histogram" else 32, HISTOGRAM=strategy == "histogram",
            enable_fp_fusion=False)
    return diff[:k + 1].long().cumsum(0)[:k]


def fitting_positions(pm: torch.Tensor, ps: torch.Tensor, p_alive: torch.Tensor, a: int, z: int,
                      c: float, delta: float, band: tuple[int, int] | None) -> torch.Tensor:
    """Triton twin of ``pwfn_viz.clustering._fitting``: increasing int64 positions in [a, z) of
    the alive weights that fit ``c``, plus the alive ones in ``band`` (the zero band, or None)."""
    from . import triton_module
    tk = triton_module("_tl_clustering")
    if z <= a:
        return torch.zeros(0, dtype=torch.long, device=pm.device)
    mask = torch.empty(z - a, dtype=torch.uint8, device=pm.device)
    params = torch.tensor([float(delta), float(c)], dtype=torch.float64, device=pm.device)
    band_lo, band_hi = band if band is not None else (0, 0)
    tk.fit_mask_kernel[(triton_cdiv(z - a, BLOCK),)](
        pm.contiguous(), ps.contiguous(), p_alive.contiguous().view(torch.uint8), params, mask,
        a, z, band_lo, band_hi, BLOCK=BLOCK, enable_fp_fusion=False)
    return mask.view(torch.bool).nonzero().squeeze(1) + a
