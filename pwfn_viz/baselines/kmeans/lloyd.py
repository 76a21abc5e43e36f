"""Exact Lloyd k-means on 1-D values, O(k log N) per iteration: :func:`kmeans_1d`.

The values are sorted once, so every cluster is a contiguous run of the sorted values.  One
iteration finds the k-1 boundaries (midpoints between adjacent centres) by binary search and
takes each new centre from prefix sums, instead of measuring N x k distances.  The iterates are
scikit-learn's ``KMeans(algorithm="lloyd")`` ones from the same initial centres; the shared
rules (ties, clamping, empty clusters, ``keep_zero``) are documented in :mod:`pwfn_viz.baselines.kmeans`.

Example:
    >>> res = kmeans_1d([0.0, 1.0, 2.0, 10.0, 12.0], 2, init="linear")
    >>> res.centres.tolist(), res.labels.tolist(), res.n_iter
    ([1.0, 11.0], [0, 0, 0, 1, 1], 2)
"""

from __future__ import annotations

import numpy as np
import torch

from .common import KMeansResult, SortedValues, _check_k, _prepare, _warn_clamped
from .init import _INITS, _initial_centres


def _boundaries(xs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """pos[j] = how many sorted values go to centres 0..j (j < k-1); c sorted.

    A binary search for each midpoint, then a fix-up with the exact rule (nearest, ties to
    the lower centre) for values within rounding of a midpoint.  Values move by runs of
    equal values, so equal values never straddle a boundary.
    """
    n = len(xs)
    lo, hi = c[:-1], c[1:]
    pos = np.searchsorted(xs, lo / 2 + hi / 2, side="right")
    while True:  # (the indices are clipped rather than masked: a few whole-array steps are quicker)
        at = xs[np.minimum(pos, n - 1)]  # first value above the boundary, but at least as close to lo
        up = (pos < n) & ((at - lo) <= (hi - at))
        before = xs[np.maximum(pos - 1, 0)]  # last value below the boundary, but closer to hi
        down = (pos > 0) & ((before - lo) > (hi - before))
        if not (up.any() or down.any()):
            break
        pos[up] = np.searchsorted(xs, xs[pos[up]], side="right")
        pos[down] = np.searchsorted(xs, xs[pos[down] - 1], side="left")
    dup = lo == hi
    if dup.any():  # equal centres: the first of a run takes everything, the rest are empty
        kept = np.flatnonzero(~dup)
        pos = np.append(pos[kept], n)[np.searchsorted(kept, np.arange(len(pos)))]
    return np.maximum.accumulate(pos)


def _lloyd(values: SortedValues, c, *, zero_fixed, max_iter, tol_abs):
    """Lloyd iterations on the sorted values from sorted centres c. Returns (centres, n_iter, converged)."""
    xs, n = values.xs, len(values)
    prefix, shift = values.prefix_sums
    prev_pos, n_iter, converged = None, 0, False
    edges = np.zeros(len(c) + 1, dtype=np.int64)  # cluster j is xs[edges[j]:edges[j+1]]
    edges[-1] = n
    for n_iter in range(1, max_iter + 1):
        pos = _boundaries(xs, c)
        edges[1:-1] = pos
        counts = edges[1:] - edges[:-1]
        at_edges = prefix[edges]
        sums = at_edges[1:] - at_edges[:-1]
        zero = np.searchsorted(c, 0.0) if zero_fixed else -1
        empty = counts == 0
        if zero >= 0:
            empty[zero] = False
        if empty.any():
            _relocate(xs - shift, c - shift, edges, counts, sums, np.flatnonzero(empty))
        if counts.all():  # the usual case: every cluster has values
            new = (sums / counts).astype(np.float64) + shift
        else:
            new = c.copy()
            filled = counts > 0
            new[filled] = (sums[filled] / counts[filled]).astype(np.float64) + shift
        if zero >= 0:
            new[zero] = 0.0
        centre_shift = float(np.sum((new - c) ** 2))
        c = np.sort(new)
        if prev_pos is not None and (pos == prev_pos).all():
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


def _finish(values: SortedValues, centres, n_iter, converged, init) -> KMeansResult:
    """Final labels (in the input's order and shape) and the inertia from a direct pass."""
    xs = values.xs
    pos = _boundaries(xs, centres)
    counts = np.diff(np.concatenate([[0], pos, [len(xs)]]))
    residual = xs - np.repeat(centres, counts)
    if values.order is not None:  # cluster j is the run xs[pos[j-1]:pos[j]]: put its label back in input order
        labels = np.empty(len(xs), dtype=np.int64)
        labels[values.order] = np.repeat(np.arange(len(centres)), counts)
    else:  # equal values never straddle a boundary, so a value's cluster is the first whose largest value reaches it
        upper = np.where(pos > 0, xs[np.maximum(pos - 1, 0)], -np.inf)  # largest value of clusters <= j
        labels = np.searchsorted(upper, values.flat, side="left")
    return KMeansResult(torch.from_numpy(centres), torch.from_numpy(labels.reshape(values.shape)),
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
    if init_centres is None:
        _INITS.get(init)   # an unknown name fails before any work, even when k is clamped
    values, trivial = _prepare(x, k, keep_zero, name)
    if trivial is not None:
        return trivial, trivial.k < k
    start = _initial_centres(values.xs, k, init, seed, keep_zero, init_centres)
    centres, n_iter, converged = _lloyd(values, start.copy(), zero_fixed=keep_zero, max_iter=max_iter,
                                        tol_abs=tol * values.var)
    return _finish(values, centres, n_iter, converged, start), False


def kmeans_1d(x, k: int, *, init: str = "kmeans++", seed: int = 0, keep_zero: bool = False,
              max_iter: int = 300, tol: float = 0.0, init_centres=None) -> KMeansResult:
    """Exact Lloyd k-means on 1-D values (any shape is flattened), O(k log N) per iteration.

    Same iterates as ``sklearn.cluster.KMeans(n_clusters=k, init=<the same centres>,
    n_init=1, algorithm="lloyd", tol=tol, max_iter=max_iter)``: same stopping rule (the
    assignment repeats, or the summed squared centre shift is <= ``tol * var(x)``), same
    empty-cluster rule and the same iteration count.

    Args:
        x: values (tensor, array or sequence), any shape, or a :class:`SortedValues` of them
            (sorted once for many calls; the result is the same).
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
