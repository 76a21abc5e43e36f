"""WFN, the value-only predecessor of PWFN (Subia-Waud & Dasmahapatra, ECCV 2022), as a baseline.

docs/method.md, section 8. A weight ``w`` may join centre ``c`` by value alone: the *relative distance*
``|w - c| / |w|`` is what counts, against an allowance that decays linearly from ``10 * delta`` in
the first round to ``delta`` in the last. Per round, with the weights fixed earlier kept as they are:

1. free weights with ``|w| < 2^-b`` go to zero (smallest first, up to the round's target);
2. order P = 1: the centres are powers of two; each free weight has a nearest centre; the centre
   that is nearest for the most weights takes the longest prefix of them (sorted by relative
   distance) whose running mean distance stays within the allowance, capped at what the round
   still needs; it then leaves the candidate list. Repeat until no centre can take a weight;
3. then P = 2, 3, 4: centres refined by signed power-of-two residuals (2^a +- 2^b +- ..., with
   strictly decreasing exponents), and step 2 again;
4. decision where the paper is silent: if the target is still not met after P = 4, the remaining
   weights needed go to their nearest order-4 centre, closest first (logged with ``delta = inf``).

The result has the same fields as :class:`pwfn_viz.core.clustering.ClusterResult`, so a WFN run is
recorded, replayed and plotted like a PWFN run.

    >>> import torch
    >>> res = wfn_round(torch.tensor([0.26, 0.24, 0.5, 0.001]), torch.zeros(4, dtype=torch.bool), 1.0, 0.05)
    >>> res.mu.tolist()
    [0.25, 0.25, 0.5, 0.0]
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from ..constants import MAX_POWERS, ZERO_BAND_EXPONENT
from ..core.clustering import STEP_COLUMNS, ClusterResult, target_count

WFN_FRACTIONS = (0.3, 0.6, 0.8, 0.9, 0.95, 0.975, 0.99, 0.9975, 0.999, 1.0)


def wfn_allowance(round_index: int, n_rounds: int, delta: float) -> float:
    """Linear decay from 10 * delta (first round) to delta (last round)."""
    if n_rounds <= 1:
        return delta
    return 10 * delta + (delta - 10 * delta) * round_index / (n_rounds - 1)


def wfn_centres(order: int, max_abs: float, b: int = 7) -> torch.Tensor:
    """Sums of ``order`` signed powers of two with strictly decreasing exponents in
    [-b, ceil(log2 max_abs)], the leading one positive; mirrored; sorted by (|c|, c).

    >>> wfn_centres(1, 1.0, b=2).tolist()
    [-0.25, 0.25, -0.5, 0.5, -1.0, 1.0]
    """
    frac, exp = math.frexp(max(max_abs, 2.0 ** -b))
    top = exp - 1 if frac == 0.5 else exp
    exps = range(top, -b - 1, -1)
    level = {(2.0 ** e, e) for e in exps}      # (value, lowest exponent used)
    values = {v for v, _ in level}
    for _ in range(order - 1):
        level = {(v + s * 2.0 ** e, e) for v, low in level for e in exps if e < low for s in (1, -1)}
        values |= {v for v, _ in level}
    positive = sorted(v for v in values if v > 0)
    return torch.tensor([x for v in positive for x in (-v, v)], dtype=torch.float64)


def _nearest(values: torch.Tensor, centres_sorted: torch.Tensor) -> torch.Tensor:
    """Index (into value-sorted centres) of each value's nearest centre; ties to the lower |c|."""
    right = torch.searchsorted(centres_sorted, values).clamp(max=centres_sorted.numel() - 1)
    left = (right - 1).clamp(min=0)
    d_left = (values - centres_sorted[left]).abs()
    d_right = (values - centres_sorted[right]).abs()
    tie_to_left = (d_left == d_right) & (centres_sorted[left].abs() < centres_sorted[right].abs())
    return torch.where((d_left < d_right) | tie_to_left, left, right)


def wfn_round(mu: torch.Tensor, fixed: torch.Tensor, fraction: float, allowance: float, *,
              sigma: torch.Tensor | None = None, b: int = ZERO_BAND_EXPONENT, max_order: int = MAX_POWERS,
              round_index: int = 0) -> ClusterResult:
    """One WFN round over flat weights ``mu``; weights in ``fixed`` keep their values."""
    if mu.dim() != 1 or fixed.shape != mu.shape or mu.numel() == 0:
        raise ValueError("mu and fixed must be non-empty 1-D tensors of the same shape")
    if not torch.isfinite(mu).all():
        raise ValueError("mu has NaN or inf entries")
    if not 0 < fraction <= 1 or not allowance > 0:
        raise ValueError(f"fraction={fraction} must be in (0, 1] and allowance={allowance} > 0")
    w = mu.detach().double()
    fixed = fixed.clone().bool()
    new_mu = mu.detach().clone()
    assignment = torch.full(mu.shape, -1, dtype=torch.long)
    need = target_count(fraction, mu.numel()) - int(fixed.sum())
    centres, rows = [], []

    def take(idx, c, order, allow, n_fit):
        nonlocal need
        sig = sigma.detach()[idx].double() if sigma is not None else torch.full((1,), math.nan)
        rows.append(dict(round=round_index, pass_index=order - 1, step=len(rows), P=order, delta=allow,
                         centre=c, n_fit=n_fit, n_taken=idx.numel(), mu_mean=w[idx].mean().item(),
                         mu_std=w[idx].std(unbiased=False).item(), sigma_mean=sig.mean().item(),
                         sigma_std=sig.std(unbiased=False).item()))
        new_mu[idx] = c
        fixed[idx] = True
        assignment[idx] = len(centres)
        centres.append(c)
        need -= idx.numel()

    free = (~fixed).nonzero().squeeze(1)
    small = free[w[free].abs() < 2.0 ** -b]
    if need > 0 and small.numel():
        small = small[torch.sort(w[small].abs(), stable=True).indices][:need]
        take(small, 0.0, 0, allowance, small.numel())
    for order in range(1, max_order + 1):
        if need <= 0:
            break
        free = (~fixed).nonzero().squeeze(1)
        active = wfn_centres(order, w[free].abs().max().item(), b)
        while need > 0 and active.numel():
            free = (~fixed).nonzero().squeeze(1)
            by_value = torch.sort(active).values
            nearest = by_value[_nearest(w[free], by_value)]
            counts = torch.stack([(nearest == c).sum() for c in active])   # active is in (|c|, c) order
            best = int(torch.argmax(counts))      # most weights; ties to the smaller |c|, then c < 0
            c = active[best].item()
            active = torch.cat([active[:best], active[best + 1:]])
            members = free[nearest == c]
            if members.numel() == 0:
                break
            rel = (w[members] - c).abs() / w[members].abs()
            order_idx = torch.sort(rel, stable=True).indices      # members are in index order
            running = rel[order_idx].cumsum(0) / torch.arange(1, rel.numel() + 1, dtype=rel.dtype)
            n_ok = int((running <= allowance).sum())               # running mean is non-decreasing
            if n_ok:
                take(members[order_idx[:min(n_ok, need)]], c, order, allowance, int(counts[best]))
    if need > 0:  # fallback: nearest order-max centre, closest first, beyond the allowance
        free = (~fixed).nonzero().squeeze(1)
        by_value = torch.sort(wfn_centres(max_order, w[free].abs().max().item(), b)).values
        nearest = by_value[_nearest(w[free], by_value)]
        rel = (w[free] - nearest).abs() / w[free].abs()
        chosen = torch.sort(rel, stable=True).indices[:need]
        for c in torch.unique(nearest[chosen]).tolist():
            idx = free[chosen][nearest[chosen] == c]
            take(idx, c, max_order, math.inf, idx.numel())
    new_sigma = sigma.detach().clone() if sigma is not None else torch.zeros_like(new_mu)
    return ClusterResult(mu=new_mu, sigma=new_sigma, fixed_mask=fixed, assignment=assignment,
                         centres=torch.tensor(centres, dtype=torch.float64),
                         steps=pd.DataFrame(rows, columns=STEP_COLUMNS))
