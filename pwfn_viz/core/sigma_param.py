"""How the optimiser sees sigma: the paper's raw sigma, or log sigma (as in Bayes by backprop).

A converted layer always *stores* sigma itself (``<name>_sigma``), so records, clustering,
sampling and every view read the same thing whichever parameterisation trains it. What changes
is the variable the optimiser steps:

* ``"raw"`` (the paper's): the optimiser steps sigma directly; a sigma pushed below zero is
  floored at 2^-30 where it is used.
* ``"log"``: the optimiser steps ``rho = log sigma``. Its gradient is ``sigma * dL/dsigma`` (chain
  rule), which is what gradient clipping sees too; momentum and Adam state live in rho space; after
  the step sigma = exp(rho) > 0. Relative moves of sigma then no longer shrink with sigma, so one
  learning rate suits sigmas of very different sizes (pair it with a large ``sigma_lr_mult``: an
  SGD step on rho moves sigma by ``lr * sigma^2 * dL/dsigma`` relative, tiny for sigma ~ 1e-3).

Both are exactly "SGD (or Adam) on the chosen variable": ``tests/test_sigma_param.py`` checks one
step of each against the formula.

Example:
    >>> SIGMA_PARAMS.names()
    ['log', 'raw']
"""
from __future__ import annotations

import contextlib

import torch

from ..registry import Registry
from ..constants import SAMPLING_SIGMA_FLOOR

SIGMA_PARAMS = Registry("sigma parameterisation")
SIGMA_PARAMS.register("raw", "the optimiser steps sigma itself (the paper's)")
SIGMA_PARAMS.register("log", "the optimiser steps log sigma; sigma = exp(log sigma) stays positive")

GROUP_KEY = "sigma_param"   # optimiser param-group key that marks the sigma group and its parameterisation


def _log_groups(opt: torch.optim.Optimizer) -> list[dict]:
    return [g for g in opt.param_groups if g.get(GROUP_KEY) == "log"]


@torch.no_grad()
def to_step_gradients(opt: torch.optim.Optimizer) -> None:
    """Turn dL/dsigma into dL/drho = sigma * dL/dsigma in the log groups (before clipping)."""
    for group in _log_groups(opt):
        for p in group["params"]:
            if p.grad is not None:
                p.grad.mul_(p.clamp(min=SAMPLING_SIGMA_FLOOR))


@contextlib.contextmanager
def stepping_variable(opt: torch.optim.Optimizer):
    """Inside the block the log groups' parameters hold rho = log sigma (what ``opt.step()``
    updates); on exit they hold sigma = exp(rho) again. Entries the step left alone (fixed
    weights, whose gradient is zero) get their exact old sigma back, not exp(log(sigma))."""
    saved = []
    with torch.no_grad():
        for group in _log_groups(opt):
            for p in group["params"]:
                sigma = p.clone()
                p.copy_(p.clamp(min=SAMPLING_SIGMA_FLOOR).log())
                saved.append((p, sigma, p.clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, sigma, rho in saved:
                p.copy_(torch.where(p == rho, sigma, p.exp()))
