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

The code, one idea per module, each readable on its own from top to bottom:

* :mod:`pwfn_viz.baselines.kmeans.common` -- :class:`KMeansResult`, :class:`SortedValues` (values
  sorted once for many runs), the input checks and the clamp.
* :mod:`pwfn_viz.baselines.kmeans.init` -- the registry of starting-centre rules, :func:`init_centres`.
* :mod:`pwfn_viz.baselines.kmeans.lloyd` -- :func:`kmeans_1d`.
* :mod:`pwfn_viz.baselines.kmeans.optimal` -- :func:`optimal_kmeans_1d`.
* :mod:`pwfn_viz.baselines.kmeans.quantize` -- :func:`kmeans_quantize` and the registry of its scopes.

This module gathers their public names; import from here.

Example:
    >>> import torch
    >>> from pwfn_viz.baselines.kmeans import kmeans_1d, optimal_kmeans_1d
    >>> x = torch.tensor([0.0, 1.0, 2.0, 10.0, 12.0])
    >>> res = kmeans_1d(x, 2, init="linear")
    >>> res.centres.tolist(), res.labels.tolist(), res.inertia
    ([1.0, 11.0], [0, 0, 0, 1, 1], 4.0)
    >>> res
    KMeansResult(k=2, n=5, inertia=4, n_iter=2, converged=True)
    >>> optimal_kmeans_1d(x, 2).inertia
    4.0
"""

from .common import KMeansResult, SortedValues
from .init import init_centres, list_inits, register_init
from .lloyd import kmeans_1d
from .optimal import optimal_kmeans_1d
from .quantize import QuantizeResult, kmeans_quantize, list_scopes

# private helpers that the tests and benchmarks/gpu_suite.py check directly
from .init import _INITS, _draw_d2  # noqa: F401
from .lloyd import _boundaries  # noqa: F401

__all__ = [
    "KMeansResult",
    "QuantizeResult",
    "SortedValues",
    "kmeans_1d",
    "optimal_kmeans_1d",
    "kmeans_quantize",
    "init_centres",
    "register_init",
    "list_inits",
    "list_scopes",
]

