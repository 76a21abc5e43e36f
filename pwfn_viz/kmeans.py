"""k-means weight sharing on 1-D values: fast exact Lloyd, the exact optimum, and scopes.

This is the value-only baseline users know from Deep Compression, TF Model Optimization's
clustering and coremltools' palettization: every weight is replaced by the nearest of ``k``
shared values (the codebook).

Three entry points:

* :func:`kmeans_1d` -- Lloyd's algorithm, exact (the same iterates as scikit-learn's
  ``KMeans(algorithm="lloyd")`` from the same initial centres), but fast: the values are
  sorted once, so every cluster is a contiguous run of the sorted values.  One iteration
  finds the k-1 boundaries (midpoints between adjacent centres) by binary search and takes
  each new centre from prefix sums: O(k log N) per iteration instead of O(N k).
* :func:`optimal_kmeans_1d` -- the globally optimal clustering by dynamic programming
  (divide-and-conquer optimisation, O(k n log n) for n distinct values), for small problems.
* :func:`kmeans_quantize` -- one codebook for the whole network, per tensor or per output
  channel.

Rules shared by all of them (documented once, here):

* Assignment: each value goes to its nearest centre; a value exactly halfway between two
  centres goes to the lower one (what ``argmin`` over the sorted codebook picks).  Equal
  values always share a cluster.
* ``k`` larger than the number of distinct values: ``k`` is clamped.  The centres are the
  distinct values themselves, the inertia is 0 and a ``UserWarning`` says so.  (With
  ``keep_zero=True`` the value 0 counts as one of the distinct values.)
* Empty clusters (Lloyd): as in scikit-learn, each empty cluster is moved onto one of the
  values farthest from its current centre, and that value is taken out of its old
  cluster's mean.  If every value already sits on a centre, an empty centre stays put, and
  so does a centre whose cluster that relocation empties (scikit-learn moves those two onto
  the largest cluster's centre; both cases need duplicated centres or values).
* ``keep_zero=True``: one centre is exactly 0 and never moves (its cluster may be empty).
* Results live on the CPU in float64 (centres) / int64 (labels); inputs can be any float
  tensor, NumPy array or sequence.

Example:
    >>> import torch
    >>> from pwfn_viz.kmeans import kmeans_1d, optimal_kmeans_1d
    >>> x = torch.tensor([0.0, 1.0, 2.0, 10.0, 12.0])
    >>> res = kmeans_1d(x, 2, init="linear")
    >>> res.centres.tolist(), res.labels.tolist(), res.inertia
    ([1.0, 11.0], [0, 0, 0, 1, 1], 4.0)
    >>> res
    KMeansResult(k=2, n=5, inertia=4, n_iter=2, converged=True)
    >>> optimal_kmeans_1d(x, 2).inertia
    4.0
"""

from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import numpy as np
import torch

__all__ = [
    "KMeansResult",
    "QuantizeResult",
    "kmeans_1d",
    "optimal_kmeans_1d",
    "kmeans_quantize",
    "init_centres",
    "register_init",
    "list_inits",
    "list_scopes",
    "OPTIMAL_MAX_CELLS",
]

#: optimal_kmeans_1d refuses problems with (number of distinct values) * k above this.
OPTIMAL_MAX_CELLS = 2**23


@dataclass(repr=False)
class KMeansResult:
    """Result of a 1-D k-means run.

    Attributes:
        centres: sorted codebook, float64 tensor of shape (k_used,).
        labels: int64 tensor with the input's shape; ``centres[labels]`` is the quantised input.
        inertia: sum of squared errors, computed directly from the final assignment.
        n_iter: Lloyd iterations run, counted as scikit-learn counts them (0 if none were needed).
        converged: True if the assignment stopped changing (or the centre shift fell to ``tol``).
        init_centres: sorted starting centres (None for the dynamic programme).
    """

    centres: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int
    converged: bool
    init_centres: torch.Tensor | None = None

    @property
    def k(self) -> int:
        """Number of centres actually used (smaller than asked for only when clamped)."""
        return int(self.centres.numel())

    def __repr__(self) -> str:
        return (f"KMeansResult(k={self.k}, n={self.labels.numel()}, inertia={self.inertia:.6g}, "
                f"n_iter={self.n_iter}, converged={self.converged})")


# ----------------------------------------------------------------------------- initialisation

InitFn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
_INITS: dict[str, InitFn] = {}


def register_init(name: str) -> Callable[[InitFn], InitFn]:
    """Decorator registering ``fn(sorted_values, k, rng) -> k centres`` under ``name``.

    ``sorted_values`` is a sorted float64 array with at least ``k + 1`` distinct values.

    Example:
        >>> @register_init("my_extremes")
        ... def _extremes(xs, k, rng):
        ...     return np.concatenate([xs[: k // 2], xs[len(xs) - (k - k // 2):]])
        >>> "my_extremes" in list_inits()
        True
        >>> del _INITS["my_extremes"]
    """
    def decorator(fn: InitFn) -> InitFn:
        if name in _INITS:
            raise ValueError(f"k-means init {name!r} is already registered; pick another name")
        _INITS[name] = fn
        return fn
    return decorator


def list_inits() -> list[str]:
    """Names accepted by ``init=``.

    >>> list_inits()
    ['density', 'kmeans++', 'linear', 'random']
    """
    return sorted(_INITS)


@register_init("linear")
def _init_linear(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Evenly spaced from min to max inclusive (k=1: the midrange)."""
    if k == 1:
        return np.array([xs[0] / 2 + xs[-1] / 2])
    return np.linspace(xs[0], xs[-1], k)


@register_init("random")
def _init_random(xs: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct values drawn from the data (each element equally likely, repeats skipped)."""
    shuffled = xs[rng.permutation(len(xs))]
    _, first_seen = np.unique(shuffled, return_index=True)
    return shuffled[np.sort(first_seen)[:k]]


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
        if init not in _INITS:
            raise ValueError(f"unknown k-means init {init!r}; choose one of {list_inits()} "
                             "or add one with register_init")
        c = np.asarray(_INITS[init](xs, k, np.random.default_rng(seed)), dtype=np.float64)
    if keep_zero and not np.any(c == 0):
        c[np.argmin(np.abs(c))] = 0.0
    return np.sort(c)


# ----------------------------------------------------------------------------- input checks

def _as_flat_float64(x, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Flat float64 NumPy copy of ``x`` and its shape; ValueError if empty or not finite."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} has dtype {x.dtype}; k-means needs real values")
        arr = x.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} is empty; k-means needs at least one value")
    flat = arr.reshape(-1)
    bad = int(np.count_nonzero(~np.isfinite(flat)))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite value(s) (nan or inf); "
                         "fix or mask them before clustering")
    return flat, tuple(arr.shape)


def _check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _n_distinct(xs: np.ndarray) -> int:
    return 1 + int(np.count_nonzero(xs[1:] != xs[:-1]))


def _clamped(xs, flat, shape, k, keep_zero) -> KMeansResult | None:
    """The trivial answer when there are at most k distinct values (else None)."""
    if _n_distinct(xs) > k:
        return None
    values = np.unique(np.append(xs, 0.0) if keep_zero else xs)
    if values.size > k:  # keep_zero added a (k+1)-th value
        return None
    labels = np.searchsorted(values, flat).reshape(shape)
    centres = torch.from_numpy(values)
    return KMeansResult(centres, torch.from_numpy(labels), 0.0, 0, True, centres.clone())


def _warn_clamped(k: int, used: int) -> None:
    warnings.warn(f"k={k} exceeds the number of distinct values ({used}); using those values as "
                  "the centres (inertia 0)", UserWarning, stacklevel=3)


# ----------------------------------------------------------------------------- Lloyd on sorted data

def _boundaries(xs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """pos[j] = how many sorted values go to centres 0..j (j < k-1); c sorted.

    A binary search for each midpoint, then a fix-up with the exact rule (nearest, ties to
    the lower centre) for values within rounding of a midpoint.  Values move by runs of
    equal values, so equal values never straddle a boundary.
    """
    n = len(xs)
    lo, hi = c[:-1], c[1:]
    pos = np.searchsorted(xs, lo / 2 + hi / 2, side="right")
    while True:
        up = pos < n  # first value above the boundary, but at least as close to lo
        up[up] = (xs[pos[up]] - lo[up]) <= (hi[up] - xs[pos[up]])
        down = pos > 0  # last value below the boundary, but closer to hi
        down[down] = (xs[pos[down] - 1] - lo[down]) > (hi[down] - xs[pos[down] - 1])
        if not (up.any() or down.any()):
            break
        pos[up] = np.searchsorted(xs, xs[pos[up]], side="right")
        pos[down] = np.searchsorted(xs, xs[pos[down] - 1], side="left")
    dup = lo == hi
    if dup.any():  # equal centres: the first of a run takes everything, the rest are empty
        kept = np.flatnonzero(~dup)
        pos = np.append(pos[kept], n)[np.searchsorted(kept, np.arange(len(pos)))]
    return np.maximum.accumulate(pos)


def _lloyd(xs, c, *, zero_fixed, max_iter, tol_abs):
    """Lloyd iterations on sorted xs from sorted centres c. Returns (centres, n_iter, converged)."""
    n = len(xs)
    shift = xs.mean()  # prefix sums of centred values, in extended precision where available
    prefix = np.concatenate([[0.0], np.cumsum(xs - shift, dtype=np.longdouble)])
    prev_pos, n_iter, converged = None, 0, False
    for n_iter in range(1, max_iter + 1):
        pos = _boundaries(xs, c)
        edges = np.concatenate([[0], pos, [n]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        zero = np.searchsorted(c, 0.0) if zero_fixed else -1
        empty = counts == 0
        if zero >= 0:
            empty[zero] = False
        if empty.any():
            _relocate(xs - shift, c - shift, edges, counts, sums, np.flatnonzero(empty))
        new = c.copy()
        filled = counts > 0
        new[filled] = (sums[filled] / counts[filled]).astype(np.float64) + shift
        if zero >= 0:
            new[zero] = 0.0
        centre_shift = float(np.sum((new - c) ** 2))
        c = np.sort(new)
        if prev_pos is not None and np.array_equal(pos, prev_pos):
            converged = True  # same assignment twice: the centres are a fixed point
            break
        if centre_shift <= tol_abs:
            converged = True
            break
        prev_pos = pos
    return c, n_iter, converged


def _relocate(xc, cc, edges, counts, sums, empty) -> None:
    """scikit-learn's rule: move each empty cluster onto one of the farthest values (in place)."""
    owner = np.repeat(np.arange(len(counts)), np.diff(edges))
    dist = (xc - cc[owner]) ** 2
    if dist.max() == 0:
        return  # every value sits on a centre; nothing to gain, empty centres stay put
    far = np.argpartition(dist, -len(empty))[-len(empty):]
    for cluster, i in zip(empty, far):
        sums[owner[i]] -= xc[i]
        counts[owner[i]] -= 1
        sums[cluster] = xc[i]
        counts[cluster] = 1


def _finish(xs, flat, shape, centres, n_iter, converged, init) -> KMeansResult:
    """Final labels (in the input's order and shape) and the inertia from a direct pass."""
    pos = _boundaries(xs, centres)
    counts = np.diff(np.concatenate([[0], pos, [len(xs)]]))
    residual = xs - np.repeat(centres, counts)
    upper = np.where(pos > 0, xs[np.maximum(pos - 1, 0)], -np.inf)  # largest value of clusters <= j
    labels = np.searchsorted(upper, flat, side="left").reshape(shape)
    return KMeansResult(torch.from_numpy(centres), torch.from_numpy(labels),
                        float(np.sum(residual * residual)), n_iter, converged,
                        None if init is None else torch.from_numpy(init))


def _kmeans(x, k, *, init="kmeans++", seed=0, keep_zero=False, max_iter=300, tol=0.0,
            init_centres=None, name="x") -> tuple[KMeansResult, bool]:
    """kmeans_1d without the warning; also returns whether k was clamped."""
    _check_k(k)
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if init_centres is None and init not in _INITS:
        raise ValueError(f"unknown k-means init {init!r}; choose one of {list_inits()} "
                         "or add one with register_init")
    flat, shape = _as_flat_float64(x, name)
    xs = np.sort(flat)
    trivial = _clamped(xs, flat, shape, k, keep_zero)
    if trivial is not None:
        return trivial, trivial.k < k
    start = _initial_centres(xs, k, init, seed, keep_zero, init_centres)
    centres, n_iter, converged = _lloyd(xs, start.copy(), zero_fixed=keep_zero, max_iter=max_iter,
                                        tol_abs=tol * float(np.var(xs)))
    return _finish(xs, flat, shape, centres, n_iter, converged, start), False


def kmeans_1d(x, k: int, *, init: str = "kmeans++", seed: int = 0, keep_zero: bool = False,
              max_iter: int = 300, tol: float = 0.0, init_centres=None) -> KMeansResult:
    """Exact Lloyd k-means on 1-D values (any shape is flattened), O(k log N) per iteration.

    Same iterates as ``sklearn.cluster.KMeans(n_clusters=k, init=<the same centres>,
    n_init=1, algorithm="lloyd", tol=tol, max_iter=max_iter)``: same stopping rule (the
    assignment repeats, or the summed squared centre shift is <= ``tol * var(x)``), same
    empty-cluster rule and the same iteration count.

    Args:
        x: values (tensor, array or sequence), any shape.
        k: number of centres (clamped, with a warning, to the number of distinct values).
        init: one of :func:`list_inits`; ignored when ``init_centres`` is given.
        seed: seed for the random inits ("random", "kmeans++").
        keep_zero: keep one centre at exactly 0; it never moves.
        max_iter: at most this many Lloyd iterations.
        tol: relative tolerance on the centre shift, as in scikit-learn (0: until stable).
        init_centres: explicit k starting centres.

    Example:
        >>> res = kmeans_1d([-1.0, -0.9, 0.05, 1.0, 1.1], 3, init="linear", keep_zero=True)
        >>> res.centres.tolist(), res.labels.tolist()
        ([-0.95, 0.0, 1.05], [0, 0, 1, 2, 2])
    """
    result, clamped = _kmeans(x, k, init=init, seed=seed, keep_zero=keep_zero, max_iter=max_iter,
                              tol=tol, init_centres=init_centres)
    if clamped:
        _warn_clamped(k, result.k)
    return result


# ----------------------------------------------------------------------------- exact optimum

def optimal_kmeans_1d(x, k: int) -> KMeansResult:
    """Globally optimal 1-D k-means by dynamic programming over the sorted distinct values.

    Optimal clusters are contiguous runs of the sorted values, so the best split of the
    first j values into m clusters extends the best split of some shorter prefix into m-1.
    The best split point never decreases with j, which lets each of the k layers be solved
    by divide and conquer in O(n log n) for n distinct values (roughly a second per
    million n*k cells).  Refuses problems with ``n * k > OPTIMAL_MAX_CELLS`` (use
    :func:`kmeans_1d` there).  Segment costs come from float64 prefix sums of the centred
    values, so near-ties between partitions are decided only up to rounding; the returned
    inertia is computed directly.

    >>> res = optimal_kmeans_1d([1.0, 2.0, 3.0, 10.0, 11.0, 30.0], 3)
    >>> res.centres.tolist(), res.inertia
    ([2.0, 10.5, 30.0], 2.5)
    """
    result, clamped = _optimal(x, k)
    if clamped:
        _warn_clamped(k, result.k)
    return result


def _optimal(x, k, *, name="x") -> tuple[KMeansResult, bool]:
    """optimal_kmeans_1d without the warning; also returns whether k was clamped."""
    _check_k(k)
    flat, shape = _as_flat_float64(x, name)
    xs = np.sort(flat)
    trivial = _clamped(xs, flat, shape, k, False)
    if trivial is not None:
        return trivial, trivial.k < k
    values, counts = np.unique(xs, return_counts=True)
    if values.size * k > OPTIMAL_MAX_CELLS:
        raise ValueError(f"optimal_kmeans_1d: {values.size} distinct values x k={k} exceeds "
                         f"OPTIMAL_MAX_CELLS={OPTIMAL_MAX_CELLS}; use kmeans_1d for this size")
    starts = np.cumsum(np.concatenate([[0], counts]))[_optimal_starts(values, counts, k)]
    sizes = np.diff(np.append(starts, len(xs)))
    centres = np.add.reduceat(xs, starts) / sizes
    return _finish(xs, flat, shape, centres, 0, True, None), False


def _optimal_starts(v: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Index (into v) where each of the k optimal clusters starts."""
    n = len(v)
    vc = v - np.average(v, weights=w)  # centred: less cancellation in the segment costs
    cw = np.concatenate([[0], np.cumsum(w)])
    s1 = np.concatenate([[0], np.cumsum(w * vc)])
    s2 = np.concatenate([[0], np.cumsum(w * vc * vc)])

    def cost(i, j):  # squared error of the run v[i:j]
        s = s1[j] - s1[i]
        return np.maximum(s2[j] - s2[i] - s * s / (cw[j] - cw[i]), 0)

    best = np.full(n + 1, np.inf)  # best[j]: first j values, m clusters
    best[1:] = cost(0, np.arange(1, n + 1))
    split = np.zeros((k + 1, n + 1), dtype=np.int32)  # split[m, j]: start of the m-th cluster
    for m in range(2, k + 1):
        j_max = n - (k - m)  # leave at least one value for each later cluster
        new = np.full(n + 1, np.inf)
        # pending sub-problems (j range, allowed split range), solved a whole level at a time
        jlo, jhi, ilo, ihi = (np.array([a]) for a in (m, j_max, m - 1, j_max - 1))
        while jlo.size:
            mid = (jlo + jhi) // 2
            lens = np.minimum(ihi, mid - 1) - ilo + 1
            first = np.cumsum(lens) - lens
            task = np.repeat(np.arange(mid.size), lens)
            i = np.arange(lens.sum()) - first[task] + ilo[task]
            total = best[i] + cost(i, mid[task])
            low = np.minimum.reduceat(total, first)
            at = np.minimum.reduceat(np.where(total == low[task], np.arange(i.size), i.size), first)
            new[mid], split[m, mid] = low, i[at]
            left, right = jlo < mid, mid < jhi
            jlo, jhi, ilo, ihi = (np.concatenate([jlo[left], mid[right] + 1]),
                                  np.concatenate([mid[left] - 1, jhi[right]]),
                                  np.concatenate([ilo[left], i[at][right]]),
                                  np.concatenate([i[at][left], ihi[right]]))
        best = new
    starts, j = np.zeros(k, dtype=np.int64), n
    for m in range(k, 1, -1):
        starts[m - 1] = j = split[m, j]
    return starts


# ----------------------------------------------------------------------------- scopes

class QuantizeResult(NamedTuple):
    """What :func:`kmeans_quantize` returns (unpacks as a 3-tuple).

    quantized: same names, shapes, dtypes and devices, every value replaced by its centre.
    codebooks: name -> sorted float64 centres; for scope "channel", name -> list with one
        codebook per output channel (dim 0); for scope "global" every name maps to the same
        shared tensor.
    labels: name -> int64 indices into that tensor's (or that row's) codebook.
    """

    quantized: dict[str, torch.Tensor]
    codebooks: dict[str, torch.Tensor | list[torch.Tensor]]
    labels: dict[str, torch.Tensor]


def _scope_global(arrays, cluster):
    res = cluster(np.concatenate([a.reshape(-1) for a in arrays.values()]), "all tensors")
    edges = np.cumsum([0] + [a.size for a in arrays.values()])
    flat = res.labels.reshape(-1)
    labels = {name: flat[edges[i]:edges[i + 1]].reshape(a.shape).clone()
              for i, (name, a) in enumerate(arrays.items())}
    return {name: res.centres for name in arrays}, labels


def _scope_layer(arrays, cluster):
    results = {name: cluster(a, name) for name, a in arrays.items()}
    return ({name: r.centres for name, r in results.items()},
            {name: r.labels for name, r in results.items()})


def _scope_channel(arrays, cluster):
    codebooks, labels = {}, {}
    for name, a in arrays.items():
        rows = a.reshape(a.shape[0] if a.ndim else 1, -1)
        results = [cluster(row, f"{name}[{r}]") for r, row in enumerate(rows)]
        codebooks[name] = [res.centres for res in results]
        labels[name] = torch.stack([res.labels for res in results]).reshape(a.shape)
    return codebooks, labels


_SCOPES = {"global": _scope_global, "layer": _scope_layer, "channel": _scope_channel}
_ALGORITHMS = {"lloyd": _kmeans, "optimal": _optimal}


def list_scopes() -> list[str]:
    """Names accepted by ``scope=`` in :func:`kmeans_quantize`.

    >>> list_scopes()
    ['channel', 'global', 'layer']
    """
    return sorted(_SCOPES)


def kmeans_quantize(tensors: Mapping[str, torch.Tensor], k: int, *, scope: str = "global",
                    algorithm: str = "lloyd", **kmeans_kwargs) -> QuantizeResult:
    """Share weights by k-means: one codebook for all tensors, per tensor, or per output channel.

    Args:
        tensors: name -> floating-point tensor (e.g. the conv/linear weights of a model).
        k: codebook size (per group).  Groups with at most k distinct values keep their
            distinct values; one ``UserWarning`` reports how many groups that happened to.
        scope: "global" (one codebook), "layer" (one per tensor) or "channel" (one per slice
            along dim 0 of each tensor).
        algorithm: "lloyd" (:func:`kmeans_1d`) or "optimal" (:func:`optimal_kmeans_1d`).
        **kmeans_kwargs: passed to :func:`kmeans_1d` (init, seed, keep_zero, max_iter, ...).

    Example:
        >>> w = {"a": torch.tensor([[0.0, 0.25], [1.0, 1.25]]), "b": torch.tensor([0.75, 0.5])}
        >>> q, books, labels = kmeans_quantize(w, 2, scope="global", init="linear")
        >>> books["a"].tolist(), q["b"].tolist(), labels["a"].tolist()
        ([0.25, 1.0], [1.0, 0.25], [[0, 0], [1, 1]])
        >>> [len(b) for b in kmeans_quantize(w, 1, scope="channel").codebooks["a"]]
        [1, 1]
    """
    if scope not in _SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {list_scopes()}")
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {sorted(_ALGORITHMS)}")
    if algorithm == "optimal" and kmeans_kwargs:
        raise ValueError(f"algorithm='optimal' takes no k-means options, got {sorted(kmeans_kwargs)}")
    _check_k(k)
    if not isinstance(tensors, Mapping) or not tensors:
        raise ValueError("kmeans_quantize needs a non-empty dict of name -> tensor")
    arrays = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"tensor {name!r} must be a floating-point torch.Tensor, got {kind}")
        flat, shape = _as_flat_float64(t, f"tensor {name!r}")
        arrays[name] = flat.reshape(shape)

    clamped = []

    def cluster(values, label):
        res, was_clamped = _ALGORITHMS[algorithm](values, k, name=label, **kmeans_kwargs)
        clamped.append(was_clamped)
        return res

    codebooks, labels = _SCOPES[scope](arrays, cluster)
    if any(clamped):
        warnings.warn(f"k={k} exceeds the number of distinct values in {sum(clamped)} of "
                      f"{len(clamped)} group(s) (scope={scope!r}); those codebooks hold just "
                      "their distinct values", UserWarning, stacklevel=2)
    quantized = {}
    for name, t in tensors.items():
        books = codebooks[name]
        if isinstance(books, list):
            rows = labels[name].reshape(len(books), -1)
            values = torch.stack([book[row] for book, row in zip(books, rows)])
        else:
            values = books[labels[name]]
        quantized[name] = values.reshape(t.shape).to(dtype=t.dtype, device=t.device)
    return QuantizeResult(quantized, codebooks, labels)
