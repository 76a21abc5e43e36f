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
  the torch path (``pwfn_viz.clustering`` dispatches here); a greedy step reads nothing back
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

import contextlib
import functools
import importlib
import os

import torch

BACKENDS = ("torch", "triton")
ENV_VAR = "PWFN_BACKEND"
_forced: list[str] = []   # stack of use_backend(...) overrides, innermost last


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a backend; choose one of {BACKENDS} "
                         f"(or unset {ENV_VAR} for the automatic choice)")
    return name


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when ``import triton`` works (CUDA builds of torch ship it)."""
    try:
        import triton  # noqa: F401
    except Exception:   # ImportError, or a broken install that fails while importing
        return False
    return True


def automatic_backend() -> str:
    """``"triton"`` when CUDA is available and triton imports, else ``"torch"``."""
    return "triton" if torch.cuda.is_available() and triton_available() else "torch"


def forced_backend() -> str | None:
    """The backend forced by ``use_backend`` or ``PWFN_BACKEND``, or None (automatic)."""
    if _forced:
        return _forced[-1]
    env = os.environ.get(ENV_VAR, "").strip()
    return _check(env, ENV_VAR) if env else None


def backend() -> str:
    """The backend in force: the forced one if any, else the automatic choice."""
    return forced_backend() or automatic_backend()


@contextlib.contextmanager
def use_backend(name: str):
    """Force ``name`` ("torch" or "triton") inside a ``with`` block (nests; restores on exit)."""
    _forced.append(_check(name, "use_backend"))
    try:
        yield name
    finally:
        _forced.pop()


def interpreting() -> bool:
    """True when Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return triton_available() and bool(importlib.import_module("triton").knobs.runtime.interpret)


def use_triton(tensor: torch.Tensor) -> bool:
    """Should an operation on ``tensor`` run the Triton kernel? (See the module docstring.)"""
    forced = forced_backend()
    if forced == "torch":
        return False
    if forced is None:
        return tensor.is_cuda and automatic_backend() == "triton"
    if not triton_available():
        raise RuntimeError("the triton backend is forced but `import triton` fails; install triton "
                           f"or set {ENV_VAR}=torch")
    if not tensor.is_cuda and not interpreting():
        raise RuntimeError(f"the triton backend is forced but the tensor is on {tensor.device}: "
                           "Triton runs CUDA tensors, or CPU tensors under the interpreter "
                           f"(TRITON_INTERPRET=1); move the tensors to CUDA or set {ENV_VAR}=torch")
    return True


def triton_module(name: str):
    """Import ``pwfn_viz.kernels.<name>`` (a module of ``@triton.jit`` kernels), re-importing it
    when the interpreter setting changed since it was loaded (kernels are built for one mode)."""
    module = importlib.import_module(f"{__name__}.{name}")
    if module.INTERPRET != interpreting():
        module = importlib.reload(module)
    return module


from .clustering import coverage_counts, fitting_positions, snap  # noqa: E402
from .kmeans import kmeans_assign, kmeans_boundaries, lloyd_step  # noqa: E402
from .sampling import FusedNoise, fused_sample, fused_sampling_applies  # noqa: E402

__all__ = ["BACKENDS", "FusedNoise", "automatic_backend", "backend", "coverage_counts", "fitting_positions",
           "forced_backend", "fused_sample", "fused_sampling_applies", "interpreting", "kmeans_assign",
           "kmeans_boundaries", "lloyd_step", "snap", "triton_available", "use_backend", "use_triton"]
