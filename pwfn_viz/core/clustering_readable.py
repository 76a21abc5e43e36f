"""One PWFN clustering round, written to be read: the method section by section, in plain torch
(docs/method.md, clustering). Start here.

:func:`pwfn_viz.core.clustering.cluster_round` computes exactly the same round in O(N + K) memory
(and with Triton kernels on a GPU); the tests hold the two equal. Here every greedy step builds
the K x N matrix "which unassigned weight fits which candidate centre", so time and memory grow
with K * N: right for reading, testing and small networks, too slow for large ones.

A round fixes ``target_count(fraction, N)`` weights, in passes of greedy steps:

(a) candidate centres: 0 and the sums of 1..n_powers powers of two from {2^-b, ..., 2^(m-1)}, as
    large as the largest |mu| still unassigned and no larger, mirrored to negatives;
(b) a weight fits a centre c when c lies in its band [mu - delta*s, mu + delta*s], s the weight's
    sigma floored at ``sigma_floor``; with ``zero_fix`` every |mu| < 2^-b also fits 0;
(c) the candidate that fits the most unassigned weights wins (ties: smaller |c|, then c < 0);
(d) it takes its fitting weights closest first, no more than are still needed, and is out of
    the rest of the pass;
(e) when no candidate fits anything, the next pass has one more power of two per centre (up to
    ``max_powers``) or, alternately, a band twice as wide, and candidates from the weights left;
(f) a taken weight's mu becomes c and its sigma is joined by the rule ``sigma_join``.

Example:
    >>> import torch
    >>> mu = torch.tensor([0.5, 0.52, 0.001, -0.26]); sigma = torch.tensor([0.01, 0.05, 0.001, 0.02])
    >>> readable_cluster_round(mu, sigma, fraction=1.0).mu.tolist()
    [0.5, 0.5, 0.0, -0.25]
"""
from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, field

import pandas as pd
import torch

from ..constants import (CLUSTERING_SIGMA_FLOOR, MAX_CENTRE_EXPONENT, MAX_POWERS, MAX_ZERO_BAND_EXPONENT,
                         ZERO_BAND_EXPONENT)
from ..registry import Registry

STEP_COLUMNS = ["round", "pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken",
                "mu_mean", "mu_std", "sigma_mean", "sigma_std"]   # "P": the step's n_powers
SIGMA_JOINS = Registry("sigma join", "or add one with @SIGMA_JOINS.register(name)")


@dataclass
class ClusterConfig:
    """Settings of one clustering round (paper defaults)."""
    zero_fix: bool = True                 # |mu| < 2^-b fits the zero centre at distance 0
    b: int = ZERO_BAND_EXPONENT           # smallest power of two is 2^-b
    max_powers: int = MAX_POWERS          # centres are sums of up to max_powers powers of two
    delta: float = 1.0                    # starting width of the acceptance band, in sigmas
    delta_growth: float = 2.0             # the band widens by this factor when a pass runs short
    sigma_floor: float = CLUSTERING_SIGMA_FLOOR
    sigma_join: str = "std_mu"            # new sigma of a snapped weight: a name in SIGMA_JOINS
    sigma_divisor: float = 10.0           # used by sigma_join="divide"
    max_order: InitVar[int | None] = None   # the former name of max_powers, still read from run records

    def __post_init__(self, max_order: int | None):
        if max_order is not None:
            if self.max_powers not in (MAX_POWERS, max_order):
                raise ValueError(f"max_order={max_order} and max_powers={self.max_powers} disagree; "
                                 "max_order is the former name of max_powers: give one of them")
            self.max_powers = max_order
        SIGMA_JOINS.get(self.sigma_join)
        if isinstance(self.b, bool) or not isinstance(self.b, int) or not 0 <= self.b <= MAX_ZERO_BAND_EXPONENT:
            raise ValueError(f"b={self.b!r} must be a whole number from 0 to {MAX_ZERO_BAND_EXPONENT}: the smallest "
                             f"power of two of a centre is 2^-b (paper: b={ZERO_BAND_EXPONENT}, 2^-7)")
        if not 1 <= self.max_powers <= MAX_POWERS:
            raise ValueError(f"max_powers={self.max_powers} must be between 1 and {MAX_POWERS}")
        if isinstance(self.delta_growth, bool) or not isinstance(self.delta_growth, (int, float)) \
                or not math.isfinite(self.delta_growth) or self.delta_growth <= 1:
            raise ValueError(f"delta_growth={self.delta_growth!r} must be a number > 1 (a short round widens its band "
                             "by this factor; 1 would never widen it)")
        for name in ("delta", "sigma_floor", "sigma_divisor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}: delta, sigma_floor and sigma_divisor must be positive finite numbers")


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


def check_inputs(mu, sigma, fraction) -> None:
    """A clear ValueError for what no round can cluster. A zero or negative sigma is accepted: a raw
    sigma parameter can go there in training, and a round floors it at ``sigma_floor``."""
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


# (a) ---------------------------------------------------------------------- candidate centres
def candidate_centres(n_powers: int, max_abs: float, b: int = ZERO_BAND_EXPONENT) -> torch.Tensor:
    """All sums of ``n_powers`` elements of {0, 2^-b, ..., 2^(m-1)} (m = ceil(log2 max_abs), at most
    ``MAX_CENTRE_EXPONENT + 1``) that are <= max_abs, mirrored to negatives, sorted by (|c|, c):
    0, -2^-b, 2^-b, ... (float64, CPU). Because 0 is an element, these are 0 and the sums of
    1..n_powers powers of two. The cap on m bounds the set for any finite max_abs (constants.py).

    >>> len(candidate_centres(1, 1.0))
    15
    """
    if not max_abs >= 2.0 ** -b:
        return torch.zeros(1, dtype=torch.float64)
    mantissa, exponent = math.frexp(max_abs)          # exact ceil(log2(max_abs)), no rounding of log2
    m = min(exponent - 1 if mantissa == 0.5 else exponent, MAX_CENTRE_EXPONENT + 1)
    elements = torch.tensor([0.0] + [2.0 ** e for e in range(-b, m)], dtype=torch.float64)
    sums = torch.zeros(1, dtype=torch.float64)
    for _ in range(n_powers):                         # one more element per turn (repeats allowed)
        sums = torch.unique(sums[:, None] + elements[None, :])   # sorted, each value once
    positive = sums[(sums > 0) & (sums <= max_abs)]
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.stack([-positive, positive], 1).flatten()])


# (b) ------------------------------------------------------------------ which weights fit where
def fit_matrix(centres: torch.Tensor, mu: torch.Tensor, floored_sigma: torch.Tensor, delta: float,
               in_zero_band: torch.Tensor | None) -> torch.Tensor:
    """fits[k, i]: weight i fits ``centres[k]``. All float64; the band ends are computed as
    ``mu - delta * s`` and ``mu + delta * s`` and compared with c, which decides a centre exactly on
    a band's edge (``|mu - c| / s <= delta`` can round the other way there). ``in_zero_band``
    (zero_fix): weights with |mu| < 2^-b, which fit the zero centre whatever their band."""
    lower, upper = mu - delta * floored_sigma, mu + delta * floored_sigma
    column = centres[:, None]
    fits = (lower[None, :] <= column) & (column <= upper[None, :])
    if in_zero_band is not None:
        fits |= (column == 0.0) & in_zero_band[None, :]
    return fits


# (c) ------------------------------------------------------------------------ the greedy winner
def greedy_winner(fits: torch.Tensor) -> tuple[int, int]:
    """(candidate row, number of weights it fits) of the candidate fitting the most weights. The
    first maximum wins, and rows are in (|c|, c) order: a tie goes to the smaller |c|, then c < 0."""
    n_fit_per_candidate = fits.sum(dim=1)
    winner = int(torch.argmax(n_fit_per_candidate))   # argmax returns the first maximum
    return winner, int(n_fit_per_candidate[winner])


# (d) ------------------------------------------------------------------ closest first, capped
def closest_first(distance: torch.Tensor, abs_mu: torch.Tensor, n_needed: int) -> torch.Tensor:
    """Positions of the ``n_needed`` fitting weights the winner takes, given in increasing network
    index: the smallest by (distance, |mu|, network index). Stable sorts, least significant key
    first (the index order is the starting order)."""
    order = torch.sort(abs_mu, stable=True).indices
    order = order[torch.sort(distance[order], stable=True).indices]
    return order[:n_needed]


# (e) ------------------------------------------------------------------------ growth of a pass
def grow(n_powers: int, delta: float, grow_powers_next: bool, max_powers: int,
         growth: float = 2.0) -> tuple[int, float, bool]:
    """Still short after a pass: one more power of two per centre (while below ``max_powers``) and
    a band ``growth`` times as wide (twice, by default), in turn. The turns go on at the cap, so
    delta then grows every pass."""
    if grow_powers_next and n_powers < max_powers:
        n_powers += 1
    else:
        delta *= growth
    return n_powers, delta, not grow_powers_next


def doublings_until_fit(mu64: torch.Tensor, floored_sigma64: torch.Tensor, sorted_centres: torch.Tensor,
                        delta: float, growth: float = 2.0) -> tuple[int, float]:
    """After a pass at ``max_powers`` that fitted nothing, the next passes have the same weights and
    candidates and only widen delta (by ``growth``): the number of such passes that would fit nothing too (0 when
    a band of width ``delta`` already holds a centre) and the delta after them, so that a round skips them at once instead
    of rebuilding its candidates for each. The same float64 test as ``fit_matrix``, for each
    weight's nearest centre at or above its band's lower end (``sorted_centres``: ascending,
    float64). Bounded: delta reaches inf after at most about 1100 doublings, and every band then
    holds every centre."""
    n_skipped = 0
    while True:
        lower, upper = mu64 - delta * floored_sigma64, mu64 + delta * floored_sigma64
        first = torch.searchsorted(sorted_centres, lower).clamp_(max=sorted_centres.numel() - 1)
        if bool((sorted_centres[first] >= lower).logical_and_(sorted_centres[first] <= upper).any()):
            return n_skipped, delta
        delta *= growth
        n_skipped += 1


# (f) ---------------------------------------------------------------------------- sigma joins
# A join gets the taken weights' input sigma, the population std of their mu before the snap (a
# float64 0-dim tensor) and the config; it returns their new sigma, in sigma's dtype.
@SIGMA_JOINS.register("std_mu")
def join_std_mu(taken_sigma: torch.Tensor, std_mu: torch.Tensor, config: ClusterConfig) -> torch.Tensor:
    """The paper's rule: the merged weights' spread, the std of their mu, becomes every one's sigma."""
    return std_mu.to(taken_sigma.dtype).expand_as(taken_sigma)


@SIGMA_JOINS.register("keep")
def join_keep(taken_sigma: torch.Tensor, std_mu: torch.Tensor, config: ClusterConfig) -> torch.Tensor:
    """Each weight keeps its own sigma."""
    return taken_sigma


@SIGMA_JOINS.register("divide")
def join_divide(taken_sigma: torch.Tensor, std_mu: torch.Tensor, config: ClusterConfig) -> torch.Tensor:
    """Each weight's sigma shrinks by ``config.sigma_divisor``."""
    return taken_sigma / config.sigma_divisor


# ------------------------------------------------------------------------------------ the round
def readable_cluster_round(mu: torch.Tensor, sigma: torch.Tensor, fraction: float, *,
                           config: ClusterConfig | None = None, round_index: int = 0,
                           order: torch.Tensor | None = None) -> ClusterResult:
    """Fix ``target_count(fraction, N)`` weights to shared centres: the same result as
    :func:`pwfn_viz.core.clustering.cluster_round` (same arguments; ``order`` is accepted and not
    needed, as nothing here sorts the weights)."""
    cfg = config or ClusterConfig()
    check_inputs(mu, sigma, fraction)
    mu, sigma = mu.detach(), sigma.detach()
    n_weights, device = mu.numel(), mu.device
    n_target = target_count(fraction, n_weights)
    # float64 for all arithmetic (exact for any float input). sigma is floored in float32 or wider,
    # the precision cluster_round stores it in, so that any floor rounds the same in both.
    mu64 = mu.double()
    floored_sigma = sigma.to(torch.promote_types(sigma.dtype, torch.float32)).clamp(min=cfg.sigma_floor).double()
    in_zero_band = mu64.abs() < 2.0 ** -cfg.b if cfg.zero_fix else None

    unassigned = torch.ones(n_weights, dtype=torch.bool, device=device)
    new_mu, new_sigma = mu.clone(), sigma.clone()
    assignment = torch.full((n_weights,), -1, dtype=torch.int64, device=device)
    join = SIGMA_JOINS.get(cfg.sigma_join)
    centres, rows, n_assigned = [], [], 0
    n_powers, delta, grow_powers_next, pass_index = 1, cfg.delta, True, 0

    while n_assigned < n_target:
        max_abs = float(mu64[unassigned].abs().max())                          # (a)
        candidates = candidate_centres(n_powers, max_abs, cfg.b).to(device)
        pass_start, pass_powers = n_assigned, n_powers
        while n_assigned < n_target and candidates.numel() > 0:
            free = unassigned.nonzero().squeeze(1)                              # network indices
            fits = fit_matrix(candidates, mu64[free], floored_sigma[free], delta,  # (b)
                              None if in_zero_band is None else in_zero_band[free])
            winner, n_fit = greedy_winner(fits)                                 # (c)
            if n_fit == 0:
                break
            centre = float(candidates[winner])
            fitting = free[fits[winner]]
            n_needed = n_target - n_assigned
            taken = fitting
            if n_fit > n_needed:                                                # (d)
                distance = (mu64[fitting] - centre).abs() / floored_sigma[fitting]
                if in_zero_band is not None and centre == 0.0:
                    distance[in_zero_band[fitting]] = 0.0
                taken = fitting[closest_first(distance, mu64[fitting].abs(), n_needed)]
            candidates = torch.cat([candidates[:winner], candidates[winner + 1:]])   # once per pass

            var_mu, mean_mu = torch.var_mean(mu64[taken], correction=0)          # (f), pre-snap mu
            var_sigma, mean_sigma = torch.var_mean(sigma[taken].double(), correction=0)
            std_mu = var_mu.sqrt()
            rows.append(dict(round=round_index, pass_index=pass_index, step=len(rows), P=n_powers,
                             delta=delta, centre=centre, n_fit=n_fit, n_taken=taken.numel(),
                             mu_mean=float(mean_mu), mu_std=float(std_mu),
                             sigma_mean=float(mean_sigma), sigma_std=float(var_sigma.sqrt())))
            new_mu[taken] = centre
            new_sigma[taken] = join(sigma[taken], std_mu, cfg)
            assignment[taken] = len(centres)
            unassigned[taken] = False
            centres.append(centre)
            n_assigned += taken.numel()
        if n_assigned < n_target:                                               # (e)
            n_powers, delta, grow_powers_next = grow(n_powers, delta, grow_powers_next, cfg.max_powers,
                                                     cfg.delta_growth)
            pass_index += 1
            if n_assigned == pass_start and pass_powers == cfg.max_powers:   # same candidates: skip empty passes
                free = unassigned.nonzero().squeeze(1)
                n_skipped, delta = doublings_until_fit(mu64[free], floored_sigma[free], torch.sort(candidates).values,
                                                       delta, cfg.delta_growth)
                pass_index += n_skipped
                grow_powers_next ^= bool(n_skipped % 2)

    return ClusterResult(mu=new_mu, sigma=new_sigma, fixed_mask=~unassigned, assignment=assignment,
                         centres=torch.tensor(centres, dtype=torch.float64),
                         steps=pd.DataFrame(rows, columns=STEP_COLUMNS))


__all__ = ["SIGMA_JOINS", "STEP_COLUMNS", "ClusterConfig", "ClusterResult", "candidate_centres", "check_inputs",
           "closest_first", "doublings_until_fit", "fit_matrix", "greedy_winner", "grow", "readable_cluster_round", "target_count"]
