"""What every 1-D k-means in :mod:`pwfn_viz.baselines.kmeans` returns, and the input rules they share.

* :class:`KMeansResult` -- centres, labels, inertia and how the run went.
* Input checks: values become a flat float64 NumPy copy (ValueError if empty or not finite),
  ``k`` must be an integer >= 1.
* The clamp: with at most ``k`` distinct values the answer is those values (inertia 0).
* :class:`SortedValues` -- values sorted once (with their prefix sums) for many k-means runs.

Example:
    >>> import torch
    >>> res = KMeansResult(torch.tensor([0.0, 1.0]), torch.tensor([0, 1, 1]), 0.0, 0, True)
    >>> res.k, res
    (2, KMeansResult(k=2, n=3, inertia=0, n_iter=0, converged=True))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


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


# ----------------------------------------------------------------------------- sorted values

class SortedValues:
    """Values sorted once, for many 1-D k-means runs on them (any k, init or seed).

    Every :func:`~pwfn_viz.baselines.kmeans.kmeans_1d` call sorts its input and takes prefix
    sums; on a million values that costs more than the Lloyd iterations.  Pass a
    ``SortedValues`` in place of the values and both are done once.  The results are exactly
    those for the plain values.  ``keep_order`` also keeps the sorting permutation, so the
    labels come from one scatter instead of a binary search per value (worth it when the same
    values are clustered more than once).

    >>> import torch
    >>> from pwfn_viz.baselines.kmeans import kmeans_1d
    >>> values = SortedValues(torch.tensor([[0.0, 10.0], [1.0, 12.0]]))
    >>> res = kmeans_1d(values, 2, init="linear")
    >>> res.centres.tolist(), res.labels.tolist()
    ([0.5, 11.0], [[0, 1], [0, 1]])
    """

    def __init__(self, x, name: str = "x", *, keep_order: bool = True):
        flat, self.shape = _as_flat_float64(x, name)
        self.flat = flat.copy() if keep_order else flat   # kept for later calls: not a view of the caller's data
        self.xs = np.sort(self.flat)
        self.order = np.argsort(self.flat, kind="stable") if keep_order else None
        self.n_distinct = _n_distinct(self.xs)
        self._prefix = self._var = None

    def __len__(self) -> int:
        return len(self.xs)

    @property
    def prefix_sums(self) -> tuple[np.ndarray, float]:
        """(prefix, shift): ``prefix[i] = sum(xs[:i] - shift)`` with ``shift`` the mean (centred
        values keep the segment sums accurate), in extended precision where available."""
        if self._prefix is None:
            shift = self.xs.mean()
            self._prefix = np.concatenate([[0.0], np.cumsum(self.xs - shift, dtype=np.longdouble)]), shift
        return self._prefix

    @property
    def var(self) -> float:
        if self._var is None:
            self._var = float(np.var(self.xs))
        return self._var


# ----------------------------------------------------------------------------- the clamp

def _clamped(values: SortedValues, k, keep_zero) -> KMeansResult | None:
    """The trivial answer when there are at most k distinct values (else None)."""
    if values.n_distinct > k:
        return None
    xs = values.xs
    distinct = np.unique(np.append(xs, 0.0) if keep_zero else xs)
    if distinct.size > k:  # keep_zero added a (k+1)-th value
        return None
    labels = np.searchsorted(distinct, values.flat).reshape(values.shape)
    centres = torch.from_numpy(distinct)
    return KMeansResult(centres, torch.from_numpy(labels), 0.0, 0, True, centres.clone())


def _prepare(x, k, keep_zero, name) -> tuple[SortedValues, KMeansResult | None]:
    """The values sorted (``x`` itself when it is a :class:`SortedValues`), and the trivial answer
    when there are at most k distinct values (else None): the start of every 1-D k-means here."""
    values = x if isinstance(x, SortedValues) else SortedValues(x, name, keep_order=False)
    return values, _clamped(values, k, keep_zero)


def _warn_clamped(k: int, used: int) -> None:
    warnings.warn(f"k={k} exceeds the number of distinct values ({used}); using those values as "
                  "the centres (inertia 0)", UserWarning, stacklevel=3)
