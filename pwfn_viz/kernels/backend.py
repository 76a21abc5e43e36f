"""Which path a kernel call takes: the Triton kernel or its torch twin (see ``pwfn_viz.kernels``)."""
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
    module = importlib.import_module(f"{__package__}.{name}")
    if module.INTERPRET != interpreting():
        module = importlib.reload(module)
    return module
