"""Sigma initialisation (docs/method.md, section 2): per tensor, from how far each weight sits
from a power of two; a registry so that ablations can add their own
(``@register_sigma_init(name)`` on ``fn(mu, **kwargs) -> sigma0`` of mu's shape).

    >>> sorted(SIGMA_INITS)
    ['constant', 'pwfn']
"""
from __future__ import annotations

import math

import torch

from ..constants import CONSTANT_SIGMA_INIT, SAMPLING_SIGMA_FLOOR, SIGMA_CAP, SIGMA_INIT_SCALE
from ..registry import Registry

SIGMA_INITS = Registry("sigma_init", "or add one with @register_sigma_init(name)")
register_sigma_init = SIGMA_INITS.register


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) for tensors of any size: torch.quantile
    refuses more than 2^24 entries, kthvalue does not."""
    flat = x.flatten()
    pos = q * (flat.numel() - 1)
    lo, hi = int(pos), min(int(pos) + 1, flat.numel() - 1)
    v_lo = flat.kthvalue(lo + 1).values
    v_hi = flat.kthvalue(hi + 1).values if hi != lo else v_lo
    return v_lo + (pos - lo) * (v_hi - v_lo)


def power_of_two_gap(mu: torch.Tensor) -> torch.Tensor:
    """r = (t - 1)(2 - t) / t^2 for |mu| = t * 2^k, t in [1, 2): 0 on a power of two (and at 0),
    largest half-way between two powers of two. Computed in float64."""
    a = mu.detach().double().abs()
    mantissa, _ = torch.frexp(a)          # a = mantissa * 2^e with mantissa in [0.5, 1)
    t = 2 * mantissa
    r = (t - 1) * (2 - t) / t.clamp(min=1) ** 2
    return torch.where(a == 0, torch.zeros_like(r), r)  # exact zeros sit on the zero centre


@register_sigma_init("pwfn")
def pwfn_sigma_init(mu: torch.Tensor, scale: float = SIGMA_INIT_SCALE, cap: float = SIGMA_CAP) -> torch.Tensor:
    """sigma0 = clip(scale * r / q75(r), 2^-30, cap), per tensor.

    Edge cases: exact zeros get r = 0 (certain, like a power of two); when q75(r) is 0 (most
    entries on a power of two, or a single such entry) the largest r is the reference instead,
    and when every r is 0 every sigma is the floor.

    >>> [round(v, 6) for v in pwfn_sigma_init(torch.tensor([1.0, 1.5, 0.75, 0.0])).tolist()]
    [0.0, 0.0025, 0.0025, 0.0]
    """
    r = power_of_two_gap(mu)
    ref = quantile(r, 0.75)
    if ref <= 0:
        ref = r.max()
    if ref <= 0:
        return torch.full_like(mu, SAMPLING_SIGMA_FLOOR)
    return (scale * r / ref).clamp(SAMPLING_SIGMA_FLOOR, cap).to(mu.dtype)


@register_sigma_init("constant")
def constant_sigma_init(mu: torch.Tensor, value: float = CONSTANT_SIGMA_INIT) -> torch.Tensor:
    """The ablation alternative: the same sigma0 for every weight (``value`` >= 0, finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"constant sigma init value={value!r} must be a finite number >= 0 (a standard deviation)")
    return torch.full_like(mu, value)
