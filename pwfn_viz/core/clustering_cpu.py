"""The CPU path of :func:`pwfn_viz.core.clustering.cluster_round`: the same round, bit for bit,
with the greedy steps in numpy.

A round on the CPU is one sort, a few passes over the weights and a few hundred greedy steps. A
greedy step touches small arrays (K candidates, the winner's window), so its cost is the fixed
cost per operation: several microseconds in torch, about one in numpy. The work is therefore
arranged so that the passes do the arithmetic and a step only counts and indexes:

* once per pass, each weight's band [mu - delta*s, mu + delta*s] becomes the run of value-sorted
  candidates it holds, ranks ``first`` (the first candidate >= the lower end) to ``stop`` (the
  first > the upper end), small integers per weight. They give the coverage counts (a difference
  array and a cumulative sum), the winner's fitting weights (``first <= rank < stop``) and, for
  the weights a step takes, what to subtract from the counts, all without float arithmetic;
* the runs come from a lookup table on the grid of multiples of 2^-b that every candidate lies on
  (exact: see ``_band_runs``), where a binary search per weight would cost more than the rest of
  the pass; a binary search remains for candidate sets too wide for a table;
* the snapped mu and the joined sigma are written once, at the end of the round, in torch (its
  dtype conversions are the torch path's); a sigma join outside the built-in ones still runs once
  per step, on that step's weights, as in the torch path;
* the stable sort by mu is a plain (SIMD) sort of distinct int64 keys, several times faster than
  a stable argsort; a caller that re-clusters the same mu and sigma (the WhatIf widget) sorts
  once: :class:`SortedInputs`, :func:`cluster_sorted`.

Every float computation that decides something (band ends, distances, the statistics) is the
torch path's, in the same precision and order, so the results are identical (the tests hold it).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .clustering_readable import (SIGMA_JOINS, STEP_COLUMNS, ClusterConfig, ClusterResult, candidate_centres,
                                  doublings_until_fit, grow, join_divide, join_keep, join_std_mu, target_count)

CHUNK = 1 << 16          # per-weight arithmetic of a pass runs in chunks: temporaries O(chunk), in cache
MAX_GRID_TABLE = 1 << 20   # wider candidate sets (absurd outliers, a large b) use a binary search
ELEMENTWISE_JOINS = (join_std_mu, join_keep, join_divide)   # one call can serve all of a round's steps


@contextlib.contextmanager
def torch_threads(n_threads: int | None):
    """Run the body with ``n_threads`` torch intra-op threads, restoring the caller's setting
    after (``None``: leave it as it is)."""
    before = torch.get_num_threads()
    if n_threads is None or n_threads == before:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stable_order(values: np.ndarray) -> np.ndarray:
    """The stable argsort of a 1-D float array (int64): ascending, ties in index order, -0.0 tied
    with 0.0, as ``torch.argsort(stable=True)``.

    For float32 (below 2^32 values) it sorts int64 keys instead: the high half an integer in the
    value's order (the magnitude's bits, negated for negative values), the low half the index. The
    keys are distinct, so any sort of them gives the stable order, and numpy sorts int64 with SIMD
    instructions: several times faster than a stable argsort of the floats."""
    n = values.size
    if values.dtype != np.float32 or n >= 2 ** 32:
        return np.argsort(values, kind="stable")
    keys = values.view(np.int32).astype(np.int64)
    sign = keys >> 31                        # -1 for a negative float (and -0.0), else 0
    keys &= 0x7FFFFFFF                       # the magnitude's bits, ordered as the magnitude
    keys ^= sign
    keys -= sign                             # negated for negative floats: -0.0 becomes 0
    keys <<= 32
    keys |= np.arange(n, dtype=np.int64)
    keys.sort()
    keys &= 0xFFFFFFFF
    return keys


def _histogram(values: np.ndarray, length: int) -> np.ndarray:
    """``np.bincount(values, minlength=length)`` for the nearly sorted ranks of mu-sorted weights,
    counted in an interleaved order: in their own order they add to the same counter back to back,
    a chain of dependent increments that makes the count about 1.6x slower."""
    ways = 16
    n = values.size - values.size % ways
    if n < 4096:
        return np.bincount(values, minlength=length)
    counts = np.bincount(values[:n].reshape(ways, -1).T.ravel(), minlength=length)
    counts[:length] += np.bincount(values[n:], minlength=length)[:length]
    return counts


@np.errstate(over="ignore")   # a band too wide for float64 ends at +-inf, as in the torch path
def _band_runs(mu: np.ndarray, sigma: np.ndarray, delta: float, sorted_candidates: np.ndarray,
               b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each weight, the value ranks [first, stop) of the candidates its float64 band
    [mu - delta*sigma, mu + delta*sigma] holds (``searchsorted`` left of the lower end, right of
    the upper end, exactly), and the coverage count of each candidate (value order).

    Every candidate is k * 2^-b for an integer k, so with x = end * 2^-b (exact: a power of two),
    "candidate < lower end" is "k < ceil(x)" and "candidate <= upper end" is "k <= floor(x)": the
    ranks are a table lookup at ceil(x) and floor(x) + 1, once x is clipped to the table."""
    n, k = mu.size, sorted_candidates.size
    rank_dtype = np.int16 if k < 2 ** 15 else np.int32
    first, stop = np.empty(n, rank_dtype), np.empty(n, rank_dtype)
    scale = 2.0 ** b
    grid = sorted_candidates * scale
    k_low, k_high = grid[0], grid[-1]
    table = None
    if k_high - k_low < MAX_GRID_TABLE and np.array_equal(grid, np.round(grid)):
        # table[t]: the number of candidates below grid point k_low + t, t = 0 .. k_high - k_low + 1
        table = np.zeros(int(k_high - k_low) + 2, rank_dtype)
        table[(grid - k_low).astype(np.intp) + 1] = 1
        np.cumsum(table, out=table)

    def below(points: np.ndarray, shift: float) -> np.ndarray:
        """Candidates below the grid points ``points + shift`` (points integral, or +-inf)."""
        np.clip(points, k_low - shift, k_high + 1.0 - shift, out=points)
        points -= k_low - shift
        return table[points.astype(np.intp)]

    run_ends = np.zeros(k + 1, np.int64)
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        half_width = sigma[start:end].astype(np.float64)
        half_width *= delta                          # delta * sigma, then mu -+ it: as the torch path
        lower = mu[start:end].astype(np.float64)
        upper = lower + half_width
        lower -= half_width
        if table is None:
            first[start:end] = np.searchsorted(sorted_candidates, lower, side="left")
            stop[start:end] = np.searchsorted(sorted_candidates, upper, side="right")
        else:   # the ranks at ceil(lower * 2^b) and floor(upper * 2^b) + 1
            lower *= scale
            first[start:end] = below(np.ceil(lower, out=lower), 0.0)
            upper *= scale
            stop[start:end] = below(np.floor(upper, out=upper), 1.0)
        run_ends += _histogram(first[start:end], k + 1)
        run_ends -= _histogram(stop[start:end], k + 1)
    return first, stop, np.cumsum(run_ends[:k])


@dataclass
class _Weights:
    """The weights unassigned at the start of a pass, in mu order: network index, mu and floored
    sigma (float32, or float64 for float64 inputs)."""
    index: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    def keep(self, mask: np.ndarray) -> _Weights:
        """The weights where ``mask`` (those still unassigned after a pass), in the same order."""
        return _Weights(self.index[mask], self.mu[mask], self.sigma[mask])


@dataclass
class _Pass:
    """One greedy pass: candidates in (|c|, c) order, their value ranks, coverage counts (candidate
    order, -1 once won), each weight's run of ranks, the candidates' windows of sorted positions,
    the zero band (sorted positions of |mu| < 2^-b, with zero_fix) and the zero centre's rank."""
    candidates: np.ndarray
    sorted_candidates: np.ndarray
    value_rank: np.ndarray
    counts: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    windows: np.ndarray
    band: tuple[int, int] | None
    zero_rank: int

    def fitting(self, winner: int, unassigned: np.ndarray) -> np.ndarray:
        """Sorted positions of the unassigned weights whose band holds candidate ``winner``, plus
        the unassigned ones in the zero band when it is the zero centre (``_fitting`` of the
        torch path: the same weights)."""
        start, stop = self.windows[winner].tolist()
        rank = int(self.value_rank[winner])    # a Python int: a numpy int64 would widen the int16 compares
        fits = unassigned[start:stop] & (self.first[start:stop] <= rank) & (self.stop[start:stop] > rank)
        if self.band is not None and self.candidates[winner] == 0.0:
            lo, hi = max(self.band[0], start), min(self.band[1], stop)
            if lo < hi:
                fits[lo - start:hi - start] |= unassigned[lo:hi]
        return np.flatnonzero(fits) + start

    def take_out(self, positions: np.ndarray) -> None:
        """Taken weights no longer count for any candidate (nor, in the zero band, for zero)."""
        k = self.sorted_candidates.size
        run_ends = _histogram(self.first[positions], k + 1)
        run_ends -= _histogram(self.stop[positions], k + 1)
        self.counts -= np.cumsum(run_ends[:k])[self.value_rank]
        if self.band is not None and self.counts[0] >= 0:   # (once zero has won, its count no longer matters)
            lo, hi = np.searchsorted(positions, self.band)   # positions ascend: those in the band are a slice
            if lo < hi:
                in_band = positions[lo:hi]
                holds_zero = (self.first[in_band] <= self.zero_rank) & (self.stop[in_band] > self.zero_rank)
                self.counts[0] -= in_band.size - np.count_nonzero(holds_zero)


@functools.lru_cache(maxsize=32)
def _candidates(n_powers: int, max_abs: float, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``candidate_centres`` ((|c|, c) order), each one's rank in value order and the values in
    value order, remembered: the passes of a schedule ask for a handful of sets (the largest |mu|
    rarely changes), and building one costs milliseconds. Read-only."""
    candidates = candidate_centres(n_powers, max_abs, b).numpy()
    by_value = np.argsort(candidates)
    arrays = candidates, np.argsort(by_value), candidates[by_value]
    for array in arrays:
        array.flags.writeable = False
    return arrays


@np.errstate(over="ignore")   # ends beyond the stored dtype's range become +-inf
def window_ends(candidates: np.ndarray, reach: float, zero_band: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate (row 0: the zero centre, whose window also holds the zero band), the stored
    mu values [lower, upper] between which its fitting weights lie: c -+ ``reach`` (twice the
    widest half-band, which covers float64 rounding of the fit test), rounded outward, by one ulp
    in float64 (c -+ reach is itself rounded) and then to the stored ``dtype``. Rounded to nearest
    instead, a window can miss a weight that sits on its centre when ``reach`` is small next to
    the spacing of floats there (mu = 100 in float32, sigma at the floor). Search the lower end on
    the left of equal values and the upper end on the right. Shared by both paths."""
    lower = np.nextafter(candidates - reach, -np.inf)
    upper = np.nextafter(candidates + reach, np.inf)
    lower[0], upper[0] = min(lower[0], -zero_band), max(upper[0], zero_band)
    stored_lower, stored_upper = lower.astype(dtype), upper.astype(dtype)
    stored_lower = np.where(stored_lower > lower, np.nextafter(stored_lower, dtype.type(-np.inf)), stored_lower)
    stored_upper = np.where(stored_upper < upper, np.nextafter(stored_upper, dtype.type(np.inf)), stored_upper)
    return stored_lower, stored_upper


def _start_pass(weights: _Weights, n_powers: int, delta: float, cfg: ClusterConfig) -> _Pass:
    """Candidates with up to ``n_powers`` powers of two for the weights left, their counts, runs
    and windows (``_start_pass`` of the torch path)."""
    mu, zero_band = weights.mu, 2.0 ** -cfg.b
    candidates, value_rank, sorted_candidates = _candidates(n_powers, max(-float(mu[0]), float(mu[-1])), cfg.b)
    first, stop, coverage = _band_runs(mu, weights.sigma, delta, sorted_candidates, cfg.b)
    counts = coverage[value_rank]
    band = None
    zero_rank = int(value_rank[0])   # the zero centre comes first in (|c|, c) order
    if cfg.zero_fix:   # |mu| < 2^-b: a contiguous slice of the sorted mu (band ends exact in float32)
        band_ends = np.array([-zero_band, zero_band], mu.dtype)
        band = (int(np.searchsorted(mu, band_ends[0], side="right")), int(np.searchsorted(mu, band_ends[1])))
        in_band = slice(*band)
        counts[0] += np.count_nonzero((first[in_band] > zero_rank) | (stop[in_band] <= zero_rank))
    # A candidate's fitting weights lie within 2*delta*max(sigma) of it in mu: a window of the sorted mu.
    lower, upper = window_ends(candidates, 2 * delta * float(weights.sigma.max()), zero_band, mu.dtype)
    windows = np.stack([np.searchsorted(mu, lower, side="left"), np.searchsorted(mu, upper, side="right")], 1)
    return _Pass(candidates, sorted_candidates, value_rank, counts, first, stop, windows, band, zero_rank)


def _smallest(keys: list[np.ndarray], n_needed: int) -> np.ndarray:
    """Indices of the ``n_needed`` lexicographically smallest rows of ``keys`` (the last key
    unique), in the order ``_smallest`` of the torch path gives them: those below the k-th value
    of the first key in increasing index, then the tied ones chosen by the next keys."""
    key = keys[0]
    if n_needed >= key.size:
        return np.arange(key.size)
    threshold = np.partition(key, n_needed - 1)[n_needed - 1]
    closer, tied = np.flatnonzero(key < threshold), np.flatnonzero(key == threshold)
    n_from_tied = n_needed - closer.size
    chosen = tied[:n_from_tied] if len(keys) == 1 else tied[_smallest([k[tied] for k in keys[1:]], n_from_tied)]
    return np.concatenate([closer, chosen])


def _storage(t: torch.Tensor) -> np.ndarray:
    """A CPU float tensor as a numpy array of at least float32 (exact for half and bfloat16)."""
    return t.to(torch.promote_types(t.dtype, torch.float32)).numpy()


def _by_step(per_step: torch.Tensor, assignment: np.ndarray) -> torch.Tensor:
    """``per_step[assignment]``, any dtype, arbitrary where the assignment is -1: a numpy gather
    of bit patterns (numpy has no bfloat16) from a table small enough to stay in cache."""
    as_bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[per_step.element_size()]
    table = torch.cat([per_step, per_step.new_zeros(1)]).view(as_bits).numpy()   # index -1: the extra entry
    return torch.from_numpy(np.take(table, assignment)).view(per_step.dtype)


@dataclass
class SortedInputs:
    """A round's inputs in mu order: the detached ``mu`` and ``sigma``, their values in numpy (at
    least float32), the stable order ``index`` and the sorted mu, all read-only, and the sorted
    sigma floored, per floor. What a round does before its first pass, done once for every
    re-clustering of the same mu and sigma (the WhatIf widget): :func:`cluster_sorted`."""
    mu: torch.Tensor
    sigma: torch.Tensor
    mu_values: np.ndarray
    sigma_values: np.ndarray
    index: np.ndarray
    sorted_mu: np.ndarray
    floored: dict

    @classmethod
    def of(cls, mu: torch.Tensor, sigma: torch.Tensor, order: torch.Tensor | None = None) -> SortedInputs:
        """``mu`` and ``sigma`` (CPU tensors, checked by the caller) in mu order; ``order``: ``mu_order(mu)``
        (checked by the caller), else sorted here."""
        mu, sigma = mu.detach(), sigma.detach()
        mu_values, sigma_values = _storage(mu), _storage(sigma)
        index = stable_order(mu_values) if order is None else order.numpy().astype(np.int64)
        arrays = mu_values, sigma_values, index, np.take(mu_values, index)
        for array in arrays:
            array.flags.writeable = False   # shared by every round: none may write to them
        return cls(mu, sigma, *arrays, {})

    def floored_sigma(self, floor: float) -> np.ndarray:
        """The sorted sigma floored at ``floor``, as the torch path floors it (read-only)."""
        if floor not in self.floored:
            sorted_sigma = torch.from_numpy(np.take(self.sigma_values, self.index))
            self.floored[floor] = sorted_sigma.clamp_(min=floor).numpy()
            self.floored[floor].flags.writeable = False
        return self.floored[floor]


def cluster_sorted(inputs: SortedInputs, fraction: float, cfg: ClusterConfig, round_index: int = 0) -> ClusterResult:
    """``cluster_round(mu, sigma, fraction, config=cfg, round_index=round_index, threads=None)`` for
    ``inputs = SortedInputs.of(mu, sigma)``, CPU tensors that ``check_inputs`` accepted once: the
    same result, bit for bit, without the checks of mu and sigma and the sort at every call."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    return _sorted_round(inputs, target_count(fraction, inputs.mu.numel()), cfg, round_index)


def cpu_cluster_round(mu: torch.Tensor, sigma: torch.Tensor, n_target: int, cfg: ClusterConfig, round_index: int,
                      order: torch.Tensor | None) -> ClusterResult:
    """The round of ``cluster_round`` (inputs checked, detached, on the CPU; ``order`` checked)."""
    return _sorted_round(SortedInputs.of(mu, sigma, order), n_target, cfg, round_index)


def _sorted_round(inputs: SortedInputs, n_target: int, cfg: ClusterConfig, round_index: int) -> ClusterResult:
    """The round, fixing ``n_target`` weights, from its inputs in mu order (never written to)."""
    mu, sigma, sigma_values = inputs.mu, inputs.sigma, inputs.sigma_values
    n_weights = mu.numel()
    weights = _Weights(inputs.index, inputs.sorted_mu, inputs.floored_sigma(cfg.sigma_floor))

    assignment = np.full(n_weights, -1, np.int64)
    join = SIGMA_JOINS.get(cfg.sigma_join)
    new_sigma = sigma.clone() if join not in ELEMENTWISE_JOINS else None   # else written at the end
    centres, rows, stds = [], [], []
    n_assigned, n_powers, delta, grow_powers_next, pass_index = 0, 1, cfg.delta, True, 0
    while n_assigned < n_target:
        unassigned = np.ones(weights.index.size, bool)
        pass_state = _start_pass(weights, n_powers, delta, cfg)
        pass_start, pass_powers = n_assigned, n_powers
        while True:
            winner = int(pass_state.counts.argmax())     # the first maximum: ties to (|c|, c) order
            n_fit = int(pass_state.counts[winner])
            if n_fit <= 0:
                break
            centre = float(pass_state.candidates[winner])
            pass_state.counts[winner] = -1               # a centre wins at most once per pass
            positions = pass_state.fitting(winner, unassigned)
            if positions.size != n_fit:
                raise AssertionError(f"coverage count {n_fit} and window ({positions.size} fit) disagree")
            n_needed = n_target - n_assigned
            if n_fit > n_needed:   # the cap bites: closest first, ties by |mu|, then network index
                fitting_mu = weights.mu[positions]
                with np.errstate(over="ignore"):   # an absurd |mu - c| / sigma is inf, as in the torch path
                    distance = np.abs(fitting_mu.astype(np.float64) - centre)
                    distance /= weights.sigma[positions].astype(np.float64)
                if pass_state.band is not None and centre == 0.0:
                    distance[(positions >= pass_state.band[0]) & (positions < pass_state.band[1])] = 0.0
                positions = positions[_smallest([distance, np.abs(fitting_mu), weights.index[positions]], n_needed)]
            n_taken = positions.size

            # The step's statistics (torch's var_mean, as the torch path), then the snap.
            taken = weights.index[positions]
            var_mu, mean_mu = torch.var_mean(torch.from_numpy(weights.mu[positions].astype(np.float64)), correction=0)
            var_sigma, mean_sigma = torch.var_mean(torch.from_numpy(sigma_values[taken].astype(np.float64)),
                                                   correction=0)
            std_mu = var_mu.sqrt()   # torch's square root, which is not always math.sqrt's
            stds.append(std_mu.item())
            rows.append(dict(round=round_index, pass_index=pass_index, step=len(rows), P=n_powers, delta=delta,
                             centre=centre, n_fit=n_fit, n_taken=n_taken, mu_mean=mean_mu.item(), mu_std=stds[-1],
                             sigma_mean=mean_sigma.item(), sigma_std=var_sigma.sqrt().item()))
            if join not in ELEMENTWISE_JOINS:   # any other join sees each step's weights, as in the torch path
                taken_t = torch.from_numpy(taken)
                new_sigma[taken_t] = join(sigma[taken_t], std_mu, cfg)
            assignment[taken] = len(centres)
            unassigned[positions] = False
            centres.append(centre)
            n_assigned += n_taken
            if n_assigned >= n_target:
                break
            pass_state.take_out(positions)
        if n_assigned < n_target:   # keep the weights still unassigned, then grow (readable section e)
            weights = weights.keep(unassigned)
            n_powers, delta, grow_powers_next = grow(n_powers, delta, grow_powers_next, cfg.max_powers,
                                                     cfg.delta_growth)
            pass_index += 1
            if n_assigned == pass_start and pass_powers == cfg.max_powers:   # same candidates: skip empty passes
                n_skipped, delta = doublings_until_fit(
                    torch.from_numpy(weights.mu).double(), torch.from_numpy(weights.sigma).double(),
                    torch.tensor(pass_state.sorted_candidates), delta, cfg.delta_growth)
                pass_index += n_skipped
                grow_powers_next ^= bool(n_skipped % 2)

    # The snap, for all steps at once: each fixed weight's centre and, for the built-in joins, its
    # step's std of mu, converted to the weights' dtypes by torch (as the torch path converts them).
    fixed = torch.from_numpy(assignment >= 0)
    centres_t = torch.tensor(centres, dtype=torch.float64)
    new_mu = torch.where(fixed, _by_step(centres_t.to(mu.dtype), assignment), mu)
    if join in ELEMENTWISE_JOINS:
        new_sigma = torch.where(fixed, join(sigma, _by_step(torch.tensor(stds, dtype=torch.float64), assignment), cfg),
                                sigma)
    return ClusterResult(mu=new_mu, sigma=new_sigma, fixed_mask=fixed, assignment=torch.from_numpy(assignment),
                         centres=centres_t, steps=pd.DataFrame(rows, columns=STEP_COLUMNS))
