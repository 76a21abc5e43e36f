"""Globally optimal 1-D k-means by dynamic programming: :func:`optimal_kmeans_1d`.

For small problems (the method is in the function's docstring).  The size limit is
``OPTIMAL_MAX_CELLS`` below (distinct values x k), read at every call so that
``pwfn_viz.baselines.kmeans.optimal.OPTIMAL_MAX_CELLS = n`` changes it.

Example:
    >>> optimal_kmeans_1d([0.0, 1.0, 2.0, 10.0, 12.0], 2).inertia
    4.0
"""

from __future__ import annotations

import numpy as np

from .common import KMeansResult, _check_k, _prepare, _warn_clamped
from .lloyd import _finish

#: optimal_kmeans_1d refuses problems with (number of distinct values) * k above this.
OPTIMAL_MAX_CELLS = 2**23


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
    prepared, trivial = _prepare(x, k, False, name)
    if trivial is not None:
        return trivial, trivial.k < k
    xs = prepared.xs
    values, counts = np.unique(xs, return_counts=True)
    limit = OPTIMAL_MAX_CELLS
    if values.size * k > limit:
        raise ValueError(f"optimal_kmeans_1d: {values.size} distinct values x k={k} exceeds "
                         f"OPTIMAL_MAX_CELLS={limit}; use kmeans_1d for this size")
    starts = np.cumsum(np.concatenate([[0], counts]))[_optimal_starts(values, counts, k)]
    sizes = np.diff(np.append(starts, len(xs)))
    centres = np.add.reduceat(xs, starts) / sizes
    return _finish(prepared, centres, 0, True, None), False


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
