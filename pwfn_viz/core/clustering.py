"""One PWFN clustering round, fast: ``cluster_round`` over flat ``mu`` and ``sigma`` tensors.

Read :mod:`pwfn_viz.core.clustering_readable` first: it states the method section by section
(candidate centres, which weights fit, the greedy winner, the capped take, growth, sigma joins)
and defines the config, the result and the candidates this module uses. This module computes
exactly the same round (the tests hold the two equal) without its K x N matrix.

Memory stays O(N + K): coverage counts come from sorted band ends with ``searchsorted``, the
winner's fitting weights from a contiguous window of the mu-sorted order, and the counts are
updated incrementally when weights are taken. On a GPU the heavy parts are Triton kernels
(:mod:`pwfn_viz.kernels.clustering`). On the CPU, where torch's fixed cost per operation would
dominate a greedy step, the same round runs in numpy (:mod:`pwfn_viz.core.clustering_cpu`); the
torch code below is then what CUDA tensors, and the Triton interpreter, take.

Example:
    >>> import torch
    >>> mu = torch.tensor([0.5, 0.52, 0.001, -0.26]); sigma = torch.tensor([0.01, 0.05, 0.001, 0.02])
    >>> res = cluster_round(mu, sigma, fraction=1.0)
    >>> res.mu.tolist()
    [0.5, 0.5, 0.0, -0.25]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .clustering_cpu import cpu_cluster_round, stable_order, torch_threads, window_ends
from .clustering_readable import (SIGMA_JOINS, STEP_COLUMNS, ClusterConfig, ClusterResult, candidate_centres,
                                  check_inputs, doublings_until_fit, grow, target_count)


def _smallest(keys: list[torch.Tensor], n_needed: int) -> torch.Tensor:
    """Indices of the ``n_needed`` lexicographically smallest rows of ``keys`` (1-D tensors of one
    length; the last key unique). A selection by k-th values, not a sort, so that temporaries stay
    small when a centre fits most of the network and the cap bites."""
    key = keys[0]
    if n_needed >= key.numel():
        return torch.arange(key.numel(), device=key.device)
    threshold = key.kthvalue(n_needed).values
    closer = (key < threshold).nonzero().squeeze(1)
    tied = (key == threshold).nonzero().squeeze(1)
    n_from_tied = n_needed - closer.numel()
    chosen = tied[:n_from_tied] if len(keys) == 1 else tied[_smallest([k[tied] for k in keys[1:]], n_from_tied)]
    return torch.cat([closer, chosen])


CHUNK = 1 << 16   # elementwise work is done in chunks so temporaries stay O(chunk), not O(N)


def _coverage(sorted_mu, sorted_sigma, delta: float, sorted_candidates: torch.Tensor) -> torch.Tensor:
    """How many bands [mu - delta*sigma, mu + delta*sigma] contain each (value-sorted) candidate.

    Each band covers a contiguous run of sorted candidates, found by binary search; a difference
    array and a cumulative sum turn the runs into counts: O(N log K) time, O(K + chunk) memory.
    On CUDA (or with the triton backend forced) the Triton kernel computes the same counts.
    """
    from .. import kernels
    if kernels.use_triton(sorted_mu):
        return kernels.coverage_counts(sorted_mu, sorted_sigma, delta, sorted_candidates)
    n_candidates = sorted_candidates.numel()
    run_ends = torch.zeros(n_candidates + 1, dtype=torch.long, device=sorted_mu.device)
    for start in range(0, sorted_mu.numel(), CHUNK):
        chunk_mu = sorted_mu[start:start + CHUNK].double()
        chunk_sigma = sorted_sigma[start:start + CHUNK].double()
        first = torch.searchsorted(sorted_candidates, chunk_mu - delta * chunk_sigma, right=False)  # first c >= lo
        stop = torch.searchsorted(sorted_candidates, chunk_mu + delta * chunk_sigma, right=True)    # first c > hi
        run_ends += (torch.bincount(first, minlength=n_candidates + 1)
                     - torch.bincount(stop, minlength=n_candidates + 1))
    return run_ends.cumsum(0)[:n_candidates]


def _fitting(sorted_mu, sorted_sigma, sorted_unassigned, window_start: int, window_stop: int, centre: float,
             delta: float, band: tuple[int, int] | None, count: int | None = None,
             on_device: tuple[torch.Tensor, torch.Tensor] | None = None, mismatches: torch.Tensor | None = None):
    """Sorted positions in [window_start, window_stop) of the unassigned weights that fit ``centre``
    (the same float64 comparisons as ``_coverage``), plus those in the zero band ``band`` when the
    centre is zero. ``count``, when known (the coverage count), lets the Triton kernel's caller
    skip the host sync of a data-dependent ``nonzero``. On CUDA (or with the triton backend forced)
    one Triton kernel builds the mask, reading the centre and delta from ``on_device`` when given,
    and counts a mask that disagrees with ``count`` in ``mismatches`` (the torch path raises at once)."""
    from .. import kernels
    if kernels.use_triton(sorted_mu):
        centre_arg, delta_arg = on_device or (centre, delta)
        return kernels.fitting_positions(sorted_mu, sorted_sigma, sorted_unassigned, window_start, window_stop,
                                         centre_arg, delta_arg, band, count, mismatches)
    found = []
    for start in range(window_start, window_stop, CHUNK):
        end = min(window_stop, start + CHUNK)
        chunk_mu, chunk_sigma = sorted_mu[start:end].double(), sorted_sigma[start:end].double()
        fits = (sorted_unassigned[start:end] & (chunk_mu - delta * chunk_sigma <= centre)
                & (chunk_mu + delta * chunk_sigma >= centre))
        if band is not None and band[0] < end and band[1] > start:
            lo, hi = max(band[0], start) - start, min(band[1], end) - start
            fits[lo:hi] |= sorted_unassigned[start + lo:start + hi]
        found.append((fits.nonzero().squeeze(1) + start).to(torch.int32))   # N < 2^31 positions
    positions = torch.cat(found) if found else torch.zeros(0, dtype=torch.int32, device=sorted_mu.device)
    if count is not None and positions.numel() != count:
        raise AssertionError(f"coverage count {count} and window ({positions.numel()} fit) disagree")
    return positions


def _to_host(t: torch.Tensor) -> list:
    """The one place a round reads device values on the host (a sync on CUDA): twice per pass
    (extent and windows), once per greedy step (winner and count) and once at the end (statistics)."""
    return t.tolist()


def _to_device(t: torch.Tensor, device, dtype=None) -> torch.Tensor:
    """The one place a round copies host values to the device (on CUDA a copy from pageable
    memory waits for the stream: a sync too): a few times per pass, never per greedy step."""
    return t.to(device=device, dtype=dtype)


def _outside_zero(band_mu: torch.Tensor, band_sigma: torch.Tensor, delta: float) -> torch.Tensor:
    """Which float64 bands [mu - delta*sigma, mu + delta*sigma] miss 0 (zero-band weights that the
    coverage count of the zero centre did not include)."""
    return ~((band_mu - delta * band_sigma <= 0) & (band_mu + delta * band_sigma >= 0))


@dataclass
class _Pass:
    """What one greedy pass holds: its candidates on the host and the device, the coverage counts
    (device, candidate order), each candidate's window of the mu-sorted weights and the zero band."""
    candidates: list[float]        # host, (|c|, c) order
    counts: torch.Tensor           # unassigned weights fitting each candidate; -1 once it has won
    sorted_candidates: torch.Tensor   # device, ascending values
    value_rank: torch.Tensor       # value_rank[i] = position of candidate i in value order
    windows: list[list[int]]       # [start, stop) of sorted positions per candidate
    band: tuple[int, int] | None   # sorted positions of |mu| < 2^-b (zero_fix)
    zero_rank: int                 # position of the zero centre in value order
    device_constants: torch.Tensor   # device float64: delta, sigma divisor, candidates (candidate order)

    # The kernels read these scalars by pointer: views, no copies.
    delta = property(lambda self: self.device_constants[0:1])
    divisor = property(lambda self: self.device_constants[1:2])

    def centre(self, i: int) -> torch.Tensor:
        return self.device_constants[2 + i:3 + i]


def _start_pass(sorted_mu, sorted_sigma, n_powers: int, delta: float, cfg: ClusterConfig, zero_band: float) -> _Pass:
    """Candidates with up to n_powers powers of two, their coverage counts and windows: two host reads."""
    device, storage_dtype = sorted_mu.device, sorted_mu.dtype
    band_ends = _to_device(torch.tensor([-zero_band, zero_band], dtype=storage_dtype), device)   # exact in float32
    extent = torch.cat([torch.stack([sorted_mu[0], sorted_mu[-1]]).double(), sorted_sigma.max().double().view(1),
                        torch.searchsorted(sorted_mu, band_ends[:1], right=True).double(),
                        torch.searchsorted(sorted_mu, band_ends[1:]).double()])
    first_mu, last_mu, sigma_max, band_lo, band_hi = _to_host(extent)
    host_candidates = candidate_centres(n_powers, max(-first_mu, last_mu), cfg.b)   # sorted by (|c|, c)
    assert host_candidates[0].item() == 0.0   # the zero centre is identified by value: first
    by_value = torch.argsort(host_candidates)
    sorted_candidates = _to_device(host_candidates[by_value], device)
    value_rank = torch.argsort(by_value)
    zero_rank = int(value_rank[0])
    value_rank = _to_device(value_rank, device)
    counts = _coverage(sorted_mu, sorted_sigma, delta, sorted_candidates).index_select(0, value_rank)
    band = None
    if cfg.zero_fix:  # |mu| < 2^-b is a contiguous slice of the mu-sorted weights
        band = (int(band_lo), int(band_hi))
        band_mu, band_sigma = sorted_mu[band[0]:band[1]].double(), sorted_sigma[band[0]:band[1]].double()
        counts[0] += _outside_zero(band_mu, band_sigma, delta).sum()
    # Each candidate's fitting weights lie in a window of the sorted mu: no band reaches
    # further than 2*delta*max(sigma). The window ends are rounded outward (window_ends).
    lower, upper = window_ends(host_candidates.numpy(), 2 * delta * sigma_max, zero_band,
                               torch.empty(0, dtype=storage_dtype).numpy().dtype)
    ends = _to_device(torch.from_numpy(np.stack([lower, upper])), device)
    windows = torch.stack([torch.searchsorted(sorted_mu, ends[0]),
                           torch.searchsorted(sorted_mu, ends[1], right=True)], 1)
    device_constants = _to_device(torch.cat([torch.tensor([delta, cfg.sigma_divisor], dtype=torch.float64),
                                             host_candidates]), device)
    return _Pass(host_candidates.tolist(), counts, sorted_candidates, value_rank, _to_host(windows), band,
                 zero_rank, device_constants)


def mu_order(mu: torch.Tensor) -> torch.Tensor:
    """The order a round sorts the weights in (``cluster_round(..., order=)`` reuses it): a stable
    argsort of ``mu``, int32 when N < 2^31 (4 bytes per weight fewer)."""
    mu = mu.detach()
    if mu.device.type == "cpu":   # the same permutation, sorted faster (clustering_cpu.stable_order)
        order = torch.from_numpy(stable_order(mu.to(torch.promote_types(mu.dtype, torch.float32)).numpy()))
    else:
        order = torch.argsort(mu, stable=True)
    return order.to(torch.int32) if mu.numel() < 2 ** 31 else order


def _checked_order(order: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    if (not isinstance(order, torch.Tensor) or order.shape != mu.shape or order.device != mu.device
            or order.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"order must be an integer tensor of mu's shape {tuple(mu.shape)} on {mu.device}: "
                         "pass mu_order(mu) for the same mu")
    sorted_mu = mu.detach()[order]
    if not (bool((sorted_mu[1:] >= sorted_mu[:-1]).all())
            and bool((torch.bincount(order.long(), minlength=mu.numel()) == 1).all())):
        raise ValueError("order does not sort mu (it was computed for another mu?): pass mu_order(mu)")
    return order


@dataclass
class _Round:
    """A round's working state. ``network_index``/``sorted_mu``/``sorted_sigma``: the weights
    unassigned at the start of the pass, in mu order (index into the network, mu, sigma floored at
    ``sigma_floor``); the rest is per network weight."""
    network_index: torch.Tensor
    sorted_mu: torch.Tensor
    sorted_sigma: torch.Tensor
    sigma: torch.Tensor            # the input sigma (for the joins)
    new_mu: torch.Tensor
    new_sigma: torch.Tensor
    unassigned: torch.Tensor
    assignment: torch.Tensor       # int32, -1 where not assigned


def _snap(round_state: _Round, pass_state: _Pass, sorted_unassigned, positions, winner: int, centre_id: int,
          std_mu, delta: float, cfg: ClusterConfig, recount: bool) -> None:
    """Move the weights at sorted ``positions`` to candidate ``winner``: mu := c, sigma by the join
    rule (``std_mu``: a 0-dim device tensor), marked assigned; with ``recount``, also take them out
    of the pass's coverage counts. On CUDA (or with the triton backend forced) one Triton kernel
    does all of it for the built-in joins (another join is applied after it, in torch), where the
    torch path below needs about twenty operations."""
    from .. import kernels
    if kernels.use_triton(round_state.sorted_mu):
        in_kernel = cfg.sigma_join in kernels.clustering.JOIN_CODES
        run_ends = kernels.snap(round_state, pass_state, sorted_unassigned, positions, winner, centre_id, std_mu,
                                cfg.sigma_join if in_kernel else "keep", recount)
        if not in_kernel:
            taken = round_state.network_index[positions]
            round_state.new_sigma[taken] = SIGMA_JOINS.get(cfg.sigma_join)(round_state.sigma[taken], std_mu, cfg)
        if recount:
            pass_state.counts -= run_ends.cumsum(0)[:-1].index_select(0, pass_state.value_rank)
        return
    taken = round_state.network_index[positions]
    round_state.new_mu[taken] = pass_state.candidates[winner]
    round_state.new_sigma[taken] = SIGMA_JOINS.get(cfg.sigma_join)(round_state.sigma[taken], std_mu, cfg)
    round_state.assignment[taken] = centre_id
    round_state.unassigned[taken] = False
    sorted_unassigned[positions] = False
    if recount:   # the taken weights no longer count for the remaining centres
        taken_mu, taken_sigma = round_state.sorted_mu[positions], round_state.sorted_sigma[positions]
        pass_state.counts -= _coverage(taken_mu, taken_sigma, delta,
                                       pass_state.sorted_candidates).index_select(0, pass_state.value_rank)
        if pass_state.band is not None:
            band_lo, band_hi = pass_state.band
            in_band = positions[(positions >= band_lo) & (positions < band_hi)]
            pass_state.counts[0] -= _outside_zero(round_state.sorted_mu[in_band].double(),
                                                  round_state.sorted_sigma[in_band].double(), delta).sum()


def cluster_round(mu: torch.Tensor, sigma: torch.Tensor, fraction: float, *,
                  config: ClusterConfig | None = None, round_index: int = 0,
                  order: torch.Tensor | None = None, threads: int | None = 1) -> ClusterResult:
    """Fix ``target_count(fraction, N)`` weights to shared centres, from scratch (docs/method.md,
    clustering; :func:`~pwfn_viz.core.clustering_readable.readable_cluster_round` is the same round,
    written to be read).

    ``mu`` and ``sigma`` are flat tensors over the whole network (any float dtype, any device).
    Returns the snapped ``mu``/``sigma``, the ``fixed_mask``, each weight's centre and a table with
    one row per greedy step. Extra memory is about 50 bytes per weight (no K x N matrix). On a GPU
    a greedy step reads two numbers back to the host (the winner and its count) and nothing else;
    on the CPU the round runs in :mod:`pwfn_viz.core.clustering_cpu` (the same result, bit for bit).

    ``order``: ``mu_order(mu)`` (an argsort of ``mu``), when the caller re-clusters the same mu
    several times (the WhatIf widget): the round then skips its sort. It is checked (a permutation
    that sorts mu), so a stale order raises.

    ``threads``: torch's intra-op threads during the call, the caller's setting restored after
    (``None``: keep the caller's). One by default: a round is mostly small operations, which more
    threads only slow down (on a busy two-core machine, two threads made a round several times
    slower), and the result is then the same whatever the caller set. The step statistics can
    differ in the last bits between thread counts (torch splits large sums by thread); the masks,
    assignments, centres and mu cannot.
    """
    from .. import kernels
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive whole number, or None for torch's setting")
    cfg = config or ClusterConfig()
    with torch_threads(threads):
        check_inputs(mu, sigma, fraction)
        mu, sigma = mu.detach(), sigma.detach()
        order = None if order is None else _checked_order(order, mu)
        n_target = target_count(fraction, mu.numel())
        if mu.device.type == sigma.device.type == "cpu" and not kernels.use_triton(mu):
            return cpu_cluster_round(mu, sigma, n_target, cfg, round_index, order)
        return _device_round(mu, sigma, n_target, cfg, round_index, order)


def _device_round(mu: torch.Tensor, sigma: torch.Tensor, n_target: int, cfg: ClusterConfig, round_index: int,
                  order: torch.Tensor | None) -> ClusterResult:
    """The round in torch, with the Triton kernels where ``kernels.use_triton`` says so (inputs
    checked and detached, ``order`` checked)."""
    device, n_weights = mu.device, mu.numel()
    zero_band = 2.0 ** -cfg.b

    # The unassigned weights in mu order (one sort per round), so that every centre's candidates
    # lie in one contiguous slice; sigma floored. Stored in (at least) float32, which holds every
    # input exactly; all arithmetic on them is float64. Each pass keeps the ones still unassigned.
    storage_dtype = torch.promote_types(mu.dtype, torch.float32)   # float16/bfloat16/float32 -> float32
    network_index = mu_order(mu) if order is None else order
    round_state = _Round(
        network_index=network_index, sorted_mu=mu[network_index].to(storage_dtype),
        sorted_sigma=sigma[network_index].to(torch.promote_types(sigma.dtype, torch.float32)).clamp_(min=cfg.sigma_floor),
        sigma=sigma, new_mu=mu.clone(), new_sigma=sigma.clone(),
        unassigned=torch.ones(n_weights, dtype=torch.bool, device=device),
        assignment=torch.full((n_weights,), -1, dtype=torch.int32, device=device))   # int64 on return
    centres, rows, stats = [], [], []
    mismatches = torch.zeros(1, dtype=torch.int64, device=device)   # coverage count vs fit mask
    n_assigned, n_powers, delta, grow_powers_next, pass_index = 0, 1, cfg.delta, True, 0

    while n_assigned < n_target:
        sorted_unassigned = torch.ones(round_state.sorted_mu.numel(), dtype=torch.bool, device=device)
        pass_state = _start_pass(round_state.sorted_mu, round_state.sorted_sigma, n_powers, delta, cfg, zero_band)
        pass_start, pass_powers = n_assigned, n_powers
        while True:
            # The step's one host read: which candidate fits the most, and how many. The first
            # maximum wins: ties go to the smaller |c|, then c < 0 (candidate order).
            n_fit, winner = torch.max(pass_state.counts, 0)
            winner, n_fit = _to_host(torch.stack([winner, n_fit]))
            if n_fit <= 0:
                break
            centre = pass_state.candidates[winner]
            pass_state.counts[winner] = -1               # a centre wins at most once per pass
            window_start, window_stop = pass_state.windows[winner]
            band = pass_state.band if centre == 0.0 else None
            positions = _fitting(round_state.sorted_mu, round_state.sorted_sigma, sorted_unassigned, window_start,
                                 window_stop, centre, delta, band, n_fit,
                                 (pass_state.centre(winner), pass_state.delta), mismatches)
            n_needed = n_target - n_assigned
            if n_fit > n_needed:  # the cap bites: closest first, ties by |mu|, then network index
                # in place on the fresh tensor the indexing made: one float64 temporary per weight
                distance = (round_state.sorted_mu[positions].double().sub_(centre).abs_()
                            .div_(round_state.sorted_sigma[positions].double()))
                if band is not None:
                    distance.masked_fill_((positions >= band[0]) & (positions < band[1]), 0.0)
                positions = positions[_smallest([distance, round_state.sorted_mu[positions].abs(),
                                                 round_state.network_index[positions]], n_needed)]
            n_taken = min(n_fit, n_needed)

            # Record the step (its statistics stay on the device until the round ends), then snap.
            var_mu, mean_mu = torch.var_mean(round_state.sorted_mu[positions].double(), correction=0)
            taken_sigma = round_state.sigma[round_state.network_index[positions]].double()
            var_sigma, mean_sigma = torch.var_mean(taken_sigma, correction=0)
            std_mu = var_mu.sqrt()
            stats.append(torch.stack([mean_mu, std_mu, mean_sigma, var_sigma.sqrt()]))
            rows.append(dict(round=round_index, pass_index=pass_index, step=len(rows), P=n_powers,
                             delta=delta, centre=centre, n_fit=n_fit, n_taken=n_taken))
            n_assigned += n_taken
            _snap(round_state, pass_state, sorted_unassigned, positions, winner, len(centres), std_mu, delta, cfg,
                  recount=n_assigned < n_target)
            centres.append(centre)
            if n_assigned >= n_target:
                break
        if n_assigned < n_target:  # keep the weights still unassigned, then grow (readable section e)
            round_state.network_index = round_state.network_index[sorted_unassigned]
            round_state.sorted_mu = round_state.sorted_mu[sorted_unassigned]
            round_state.sorted_sigma = round_state.sorted_sigma[sorted_unassigned]
            n_powers, delta, grow_powers_next = grow(n_powers, delta, grow_powers_next, cfg.max_powers,
                                                     cfg.delta_growth)
            pass_index += 1
            if n_assigned == pass_start and pass_powers == cfg.max_powers:   # same candidates: skip empty passes
                n_skipped, delta = doublings_until_fit(round_state.sorted_mu.double(), round_state.sorted_sigma.double(),
                                                       pass_state.sorted_candidates, delta, cfg.delta_growth)
                pass_index += n_skipped
                grow_powers_next ^= bool(n_skipped % 2)

    steps = pd.DataFrame(rows, columns=STEP_COLUMNS)
    *values, n_mismatched = _to_host(torch.cat([torch.stack(stats).flatten(), mismatches.double()]))
    if n_mismatched:
        raise AssertionError(f"coverage counts and fit masks disagreed in {int(n_mismatched)} greedy steps (a kernel "
                             "bug: please report it, with PWFN_BACKEND=torch as the workaround)")
    steps[["mu_mean", "mu_std", "sigma_mean", "sigma_std"]] = [values[i:i + 4] for i in range(0, len(values), 4)]
    return ClusterResult(mu=round_state.new_mu, sigma=round_state.new_sigma, fixed_mask=~round_state.unassigned,
                         assignment=round_state.assignment.long(),
                         centres=torch.tensor(centres, dtype=torch.float64), steps=steps)


__all__ = ["CHUNK", "SIGMA_JOINS", "STEP_COLUMNS", "ClusterConfig", "ClusterResult", "candidate_centres",
           "cluster_round", "mu_order", "target_count"]
