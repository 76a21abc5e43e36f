"""GPU kernels (Triton) for the heavy parts, each with a torch reference path chosen automatically.

Which path runs:

* ``backend()`` is ``"triton"`` when CUDA is available and ``triton`` imports, else ``"torch"``;
  the environment variable ``PWFN_BACKEND=torch|triton`` forces one, and so does
  ``use_backend(...)`` (a context manager, for tests and benchmarks) for the code inside it.
* ``use_triton(tensor)`` is what the callers ask: automatic choice runs Triton only on CUDA
  tensors (a CPU tensor on a GPU machine takes the torch path); a forced ``"triton"`` runs it on
  any tensor, which for CPU tensors needs the Triton interpreter (``TRITON_INTERPRET=1``, the
  way CI tests the kernels).

The kernels (each module holds the torch reference next to the dispatching function):

* :mod:`pwfn_viz.kernels.clustering`: coverage counts, the winner's fit mask and the snap of
  the taken weights (with their removal from the counts) in a clustering round, exactly equal to
  the torch path (``pwfn_viz.core.clustering`` dispatches here); a greedy step reads nothing back
  but the counts.
* :mod:`pwfn_viz.kernels.sampling`: fused reparameterised sampling for converted layers, noise
  drawn inside the kernel from a counter-based generator and recomputed in backward, in the
  tensors' own memory layout; :mod:`pwfn_viz.kernels.loss_terms`: the regulariser and masked
  decay whose gradients (scaled like the loss) the sampling backward adds in the same kernel.
* :mod:`pwfn_viz.kernels.kmeans`: 1-D k-means boundaries (assignment) and centroid update on
  sorted values with prefix sums.

Example:
    >>> with use_backend("torch"):
    ...     backend()
    'torch'
"""
from __future__ import annotations

from .backend import (BACKENDS, ENV_VAR, automatic_backend, backend, forced_backend, interpreting, triton_available,
                      triton_module, use_backend, use_triton)
from .clustering import coverage_counts, fitting_positions, snap
from .kmeans import kmeans_assign, kmeans_boundaries, lloyd_step
from .sampling import FusedNoise, fused_sample, fused_sampling_applies

__all__ = ["BACKENDS", "FusedNoise", "automatic_backend", "backend", "coverage_counts", "fitting_positions",
           "forced_backend", "fused_sample", "fused_sampling_applies", "interpreting", "kmeans_assign",
           "kmeans_boundaries", "lloyd_step", "snap", "triton_available", "use_backend", "use_triton"]
