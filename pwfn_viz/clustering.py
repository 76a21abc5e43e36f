"""One PWFN clustering round: a pure function over flat ``mu`` and ``sigma`` tensors.

Read top to bottom: candidate centres (powers of two and their sums), then the greedy loop of
``cluster_round`` (METHOD.md section 5). A weight *fits* a centre ``c`` when ``c`` lies inside its
interval ``[mu - delta*sigma, mu + delta*sigma]``; the centre that fits the most unassigned weights
wins and takes them closest-first (distance ``|mu - c| / sigma``), capped at the round's target.

Memory stays O(N + K): coverage counts come from sorted interval ends with ``searchsorted``, the
winner's fitting weights from a contiguous window of the mu-sorted order, and the counts are
updated incrementally when weights are taken. No K x N matrix is ever built.

Example:
    >>> import torch
    >>> mu = torch.tensor([0.5, 0.52, 0.001, -0.26]); sigma = torch.tensor([0.01, 0.05, 0.001, 0.02])
    >>> res = cluster_round(mu, sigma, fraction=1.0)
    >>> res.mu.tolist()
    [0.5, 0.5, 0.0, -0.25]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
import torch

SIGMA_JOINS = ("std_mu", "keep", "divide")
STEP_COLUMNS = ["round", "pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken",
                "mu_mean", "mu_std", "sigma_mean", "sigma_std"]


@dataclass
class ClusterConfig:
    """Settings of one clustering round (paper defaults)."""
    zero_fix: bool = True          # |mu| < 2^-b fits the zero centre at distance 0
    b: int = 7                     # smallest power of two is 2^-b
    max_order: int = 4             # centres are sums of up to max_order powers of two
    delta: float = 1.0             # starting width of the acceptance band, in sigmas
    sigma_floor: float = 2.0 ** -20
    sigma_join: str = "std_mu"     # new sigma of a snapped weight: std_mu | keep | divide
    sigma_divisor: float = 10.0    # used by sigma_join="divide"

    def __post_init__(self):
        if self.sigma_join not in SIGMA_JOINS:
            raise ValueError(f"sigma_join={self.sigma_join!r} is unknown; choose one of {SIGMA_JOINS}")
        if not 1 <= self.max_order <= 4:
            raise ValueError(f"max_order={self.max_order} must be between 1 and 4")
        if not (self.delta > 0 and self.sigma_floor > 0 and self.sigma_divisor > 0):
            raise ValueError("delta, sigma_floor and sigma_divisor must be positive")


@dataclass
class ClusterResult:
    """What one round produced: the snapped tensors and how each greedy step got there."""
    mu: torch.Tensor
    sigma: torch.Tensor
    fixed_mask: torch.Tensor
    assignment: torch.Tensor       # index into ``centres``, -1 where not fixed
    centres: torch.Tensor          # float64, winners in the order they were chosen
    steps: pd.DataFrame = field(repr=False)

    def __repr__(self):
        n = self.fixed_mask.numel()
        return (f"ClusterResult(N={n}, fixed={int(self.fixed_mask.sum())} "
                f"({self.fixed_mask.float().mean().item():.1%}), centres={len(self.centres)}, "
                f"steps={len(self.steps)})")


def target_count(fraction: float, n: int) -> int:
    """Number of weights a round fixes: ceil(fraction * n), robust to float error (0.7 * 10 -> 7)."""
    return min(n, math.ceil(round(fraction * n, 6)))


def candidate_centres(order: int, max_abs: float, b: int = 7) -> torch.Tensor:
    """All sums of ``order`` elements of {0, 2^-b, ..., 2^(m-1)} (m = ceil(log2 max_abs)) that are
    <= max_abs, mirrored to negatives, sorted by (|c|, c): 0, -2^-b, 2^-b, ...

    >>> len(candidate_centres(1, 1.0))
    15
    """
    if not max_abs >= 2.0 ** -b:
        return torch.zeros(1, dtype=torch.float64)
    frac, exp = math.frexp(max_abs)              # exact ceil(log2(max_abs)), no rounding of log2
    m = exp - 1 if frac == 0.5 else exp
    powers = [2.0 ** e for e in range(-b, m)]
    sums = {0.0}
    for _ in range(order):  # sums of exactly `order` elements of S = {0} + powers, with repetition
        sums = sums | {a + p for a in sums for p in powers}
    positive = sorted(c for c in sums if 0 < c <= max_abs)
    values = [0.0] + [v for c in positive for v in (-c, c)]
    return torch.tensor(values, dtype=torch.float64)


def _check_inputs(mu, sigma, fraction):
    if not isinstance(mu, torch.Tensor) or not isinstance(sigma, torch.Tensor):
        raise ValueError("mu and sigma must be torch tensors")
    if mu.shape != sigma.shape or mu.dim() != 1:
        raise ValueError(f"mu and sigma must be 1-D tensors of the same shape, got {tuple(mu.shape)} "
                         f"and {tuple(sigma.shape)}; flatten them with torch.cat([t.flatten() ...])")
    if mu.numel() == 0:
        raise ValueError("mu is empty: there is nothing to cluster")
    if not torch.isfinite(mu).all() or not torch.isfinite(sigma).all():
        raise ValueError("mu and sigma must be finite; found NaN or inf "
                         f"(mu: {int((~torch.isfinite(mu)).sum())}, sigma: {int((~torch.isfinite(sigma)).sum())} entries)")
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction={fraction} must be in (0, 1]")


def _smallest(keys: list[torch.Tensor], need: int) -> torch.Tensor:
    """Indices of the ``need`` lexicographically smallest rows of ``keys`` (1-D tensors of one
    length; the last key unique). A selection by k-th values, not a sort, so that temporaries stay
    small when a centre fits most of the network and the cap bites."""
    key = keys[0]
    if need >= key.numel():
        return torch.arange(key.numel(), device=key.device)
    threshold = key.kthvalue(need).values
    closer = (key < threshold).nonzero().squeeze(1)
    tied = (key == threshold).nonzero().squeeze(1)
    rest = need - closer.numel()
    chosen = tied[:rest] if len(keys) == 1 else tied[_smallest([k[tied] for k in keys[1:]], rest)]
    return torch.cat([closer, chosen])


CHUNK = 1 << 16   # elementwise work is done in chunks so temporaries stay O(chunk), not O(N)


def _coverage(pm, ps, delta: float, sorted_centres: torch.Tensor) -> torch.Tensor:
    """How many intervals [m - delta*s, m + delta*s] contain each (value-sorted) centre.

    Each interval covers a contiguous run of sorted centres, found by binary search; a difference
    array and a cumulative sum turn the runs into counts: O(N log K) time, O(K + chunk) memory.
    On CUDA (or with the triton backend forced) the Triton kernel computes the same counts.
    """
    from . import kernels
    if kernels.use_triton(pm):
        return kernels.coverage_counts(pm, ps, delta, sorted_centres)
    k = sorted_centres.numel()
    diff = torch.zeros(k + 1, dtype=torch.long, device=pm.device)
    for start in range(0, pm.numel(), CHUNK):
        m, s = pm[start:start + CHUNK].double(), ps[start:start + CHUNK].double()
        first = torch.searchsorted(sorted_centres, m - delta * s, right=False)   # first c >= lo
        stop = torch.searchsorted(sorted_centres, m + delta * s, right=True)     # first c > hi
        diff += torch.bincount(first, minlength=k + 1) - torch.bincount(stop, minlength=k + 1)
    return diff.cumsum(0)[:k]


def _fitting(pm, ps, p_alive, a: int, z: int, c: float, delta: float, band: tuple[int, int] | None):
    """Positions in [a, z) of the unassigned weights that fit centre ``c`` (the same float64
    comparisons as ``_coverage``), plus those in the zero band ``band`` when ``c`` is zero.
    On CUDA (or with the triton backend forced) one Triton kernel builds the mask."""
    from . import kernels
    if kernels.use_triton(pm):
        return kernels.fitting_positions(pm, ps, p_alive, a, z, c, delta, band)
    found = []
    for start in range(a, z, CHUNK):
        end = min(z, start + CHUNK)
        m, s = pm[start:end].double(), ps[start:end].double()
        fits = p_alive[start:end] & (m - delta * s <= c) & (m + delta * s >= c)
        if band is not None and band[0] < end and band[1] > start:
            lo, hi = max(band[0], start) - start, min(band[1], end) - start
            fits[lo:hi] |= p_alive[start + lo:start + hi]
        found.append((fits.nonzero().squeeze(1) + start).to(torch.int32))   # N < 2^31 positions
    return torch.cat(found) if found else torch.zeros(0, dtype=torch.int32, device=pm.device)


def cluster_round(mu: torch.Tensor, sigma: torch.Tensor, fraction: float, *,
                  config: ClusterConfig | None = None, round_index: int = 0) -> ClusterResult:
    """Fix ``target_count(fraction, N)`` weights to shared centres, from scratch (METHOD.md section 5).

    ``mu`` and ``sigma`` are flat tensors over the whole network (any float dtype, any device).
    Returns the snapped ``mu``/``sigma``, the ``fixed_mask``, each weight's centre and a table with
    one row per greedy step. Extra memory is about 50 bytes per weight (no K x N matrix).
    """
    cfg = config or ClusterConfig()
    _check_inputs(mu, sigma, fraction)
    device, n = mu.device, mu.numel()
    mu, sigma = mu.detach(), sigma.detach()
    zero_band = 2.0 ** -cfg.b
    target = target_count(fraction, n)

    # The unassigned weights in mu order (one sort per round), so that every centre's candidates
    # lie in one contiguous slice; sigma floored. Stored in (at least) float32, which holds every
    # input exactly; all arithmetic on them is float64. Each pass keeps the ones still unassigned.
    store = torch.promote_types(mu.dtype, torch.float32)   # float16/bfloat16/float32 -> float32
    p_idx = torch.argsort(mu, stable=True)
    if n < 2 ** 31:   # int32 positions: 4 bytes per weight fewer
        p_idx = p_idx.to(torch.int32)
    pm = mu[p_idx].to(store)
    ps = sigma[p_idx].to(torch.promote_types(sigma.dtype, torch.float32)).clamp_(min=cfg.sigma_floor)
    alive = torch.ones(n, dtype=torch.bool, device=device)   # not yet assigned
    assignment = torch.full((n,), -1, dtype=torch.int32, device=device)   # int64 on return
    new_mu, new_sigma = mu.clone(), sigma.clone()
    centres, rows = [], []
    n_assigned, order, delta, grow_order_next, pass_index = 0, 1, cfg.delta, True, 0

    while n_assigned < target:
        p_alive = torch.ones(pm.numel(), dtype=torch.bool, device=device)
        cands = candidate_centres(order, max(-pm[0].item(), pm[-1].item()), cfg.b).to(device)
        by_value = torch.argsort(cands)
        counts = torch.empty_like(by_value)
        counts[by_value] = _coverage(pm, ps, delta, cands[by_value])
        zero_pos = 0  # candidates are sorted by |c|: the zero centre is first, found by value
        assert cands[zero_pos].item() == 0.0
        band = None
        if cfg.zero_fix:  # |mu| < 2^-b is a contiguous slice of the mu-sorted weights
            ends = torch.tensor([-zero_band, zero_band], dtype=store, device=device)   # exact
            band = (int(torch.searchsorted(pm, ends[0], right=True)), int(torch.searchsorted(pm, ends[1])))
            bm, bs = pm[band[0]:band[1]].double(), ps[band[0]:band[1]].double()
            counts[zero_pos] += int((~((bm - delta * bs <= 0) & (bm + delta * bs >= 0))).sum())
        reach = 2 * delta * ps.max().item()   # widened for rounding: no fitting weight lies further
        while True:
            best = int(torch.argmax(counts))   # first maximum: ties go to the smaller |c|, then c < 0
            n_fit = int(counts[best])
            if n_fit <= 0:
                break
            c = cands[best].item()
            counts[best] = -1                   # a centre wins at most once per pass
            lo_v, hi_v = c - reach, c + reach
            if c == 0.0:
                lo_v, hi_v = min(lo_v, -zero_band), max(hi_v, zero_band)
            # (window ends rounded to the stored dtype: to nearest, so no stored value that lies
            # inside the window can fall outside it)
            a, z = torch.searchsorted(pm, torch.tensor([lo_v, hi_v], dtype=torch.float64,
                                                       device=device).to(store)).tolist()
            local = _fitting(pm, ps, p_alive, a, z, c, delta, band if c == 0.0 else None)
            assert local.numel() == n_fit, "coverage count and window disagree"
            need = target - n_assigned
            if n_fit > need:  # the cap bites: closest first, ties by |mu|, then position
                dist = pm[local].double().sub_(c).abs_().div_(ps[local].double())   # in place: few temporaries
                if band is not None and c == 0.0:
                    dist.masked_fill_((local >= band[0]) & (local < band[1]), 0.0)
                local = local[_smallest([dist, pm[local].abs(), p_idx[local]], need)]
            take = p_idx[local]

            # Snap: record the step, move mu to the centre, set sigma by the join rule.
            taken_mu, taken_sigma = pm[local].double(), sigma[take].double()
            rows.append(dict(round=round_index, pass_index=pass_index, step=len(rows), P=order,
                             delta=delta, centre=c, n_fit=n_fit, n_taken=take.numel(),
                             mu_mean=taken_mu.mean().item(), mu_std=taken_mu.std(unbiased=False).item(),
                             sigma_mean=taken_sigma.mean().item(),
                             sigma_std=taken_sigma.std(unbiased=False).item()))
            new_mu[take] = c
            if cfg.sigma_join == "std_mu":
                new_sigma[take] = taken_mu.std(unbiased=False).to(sigma.dtype)
            elif cfg.sigma_join == "divide":
                new_sigma[take] = sigma[take] / cfg.sigma_divisor
            assignment[take] = len(centres)
            centres.append(c)
            alive[take] = False
            p_alive[local] = False
            n_assigned += take.numel()
            if n_assigned >= target:
                break
            # The taken weights no longer count for the remaining centres.
            del taken_mu, taken_sigma
            counts[by_value] -= _coverage(pm[local], ps[local], delta, cands[by_value])
            if band is not None:
                in_band = local[(local >= band[0]) & (local < band[1])]
                bm, bs = pm[in_band].double(), ps[in_band].double()
                counts[zero_pos] -= int((~((bm - delta * bs <= 0) & (bm + delta * bs >= 0))).sum())
        if n_assigned < target:  # grow: alternate one more power of two and a wider band
            p_idx, pm, ps = p_idx[p_alive], pm[p_alive], ps[p_alive]
            if grow_order_next and order < cfg.max_order:
                order += 1
            else:
                delta *= 2
            grow_order_next = not grow_order_next
            pass_index += 1

    return ClusterResult(mu=new_mu, sigma=new_sigma, fixed_mask=~alive, assignment=assignment.long(),
                         centres=torch.tensor(centres, dtype=torch.float64),
                         steps=pd.DataFrame(rows, columns=STEP_COLUMNS))
