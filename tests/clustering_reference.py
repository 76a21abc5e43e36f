"""A brute-force twin of one PWFN clustering round, independent of the package.

:func:`brute_force_cluster` is the most literal version of the round of docs/method.md,
clustering (with the package's tie-breaking rules), sharing no code with ``pwfn_viz``: candidates
come from ``itertools.combinations_with_replacement``; every greedy step re-evaluates one boolean
"fits" mask per active candidate; the take order is Python's ``sorted`` with the key
``(distance, |mu|, index)``. Slow, obviously correct. The tests hold the package's readable round
(``pwfn_viz.core.clustering_readable``) and its fast round (``pwfn_viz.core.clustering``) equal to it.

Example:
    >>> import torch
    >>> r = brute_force_cluster(torch.tensor([0.5, 0.52, 0.001, -0.26]),
    ...                         torch.tensor([0.01, 0.05, 0.001, 0.02]), 1.0)
    >>> r.mu.tolist()
    [0.5, 0.5, 0.0, -0.25]
    >>> r.centres
    [0.5, 0.0, -0.25]
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch

STEP_COLUMNS = ["round", "pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken",
                "mu_mean", "mu_std", "sigma_mean", "sigma_std"]


@dataclass
class RefConfig:
    """Mirror of ``pwfn_viz.core.clustering.ClusterConfig`` (same fields and defaults)."""

    zero_fix: bool = True
    b: int = 7
    max_powers: int = 4
    delta: float = 1.0
    delta_growth: float = 2.0
    sigma_floor: float = 2.0 ** -20
    sigma_join: str = "std_mu"  # or "keep", "divide"
    sigma_divisor: float = 10.0


@dataclass
class RefResult:
    """What a reference round returns (same meaning as ``ClusterResult``)."""

    mu: torch.Tensor          # new mu, input dtype
    sigma: torch.Tensor       # new sigma, input dtype
    fixed_mask: torch.Tensor  # bool
    assignment: torch.Tensor  # int64 index into ``centres``, -1 = unassigned
    centres: list = field(default_factory=list)  # winners in the order chosen (floats)
    steps: list = field(default_factory=list)    # one dict per greedy step (STEP_COLUMNS)


def ref_target_count(fraction: float, n: int) -> int:
    """``min(n, ceil(fraction * n))`` with float noise removed (0.7 * 10 -> 7)."""
    return min(n, math.ceil(round(fraction * n, 6)))


def ref_ceil_log2(x: float) -> int:
    """Smallest integer m with 2**m >= x, for x > 0, exact (no float log2)."""
    mant, exp = math.frexp(x)  # x = mant * 2**exp, mant in [0.5, 1)
    return exp - 1 if mant == 0.5 else exp


def reference_candidates(n_powers: int, max_abs: float, b: int = 7) -> list[float]:
    """Candidate centres with up to ``n_powers`` powers of two: sums of exactly ``n_powers`` elements of
    {0, 2^-b, ..., 2^(m-1)} (m = ceil(log2 max_abs)), kept if <= max_abs, mirrored,
    sorted by (|c|, c).

    >>> len(reference_candidates(1, 1.0))
    15
    >>> reference_candidates(1, 0.02, 7)
    [0.0, -0.0078125, 0.0078125, -0.015625, 0.015625]
    """
    return list(_candidates(n_powers, float(max_abs), b))


@functools.lru_cache(maxsize=256)
def _candidates(n_powers: int, max_abs: float, b: int) -> tuple[float, ...]:
    if max_abs < 2.0 ** -b:
        return (0.0,)
    m = min(ref_ceil_log2(max_abs), 21)   # the largest power is at most 2^20 (bounds the candidate set)
    elements = [0.0] + [2.0 ** e for e in range(-b, m)]
    sums = {sum(combo) for combo in itertools.combinations_with_replacement(elements, n_powers)}
    kept = {x for x in sums if x <= max_abs}
    mirrored = {x + 0.0 for x in kept} | {(-x) + 0.0 for x in kept}  # +0.0 turns -0.0 into 0.0
    return tuple(sorted(mirrored, key=lambda c: (abs(c), c)))


def _config(config) -> RefConfig:
    """Accept None, a RefConfig or any object with the same attributes (e.g. ClusterConfig)."""
    if config is None:
        return RefConfig()
    return RefConfig(**{name: getattr(config, name) for name in RefConfig.__dataclass_fields__})


def _validate(mu: torch.Tensor, sigma: torch.Tensor, fraction: float) -> None:
    if mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma shapes differ: {tuple(mu.shape)} vs {tuple(sigma.shape)}")
    if mu.numel() == 0:
        raise ValueError("mu is empty: nothing to cluster")
    if not bool(torch.isfinite(mu).all()) or not bool(torch.isfinite(sigma).all()):
        raise ValueError("mu and sigma must be finite")
    if not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")


def _step_row(round_index, pass_index, step, n_powers, delta, centre, n_fit, mu_taken, sigma_taken):
    return {"round": round_index, "pass_index": pass_index, "step": step, "P": n_powers,
            "delta": delta, "centre": centre, "n_fit": n_fit, "n_taken": len(mu_taken),
            "mu_mean": float(np.mean(mu_taken)), "mu_std": float(np.std(mu_taken)),
            "sigma_mean": float(np.mean(sigma_taken)), "sigma_std": float(np.std(sigma_taken))}


def _finish(mu, sigma, cfg, m, s_raw, assignment, centres, steps, taken_per_step) -> RefResult:
    """Snap: taken weights get mu := centre and the joined sigma; others keep theirs."""
    new_mu = m.copy()
    new_sigma = s_raw.copy()
    for k, taken in enumerate(taken_per_step):
        taken = np.asarray(taken, dtype=np.int64)
        new_mu[taken] = centres[k]
        if cfg.sigma_join == "std_mu":
            new_sigma[taken] = np.std(m[taken])
        elif cfg.sigma_join == "divide":
            new_sigma[taken] = s_raw[taken] / cfg.sigma_divisor
        elif cfg.sigma_join != "keep":
            raise ValueError(f"unknown sigma_join {cfg.sigma_join!r}")
    assign = torch.from_numpy(np.asarray(assignment, dtype=np.int64))
    out_mu = torch.from_numpy(new_mu).to(mu.dtype)
    out_sigma = torch.from_numpy(new_sigma).to(sigma.dtype)
    # Unassigned weights keep their exact input values (no float64 round trip surprises).
    keep = assign < 0
    out_mu[keep] = mu.detach().cpu()[keep]
    out_sigma[keep] = sigma.detach().cpu()[keep]
    dev = mu.device  # results live where the inputs did
    return RefResult(mu=out_mu.to(dev), sigma=out_sigma.to(dev), fixed_mask=(assign >= 0).to(dev),
                     assignment=assign.to(dev), centres=[float(c) for c in centres], steps=steps)


def _grow(n_powers: int, delta: float, toggle: str, cfg: RefConfig) -> tuple[int, float, str]:
    """Still short after a pass: alternate P += 1 (while P < max_powers) and delta *= delta_growth."""
    if toggle == "P" and n_powers < cfg.max_powers:
        n_powers += 1
    else:
        delta *= cfg.delta_growth
    return n_powers, delta, "delta" if toggle == "P" else "P"


def _fit_counts(active, fits, lo, hi, small, assigned, zero_fix) -> list[int]:
    """n_fit for every active centre. Loops over whichever is shorter, the centres (one mask
    each) or the unassigned weights (one pass over the centres each); both count the same pairs."""
    free = np.flatnonzero(~assigned)
    if len(active) <= len(free):
        return [int(fits(c).sum()) for c in active]
    cand = np.asarray(active)
    counts = np.zeros(len(cand), dtype=np.int64)
    for i in free:
        counts += ((lo[i] <= cand) & (cand <= hi[i])) | (zero_fix & bool(small[i]) & (cand == 0.0))
    return [int(x) for x in counts]


def brute_force_cluster(mu, sigma, fraction, config=None, round_index=0) -> RefResult:
    """Literal implementation of one clustering round (see module docstring)."""
    cfg = _config(config)
    _validate(mu, sigma, fraction)
    mu, sigma = mu.reshape(-1), sigma.reshape(-1)
    n = mu.numel()
    m = mu.detach().cpu().double().numpy().copy()
    s_raw = sigma.detach().cpu().double().numpy().copy()
    s = np.maximum(s_raw, cfg.sigma_floor)
    small = np.abs(m) < 2.0 ** -cfg.b
    target = ref_target_count(fraction, n)

    assigned = np.zeros(n, dtype=bool)
    assignment = [-1] * n
    centres, steps, taken_per_step = [], [], []
    n_powers, delta, toggle, pass_index = 1, cfg.delta, "P", 0
    n_assigned = 0
    while n_assigned < target:
        max_abs = float(np.max(np.abs(m[~assigned])))
        active = reference_candidates(n_powers, max_abs, cfg.b)
        lo = m - delta * s
        hi = m + delta * s
        def fits(c):
            """Boolean mask over all weights: unassigned and fitting centre c."""
            interval = (lo <= c) & (c <= hi)
            zero_fit = (cfg.zero_fix and c == 0.0) & small
            return ~assigned & (interval | zero_fit)

        while n_assigned < target and active:
            counts = _fit_counts(active, fits, lo, hi, small, assigned, cfg.zero_fix)
            best = max(counts)
            if best == 0:
                break
            k = counts.index(best)  # first centre in (|c|, c) order with the most fits
            c = active[k]

            def take_key(i, c=c):
                through_zero = cfg.zero_fix and c == 0.0 and bool(small[i])
                distance = 0.0 if through_zero else abs(m[i] - c) / s[i]
                return (distance, abs(m[i]), i)

            fitting = [int(i) for i in np.flatnonzero(fits(c))]
            taken = sorted(fitting, key=take_key)[: target - n_assigned]
            for i in taken:
                assigned[i] = True
                assignment[i] = len(centres)
            steps.append(_step_row(round_index, pass_index, len(steps), n_powers, delta, c,
                                   best, m[taken], s_raw[taken]))
            centres.append(c)
            taken_per_step.append(taken)
            n_assigned += len(taken)
            del active[k]
        if n_assigned < target:
            n_powers, delta, toggle = _grow(n_powers, delta, toggle, cfg)
            pass_index += 1
    return _finish(mu, sigma, cfg, m, s_raw, assignment, centres, steps, taken_per_step)

