"""What every 1-D k-means in :mod:`pwfn_viz.baselines.kmeans` returns, and the input rules they share.

* :class:`KMeansResult` -- centres, labels, inertia and how the run went.
* Input checks: values become a flat float64 NumPy copy (ValueError if empty or not finite),
  ``k`` must be an integer >= 1.
* The clamp: with at most ``k`` distinct values the answer is those values (inertia 0).

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


# ----------------------------------------------------------------------------- the clamp

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


def _prepare(x, k, keep_zero, name):
    """The flat float64 values, their shape and sorted copy, and the trivial answer when there are
    at most k distinct values (else None): the start of every 1-D k-means here."""
    flat, shape = _as_flat_float64(x, name)
    xs = np.sort(flat)
    return flat, shape, xs, _clamped(xs, flat, shape, k, keep_zero)


def _warn_clamped(k: int, used: int) -> None:
    warnings.warn(f"k={k} exceeds the number of distinct values ({used}); using those values as "
                  "the centres (inertia 0)", UserWarning, stacklevel=3)
