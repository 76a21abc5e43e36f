"""coremltools palettization, the tool a practitioner would reach for instead, as a baseline.

Two of its methods, each on a copy of the user's (unconverted) network, per-tensor look-up tables of
``2 ** n_bits`` values for every convolution and linear weight:

* :func:`palettize_post_training`: ``PostTrainingPalettizer`` (k-means on each tensor's values, no
  data, no training);
* :func:`palettize_dkm`: ``DKMPalettizer`` (differentiable k-means trained with the task loss for a
  given number of SGD steps, then finalised to hard assignments).

coremltools palettizes weights only: biases keep their float values (they are counted as they are
in the whole-network unique count and entropy the comparison reports). coremltools is an optional
dependency (``pip install coremltools``; ``make test`` installs it).

Example:
    >>> small = palettize_post_training(model, n_bits=3)      # doctest: +SKIP
    >>> small[0].weight.unique().numel() <= 8                 # doctest: +SKIP
    True
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings

import torch
import torch.nn as nn

from ..core import bayes

CONVERTIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def coremltools_available() -> bool:
    try:
        with _quiet():
            import coremltools.optimize.torch.palettization  # noqa: F401
    except Exception:   # ImportError, or an install that fails while importing
        return False
    return True


@contextlib.contextmanager
def _quiet():
    """coremltools logs k-means progress at INFO, and at import warns about untested torch and
    scikit-learn versions and its missing macOS-only runtime (irrelevant to palettization)."""
    loggers = [logging.getLogger(n) for n in ("coremltools", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _palettization():
    if not coremltools_available():
        raise ImportError("coremltools is not installed (or fails to import): `pip install coremltools` "
                          "to compare with its palettization")
    with _quiet():
        from coremltools.optimize.torch import palettization
    return palettization


def _check(model: nn.Module, n_bits: int) -> None:
    if not isinstance(n_bits, int) or not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits={n_bits!r}: coremltools palettizes with 1 to 8 bits per weight")
    if not any(isinstance(m, CONVERTIBLE) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no convolution or linear layer to palettize")
    if any(bayes.is_converted(m) for m in model.modules()):
        raise ValueError("palettize the plain network (e.g. run.plain_model_at(None)), not a converted one")


def palettize_post_training(model: nn.Module, n_bits: int) -> nn.Module:
    """A palettized copy of ``model``: per-tensor k-means with ``2 ** n_bits`` values, no training."""
    _check(model, n_bits)
    pal = _palettization()
    config = pal.PostTrainingPalettizerConfig.from_dict(
        {"global_config": {"n_bits": n_bits, "granularity": "per_tensor"}})
    with _quiet():
        return pal.PostTrainingPalettizer(copy.deepcopy(model).cpu().eval(), config).compress().eval()


def palettize_dkm(model: nn.Module, n_bits: int, loader, steps: int, *, lr: float = 1e-3, momentum: float = 0.9,
                  loss_fn=nn.functional.cross_entropy, device="cpu", seed: int = 0) -> nn.Module:
    """A palettized copy of ``model`` trained with DKM for ``steps`` SGD steps on ``loader``."""
    _check(model, n_bits)
    if steps < 1:
        raise ValueError(f"steps={steps}: DKM needs at least one training step")
    pal = _palettization()
    config = pal.DKMPalettizerConfig.from_dict({"global_config": {
        "n_bits": n_bits, "granularity": "per_tensor", "weight_threshold": 0, "milestone": 0}})
    torch.manual_seed(seed)
    with _quiet():
        palettizer = pal.DKMPalettizer(copy.deepcopy(model).to(device), config)
        prepared = palettizer.prepare()
        opt = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=momentum)
        prepared.train()
        done = 0
        for _ in range(math.ceil(steps / max(1, len(loader)))):
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss_fn(prepared(x.to(device)), y.to(device)).backward()
                opt.step()
                palettizer.step()
                done += 1
                if done == steps:
                    break
            if done == steps:
                break
        return palettizer.finalize(prepared).eval()


def palettized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every convolution / linear weight and bias of a (palettized) plain network, by name."""
    return {f"{name}.{attr}": getattr(m, attr).detach() for name, m in model.named_modules()
            if isinstance(m, CONVERTIBLE) for attr in ("weight", "bias") if getattr(m, attr, None) is not None}
