"""Clustering-round kernels: coverage counts and the winning centre's fit mask.

Exact twins of the torch code in :mod:`pwfn_viz.core.clustering` (``_coverage``, ``_fitting`` and
``_snap``), which calls them when :func:`pwfn_viz.kernels.use_triton` says so:

* :func:`coverage_counts`: for each value-sorted centre, how many intervals
  ``[mu - delta*sigma, mu + delta*sigma]`` contain it. One pass over the weights: each finds the run of
  centres its interval covers by two binary searches, and the run ends go into a difference
  array of length K + 1 (a per-block histogram, then one atomic add per bin); a cumulative sum
  turns it into counts. O(N log K) work, O(K) extra memory, no host round trip.
* :func:`fitting_positions`: positions in ``[a, z)`` of the unassigned weights whose interval
  holds centre ``c`` (or that lie in the zero band), in increasing order; given their number
  (the coverage count) it needs no host round trip.

Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)::

    sorted_mu = torch.tensor([0.1, 0.5], dtype=torch.float64); sigma = torch.full((2,), 0.2, dtype=torch.float64)
    coverage_counts(sorted_mu, sigma, 1.0, torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64))
    # tensor([1, 2, 1]): [-0.1, 0.3] holds 0 and 0.25, [0.3, 0.7] holds 0.5
"""
from __future__ import annotations

import torch

BLOCK = 1024
MAX_HISTOGRAM_BINS = 4096   # more centres than this: one atomic add per interval end instead


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _scalar(x, device) -> torch.Tensor:
    """A float64 scalar the kernels read by pointer: ``x`` itself when it is already a device
    tensor (a view into a pass's constants: no host-to-device copy, which would sync the stream),
    else a new one-element tensor."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.tensor([float(x)], dtype=torch.float64, device=device)


def _bins(k: int) -> int:
    """Histogram size: a power of two, at least one bin per warp lane, holding 0..k."""
    return max(32, 1 << k.bit_length())


def coverage_counts(sorted_mu: torch.Tensor, sorted_sigma: torch.Tensor, delta: float, sorted_centres: torch.Tensor,
                    strategy: str | None = None) -> torch.Tensor:
    """Triton twin of ``pwfn_viz.core.clustering._coverage`` (same int64 counts, exactly).

    ``sorted_mu``, ``sorted_sigma``: float32 or float64 band centres and half-widths per ``delta`` (the arithmetic is
    float64; ``delta`` a float or a float64 device tensor of one element); ``sorted_centres``:
    float64, ascending. ``strategy`` ("histogram" or "atomic") overrides the automatic choice of
    how the block's interval ends reach the difference array (used by the GPU self-check).
    """
    from .backend import triton_module
    tk = triton_module("_tl_clustering")
    k, n = sorted_centres.numel(), sorted_mu.numel()
    bins = _bins(k)
    strategy = strategy or ("histogram" if bins <= MAX_HISTOGRAM_BINS else "atomic")
    if strategy not in ("histogram", "atomic"):
        raise ValueError(f"strategy={strategy!r}: choose 'histogram' or 'atomic'")
    diff = torch.zeros(bins if strategy == "histogram" else k + 1, dtype=torch.int32, device=sorted_mu.device)
    if n:
        # float32 or float64; the kernel works in float64
        sorted_mu, sorted_sigma = sorted_mu.contiguous(), sorted_sigma.contiguous()
        centres = sorted_centres.contiguous().to(torch.float64)
        delta_t = _scalar(delta, sorted_mu.device)
        tk.coverage_kernel[(triton_cdiv(n, BLOCK),)](
            sorted_mu, sorted_sigma, delta_t, centres, diff, n, k, k.bit_length(),
            BLOCK=BLOCK, BINS=bins if strategy == "histogram" else 32, HISTOGRAM=strategy == "histogram",
            enable_fp_fusion=False)
    return diff[:k + 1].long().cumsum(0)[:k]


def fitting_positions(sorted_mu: torch.Tensor, sorted_sigma: torch.Tensor, sorted_unassigned: torch.Tensor,
                      window_start: int, window_stop: int, centre: float, delta: float, band: tuple[int, int] | None,
                      count: int | None = None, mismatches: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of ``pwfn_viz.core.clustering._fitting``: increasing int64 positions in
    [window_start, window_stop) of the unassigned weights that fit ``centre``, plus the unassigned
    ones in ``band`` (the zero band, or None).

    ``centre``, ``delta``: floats, or float64 device tensors of one element (no host-to-device copy).
    ``count``: how many fit, when the caller knows (the coverage count). The positions are then
    gathered with ``nonzero_static``, which needs no host sync, where ``nonzero`` must first
    copy its result's size to the host; ``mismatches`` (a one-element int64 device tensor) then
    counts the calls whose mask disagreed with ``count``, for the caller to check without a sync."""
    from .backend import triton_module
    tk = triton_module("_tl_clustering")
    if window_stop <= window_start:
        return torch.zeros(0, dtype=torch.long, device=sorted_mu.device)
    device = sorted_mu.device
    mask = torch.empty(window_stop - window_start, dtype=torch.uint8, device=device)
    band_lo, band_hi = band if band is not None else (0, 0)
    tk.fit_mask_kernel[(triton_cdiv(window_stop - window_start, BLOCK),)](
        sorted_mu.contiguous(), sorted_sigma.contiguous(), sorted_unassigned.contiguous().view(torch.uint8),
        _scalar(delta, device), _scalar(centre, device), mask,
        window_start, window_stop, band_lo, band_hi, BLOCK=BLOCK, enable_fp_fusion=False)
    if count is None:
        return mask.view(torch.bool).nonzero().squeeze(1) + window_start
    if mismatches is not None:   # the caller reads it once per round (a count that disagrees with
        mismatches += mask.sum() != count   # the mask would pad or cut the positions silently)
    return torch.nonzero_static(mask.view(torch.bool), size=count).squeeze(1) + window_start


# The sigma joins (pwfn_viz.core.clustering_readable.SIGMA_JOINS) the snap kernel computes itself.
JOIN_CODES = {"std_mu": 0, "keep": 1, "divide": 2}


def snap(round_state, pass_state, sorted_unassigned: torch.Tensor, positions: torch.Tensor, winner: int,
         centre_id: int, std_mu: torch.Tensor, sigma_join: str, recount: bool) -> torch.Tensor | None:
    """Triton twin of the torch path of ``pwfn_viz.core.clustering._snap``: one kernel moves the
    weights at sorted ``positions`` to candidate ``winner`` of the pass ``pass_state`` (mu, sigma by
    the join rule ``sigma_join``, a key of ``JOIN_CODES``, assignment, unassigned flags) and, with
    ``recount``, returns the difference array (int32, K + 1) whose cumulative sum is the coverage
    the taken weights held (value order, the zero band's extra count included); None without
    ``recount``. Scalars are read by pointer from ``pass_state.device_constants`` and ``std_mu`` (a
    float64 device scalar): nothing is copied from the host."""
    from .backend import triton_module
    tk = triton_module("_tl_clustering")
    k = pass_state.sorted_candidates.numel()
    run_ends = torch.zeros(k + 1, dtype=torch.int32, device=positions.device) if recount else None
    n_taken = positions.numel()
    if n_taken:
        band_lo, band_hi = pass_state.band if pass_state.band is not None else (0, 0)
        state = round_state
        tk.snap_kernel[(triton_cdiv(n_taken, BLOCK),)](
            positions.contiguous(), state.network_index, state.sorted_mu, state.sorted_sigma, state.sigma.contiguous(),
            state.new_mu, state.new_sigma, state.assignment, state.unassigned.view(torch.uint8),
            sorted_unassigned.view(torch.uint8), pass_state.centre(winner), pass_state.delta, std_mu.view(1),
            pass_state.divisor, pass_state.sorted_candidates, run_ends if recount else state.assignment,
            n_taken, centre_id, k, k.bit_length(), band_lo, band_hi, pass_state.zero_rank,
            BLOCK=BLOCK, JOIN=JOIN_CODES[sigma_join], RECOUNT=recount, enable_fp_fusion=False,
            MU_VIA_F32=state.new_mu.dtype != torch.float64, SIGMA_VIA_F32=state.new_sigma.dtype != torch.float64)
    return run_ends
