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
    from .. import kernels
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


def _fitting(pm, ps, p_alive, a: int, z: int, c: float, delta: float, band: tuple[int, int] | None,
             count: int | None = None, on_device: tuple[torch.Tensor, torch.Tensor] | None = None,
             mismatches: torch.Tensor | None = None):
    """Positions in [a, z) of the unassigned weights that fit centre ``c`` (the same float64
    comparisons as ``_coverage``), plus those in the zero band ``band`` when ``c`` is zero.
    ``count``, when known (the coverage count), lets the Triton kernel's caller skip the host
    sync of a data-dependent ``nonzero``. On CUDA (or with the triton backend forced) one Triton
    kernel builds the mask, reading ``c`` and ``delta`` from ``on_device`` when given, and counts
    a mask that disagrees with ``count`` in ``mismatches`` (the torch path raises at once)."""
    from .. import kernels
    if kernels.use_triton(pm):
        c_, delta_ = on_device or (c, delta)
        return kernels.fitting_positions(pm, ps, p_alive, a, z, c_, delta_, band, count, mismatches)
    found = []
    for start in range(a, z, CHUNK):
        end = min(z, start + CHUNK)
        m, s = pm[start:end].double(), ps[start:end].double()
        fits = p_alive[start:end] & (m - delta * s <= c) & (m + delta * s >= c)
        if band is not None and band[0] < end and band[1] > start:
            lo, hi = max(band[0], start) - start, min(band[1], end) - start
            fits[lo:hi] |= p_alive[start + lo:start + hi]
        found.append((fits.nonzero().squeeze(1) + start).to(torch.int32))   # N < 2^31 positions
    local = torch.cat(found) if found else torch.zeros(0, dtype=torch.int32, device=pm.device)
    if count is not None and local.numel() != count:
        raise AssertionError(f"coverage count {count} and window ({local.numel()} fit) disagree")
    return local


def _to_host(t: torch.Tensor) -> list:
    """The one place a round reads device values on the host (a sync on CUDA): twice per pass
    (extent and windows), once per greedy step (winner and count) and once at the end (statistics)."""
    return t.tolist()


def _to_device(t: torch.Tensor, device, dtype=None) -> torch.Tensor:
    """The one place a round copies host values to the device (on CUDA a copy from pageable
    memory waits for the stream: a sync too): a few times per pass, never per greedy step."""
    return t.to(device=device, dtype=dtype)


def _outside_zero(m: torch.Tensor, s: torch.Tensor, delta: float) -> torch.Tensor:
    """Which float64 intervals [m - delta*s, m + delta*s] miss 0 (zero-band weights that the
    coverage count of the zero centre did not include)."""
    return ~((m - delta * s <= 0) & (m + delta * s >= 0))


@dataclass
class _Pass:
    """What one greedy pass holds: its candidates on the host and the device, the coverage counts
    (device, candidate order), each candidate's window of the mu-sorted weights and the zero band."""
    cands: list[float]
    counts: torch.Tensor
    sorted_cands: torch.Tensor     # device, ascending values
    rank: torch.Tensor             # rank[i] = position of candidate i in value order
    windows: list[list[int]]       # [a, z) per candidate
    band: tuple[int, int] | None
    zero_rank: int                 # position of the zero centre in value order
    consts: torch.Tensor           # device float64: delta, sigma divisor, candidates (candidate order)

    # The kernels read these scalars by pointer: views, no copies.
    delta = property(lambda self: self.consts[0:1])
    divisor = property(lambda self: self.consts[1:2])

    def centre(self, i: int) -> torch.Tensor:
        return self.consts[2 + i:3 + i]


def _start_pass(pm, ps, n_powers: int, delta: float, cfg: ClusterConfig, zero_band: float) -> _Pass:
    """Candidates with up to n_powers powers of two, their coverage counts and windows: two host reads."""
    device, store = pm.device, pm.dtype
    ends = _to_device(torch.tensor([-zero_band, zero_band], dtype=store), device)   # exact in float32
    extent = torch.cat([torch.stack([pm[0], pm[-1]]).double(), ps.max().double().view(1),
                        torch.searchsorted(pm, ends[:1], right=True).double(),
                        torch.searchsorted(pm, ends[1:]).double()])
    first_mu, last_mu, sigma_max, band_lo, band_hi = _to_host(extent)
    host = candidate_centres(n_powers, max(-first_mu, last_mu), cfg.b)   # sorted by (|c|, c)
    assert host[0].item() == 0.0   # the zero centre is identified by value: first
    by_value = torch.argsort(host)
    sorted_cands = _to_device(host[by_value], device)
    rank = torch.argsort(by_value)
    zero_rank = int(rank[0])
    rank = _to_device(rank, device)
    counts = _coverage(pm, ps, delta, sorted_cands).index_select(0, rank)
    band = None
    if cfg.zero_fix:  # |mu| < 2^-b is a contiguous slice of the mu-sorted weights
        band = (int(band_lo), int(band_hi))
        bm, bs = pm[band[0]:band[1]].double(), ps[band[0]:band[1]].double()
        counts[0] += _outside_zero(bm, bs, delta).sum()
    # Each candidate's fitting weights lie in a window of the sorted mu: no interval reaches
    # further than 2*delta*max(sigma) (widened for rounding). Window ends are rounded to the
    # stored dtype, to nearest, so no stored value inside a window falls outside it.
    reach = 2 * delta * sigma_max
    lo, hi = host - reach, host + reach
    lo[0], hi[0] = min(lo[0].item(), -zero_band), max(hi[0].item(), zero_band)   # the zero band
    windows = torch.searchsorted(pm, _to_device(torch.stack([lo, hi], 1), device, store))
    consts = _to_device(torch.cat([torch.tensor([delta, cfg.sigma_divisor], dtype=torch.float64), host]), device)
    return _Pass(host.tolist(), counts, sorted_cands, rank, _to_host(windows), band, zero_rank, consts)


def mu_order(mu: torch.Tensor) -> torch.Tensor:
    """The order a round sorts the weights in (``cluster_round(..., order=)`` reuses it): a stable
    argsort of ``mu``, int32 when N < 2^31 (4 bytes per weight fewer)."""
    order = torch.argsort(mu.detach(), stable=True)
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
    """A round's working state. ``p_idx``/``pm``/``ps``: the weights unassigned at the start of the
    pass, in mu order (index into the network, mu, floored sigma); the rest is per network weight."""
    p_idx: torch.Tensor
    pm: torch.Tensor
    ps: torch.Tensor
    sigma: torch.Tensor            # the input sigma (for the "divide" join)
    new_mu: torch.Tensor
    new_sigma: torch.Tensor
    alive: torch.Tensor            # not yet assigned
    assignment: torch.Tensor       # int32, -1 where not assigned


def _snap(st: _Round, cur: _Pass, p_alive, local, best: int, centre_id: int, std_mu, delta: float,
          cfg: ClusterConfig, recount: bool) -> None:
    """Move the weights at sorted positions ``local`` to candidate ``best``: mu := c, sigma by the join
    rule (``std_mu``: a 0-dim device tensor), marked assigned; with ``recount``, also take them out
    of the pass's coverage counts. On CUDA (or with the triton backend forced) one Triton kernel
    does all of it, where the torch path below needs about twenty operations."""
    from .. import kernels
    if kernels.use_triton(st.pm):
        diff = kernels.snap(st, cur, p_alive, local, best, centre_id, std_mu, cfg.sigma_join, recount)
        if recount:
            cur.counts -= diff.cumsum(0)[:-1].index_select(0, cur.rank)
        return
    take = st.p_idx[local]
    st.new_mu[take] = cur.cands[best]
    if cfg.sigma_join == "std_mu":
        st.new_sigma[take] = std_mu.to(st.sigma.dtype)
    elif cfg.sigma_join == "divide":
        st.new_sigma[take] = st.sigma[take] / cfg.sigma_divisor
    st.assignment[take] = centre_id
    st.alive[take] = False
    p_alive[local] = False
    if recount:   # the taken weights no longer count for the remaining centres
        cur.counts -= _coverage(st.pm[local], st.ps[local], delta, cur.sorted_cands).index_select(0, cur.rank)
        if cur.band is not None:
            in_band = local[(local >= cur.band[0]) & (local < cur.band[1])]
            cur.counts[0] -= _outside_zero(st.pm[in_band].double(), st.ps[in_band].double(), delta).sum()


def cluster_round(mu: torch.Tensor, sigma: torch.Tensor, fraction: float, *,
                  config: ClusterConfig | None = None, round_index: int = 0,
                  order: torch.Tensor | None = None) -> ClusterResult:
    """Fix ``target_count(fraction, N)`` weights to shared centres, from scratch (METHOD.md section 5).

    ``mu`` and ``sigma`` are flat tensors over the whole network (any float dtype, any device).
    Returns the snapped ``mu``/``sigma``, the ``fixed_mask``, each weight's centre and a table with
    one row per greedy step. Extra memory is about 50 bytes per weight (no K x N matrix). On a GPU
    a greedy step reads two numbers back to the host (the winner and its count) and nothing else.

    ``order``: ``mu_order(mu)`` (an argsort of ``mu``), when the caller re-clusters the same mu
    several times (the WhatIf widget): the round then skips its sort, the most expensive step of a
    round on a CPU. It is checked (a permutation that sorts mu), so a stale order raises.
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
    p_idx = mu_order(mu) if order is None else _checked_order(order, mu)
    st = _Round(p_idx=p_idx, pm=mu[p_idx].to(store),
                ps=sigma[p_idx].to(torch.promote_types(sigma.dtype, torch.float32)).clamp_(min=cfg.sigma_floor),
                sigma=sigma, new_mu=mu.clone(), new_sigma=sigma.clone(),
                alive=torch.ones(n, dtype=torch.bool, device=device),
                assignment=torch.full((n,), -1, dtype=torch.int32, device=device))   # int64 on return
    centres, rows, stats = [], [], []
    mismatches = torch.zeros(1, dtype=torch.int64, device=device)   # coverage count vs fit mask
    n_assigned, n_powers, delta, grow_order_next, pass_index = 0, 1, cfg.delta, True, 0   # n_powers: P

    while n_assigned < target:
        p_alive = torch.ones(st.pm.numel(), dtype=torch.bool, device=device)
        cur = _start_pass(st.pm, st.ps, n_powers, delta, cfg, zero_band)
        while True:
            # The step's one host read: which candidate fits the most, and how many. The first
            # maximum wins: ties go to the smaller |c|, then c < 0 (candidate order).
            n_fit, best = torch.max(cur.counts, 0)
            best, n_fit = _to_host(torch.stack([best, n_fit]))
            if n_fit <= 0:
                break
            c = cur.cands[best]
            cur.counts[best] = -1               # a centre wins at most once per pass
            a, z = cur.windows[best]
            band = cur.band if c == 0.0 else None
            local = _fitting(st.pm, st.ps, p_alive, a, z, c, delta, band, n_fit, (cur.centre(best), cur.delta),
                             mismatches)
            need = target - n_assigned
            if n_fit > need:  # the cap bites: closest first, ties by |mu|, then position
                dist = st.pm[local].double().sub_(c).abs_().div_(st.ps[local].double())   # in place
                if band is not None:
                    dist.masked_fill_((local >= band[0]) & (local < band[1]), 0.0)
                local = local[_smallest([dist, st.pm[local].abs(), st.p_idx[local]], need)]
            n_taken = min(n_fit, need)

            # Record the step (its statistics stay on the device until the round ends), then snap.
            var_mu, mean_mu = torch.var_mean(st.pm[local].double(), correction=0)
            var_sigma, mean_sigma = torch.var_mean(st.sigma[st.p_idx[local]].double(), correction=0)
            std_mu = var_mu.sqrt()
            stats.append(torch.stack([mean_mu, std_mu, mean_sigma, var_sigma.sqrt()]))
            rows.append(dict(round=round_index, pass_index=pass_index, step=len(rows), P=n_powers,
                             delta=delta, centre=c, n_fit=n_fit, n_taken=n_taken))
            n_assigned += n_taken
            _snap(st, cur, p_alive, local, best, len(centres), std_mu, delta, cfg, recount=n_assigned < target)
            centres.append(c)
            if n_assigned >= target:
                break
        if n_assigned < target:  # grow: alternate one more power of two and a wider band
            st.p_idx, st.pm, st.ps = st.p_idx[p_alive], st.pm[p_alive], st.ps[p_alive]
            if grow_order_next and n_powers < cfg.max_order:
                n_powers += 1
            else:
                delta *= 2
            grow_order_next = not grow_order_next
            pass_index += 1

    steps = pd.DataFrame(rows, columns=STEP_COLUMNS)
    *values, bad = _to_host(torch.cat([torch.stack(stats).flatten(), mismatches.double()]))
    if bad:
        raise AssertionError(f"coverage counts and fit masks disagreed in {int(bad)} greedy steps (a kernel "
                             "bug: please report it, with PWFN_BACKEND=torch as the workaround)")
    steps[["mu_mean", "mu_std", "sigma_mean", "sigma_std"]] = [values[i:i + 4] for i in range(0, len(values), 4)]
    return ClusterResult(mu=st.new_mu, sigma=st.new_sigma, fixed_mask=~st.alive,
                         assignment=st.assignment.long(),
                         centres=torch.tensor(centres, dtype=torch.float64), steps=steps)
