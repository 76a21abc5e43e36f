"""Starting centres for 1-D k-means: a registry of init rules, filled by a decorator.

Every rule is ``fn(sorted_values, k, rng) -> k centres``; :func:`list_inits` names them and
:func:`register_init` adds one.  Built in: "linear" (evenly spaced from min to max),
"random" (k distinct data values), "density" (quantiles) and "kmeans++" (D^2 sampling).
:func:`init_centres` gives the sorted starting centres that :func:`pwfn_viz.baselines.kmeans.kmeans_1d`
would use.

Example:
    >>> list_inits()
    ['density', 'kmeans++', 'linear', 'random']
    >>> init_centres(range(9), 2, init="density").tolist()  # the 25% and 75% quantiles
    [2.0, 6.0]
"""

from __future__ import annotations

import bisect
import math
from typing import Callable

import numpy as np
import torch

from ...registry import Registry
from .common import _as_flat_float64, _check_k, _n_distinct


InitFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
_INITS = Registry("k-means init", hint="or add one with register_init")


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    """Decorator registering ``fn(sorted_values, k, rng) -> k centres`` under ``name``.

    ``sorted_values`` is a sorted float64 array with at least ``k + 1`` distinct values.

    Example:
        >>> @register_init("my_extremes")
        ... def _extremes(xs, k, rng):
        ...     return np.concatenate([xs[: k // 2], xs[len(xs) - (k - k // 2):]])
        >>> "my_extremes" in list_inits()
        True
        >>> _INITS.unregister("my_extremes")

    A name that is already registered is refused.
    """
    return _INITS.register(name)


def list_inits() -> list[str]:
    """Names accepted by ``init=``.

    >>> list_inits()
    ['density', 'kmeans++', 'linear', 'random']
    """
    return _INITS.names()


@register_init("linear")
def _init_linear(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Evenly spaced from min to max inclusive (k=1: the midrange)."""
    if k == 1:
        return np.array([xs[0] / 2 + xs[-1] / 2])
    return np.linspace(xs[0], xs[-1], k)


@register_init("random")
def _init_random(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct values drawn from the data (each element equally likely, repeats skipped).

    The first k distinct values of a random permutation.  They are found in a prefix of it
    (grown until it holds k distinct values), which gives the same values as sorting the whole
    permutation: a value's first appearance in a prefix is its first appearance overall.
    """
    order = rng.permutation(len(xs))
    size = min(len(xs), 2 * k)
    while True:
        head = xs[order[:size]]
        _, first_seen = np.unique(head, return_index=True)
        if first_seen.size >= k or size == len(xs):
            return head[np.sort(first_seen)[:k]]
        size = min(len(xs), 4 * size)


@register_init("density")
def _init_density(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Quantiles at (i + 0.5) / k, linearly interpolated (numpy's default quantile rule)."""
    pos = (np.arange(k) + 0.5) / k * (len(xs) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(xs) - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


@register_init("kmeans++")
def _init_kmeanspp(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Standard k-means++ (D^2 sampling), using the sorted order.

    A new centre only changes the nearest-centre distance of the values between the
    midpoints to its two neighbouring centres, a contiguous run of ``xs``.  Squared
    distances are kept with per-block sums (blocks of ~sqrt(N)), so a draw costs
    O(sqrt(N)) plus the length of that run instead of O(N).
    """
    n = len(xs)
    block = max(1, math.isqrt(n))
    n_blocks = -(-n // block)
    d2 = np.zeros(n_blocks * block)
    first = xs[rng.integers(n)]
    d2[:n] = (xs - first) ** 2
    block_sums = d2.reshape(n_blocks, block).sum(axis=1)
    chosen = [float(first)]  # kept sorted
    while len(chosen) < k:
        if block_sums.sum() > 0:
            c = xs[_draw_d2(d2, block_sums, block, rng)]
        else:  # the unchosen values are so close to centres that their squares underflow to 0
            c = rng.choice(np.setdiff1d(xs, chosen))
        j = bisect.bisect_left(chosen, c)
        left = chosen[j - 1] / 2 + c / 2 if j > 0 else -np.inf
        right = c / 2 + chosen[j] / 2 if j < len(chosen) else np.inf
        a = max(int(np.searchsorted(xs, left, "left")) - 1, 0)  # one spare value each side:
        b = min(int(np.searchsorted(xs, right, "right")) + 1, n)  # np.minimum keeps it exact
        np.minimum(d2[a:b], (xs[a:b] - c) ** 2, out=d2[a:b])
        b0, b1 = a // block, (b - 1) // block + 1
        block_sums[b0:b1] = d2[b0 * block:b1 * block].reshape(-1, block).sum(axis=1)
        chosen.insert(j, float(c))
    return np.array(chosen)


def _draw_d2(d2: np.ndarray, block_sums: np.ndarray, block: int, rng: np.random.Generator) -> int:
    """Index drawn with probability proportional to d2 (never one with d2 == 0; sum > 0)."""
    cum = np.cumsum(block_sums)
    r = rng.random() * cum[-1]
    bi = min(int(np.searchsorted(cum, r, "right")), len(cum) - 1)
    if block_sums[bi] <= 0:  # r rounded up to the total
        bi = int(np.flatnonzero(block_sums > 0)[-1])
    within = d2[bi * block:(bi + 1) * block]
    i = min(int(np.searchsorted(np.cumsum(within), r - (cum[bi] - block_sums[bi]), "right")),
            block - 1)
    if within[i] <= 0:  # rounding landed on a value that is already a centre
        nonzero = np.flatnonzero(within > 0)
        i = int(nonzero[min(np.searchsorted(nonzero, i), len(nonzero) - 1)])
    return bi * block + i


def init_centres(x, k: int, *, init: str = "kmeans++", seed: int = 0,
                 keep_zero: bool = False) -> torch.Tensor:
    """Sorted starting centres that :func:`kmeans_1d` would use (float64 tensor of shape (k,)).

    With ``keep_zero=True`` the centre nearest 0 is replaced by exactly 0 (unless one is 0).

    >>> init_centres([0.0, 1.0, 2.0, 3.0, 10.0], 3, init="linear").tolist()
    [0.0, 5.0, 10.0]
    >>> init_centres([1.0, 2.0, 3.0, 10.0], 2, init="linear", keep_zero=True).tolist()
    [0.0, 10.0]
    """
    flat, _ = _as_flat_float64(x, "x")
    xs = np.sort(flat)
    _check_k(k)
    if _n_distinct(xs) <= k:
        raise ValueError(f"init_centres needs more than k={k} distinct values, the input has "
                         f"{_n_distinct(xs)}; kmeans_1d would use the distinct values themselves")
    return torch.from_numpy(_initial_centres(xs, k, init, seed, keep_zero, None))


def _initial_centres(xs, k, init, seed, keep_zero, given) -> np.ndarray:
    if given is not None:
        c = _as_flat_float64(given, "init_centres")[0].copy()
        if c.size != k:
            raise ValueError(f"init_centres has {c.size} values but k={k}; pass exactly k centres")
    else:
        rule = _INITS.get(init)   # an unknown name: the registry's error, listing what exists
        c = np.asarray(rule(xs, k, np.random.default_rng(seed)), dtype=np.float64)
    if keep_zero and not np.any(c == 0):
        c[np.argmin(np.abs(c))] = 0.0
    return np.sort(c)
