"""What a run's training semantics (``RunConfig.semantics()``, docs/faithfulness.md) mean for one
training step: how the model samples fixed weights, which loss terms are added, which optimiser
groups decay. The built-in loop and :class:`~pwfn_viz.train.fixer.Fixer` both go through here, so
the ``corrected`` and ``reference`` profiles train the same way in either.

    >>> from pwfn_viz import RunConfig
    >>> needs_loss_decay(RunConfig()), needs_loss_decay(RunConfig(profile="reference"))
    (True, False)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core import bayes, loss_terms as terms


def prepare(model: nn.Module, semantics: dict, reg_cap: float = bayes.REG_CAP) -> None:
    """Set how the converted ``model`` samples fixed weights and which regulariser each training
    pass computes with its sample (call after ``convert``)."""
    bayes.set_semantics(model, fixed_noise=semantics["fixed_noise"],
                        fixed_follows_mu=semantics["decay"] == "coupled",
                        torch_sampling=semantics["fixed_sigma_reg"], reg_cap=reg_cap,
                        reg_fixed=semantics["fixed_sigma_reg"])


def needs_loss_decay(config_or_semantics) -> bool:
    """True when weight decay is a loss term (``masked``), False when the optimiser decays (``coupled``)."""
    s = config_or_semantics if isinstance(config_or_semantics, dict) else config_or_semantics.semantics()
    return s["decay"] == "masked"


def loss_terms(model: nn.Module, semantics: dict, *, reg_lambda: float, reg_cap: float,
               weight_decay: float, from_pass: bool = False) -> torch.Tensor:
    """The sigma regulariser (over the weights the semantics name) plus, with ``masked`` decay,
    the weight decay of free mu, for the latest training pass of ``model``. ``from_pass``: the
    sums the pass computed with its sample (one ``(task + terms).backward()`` only; see
    ``pwfn_viz.core.loss_terms.sigma_regulariser``)."""
    total = terms.sigma_regulariser(model, reg_lambda, reg_cap, include_fixed=semantics["fixed_sigma_reg"],
                                    include_bias=semantics["bias_sigma_reg"], from_pass=from_pass)
    if needs_loss_decay(semantics):
        total = total + terms.masked_weight_decay(model, weight_decay, from_pass=from_pass)
    return total


def param_groups(model: nn.Module, semantics: dict, *, weight_decay: float, sigma_lr: float | None,
                 sigma_param: str) -> list[dict]:
    """Optimiser groups: with ``coupled`` decay mu and sigma carry the optimiser's decay."""
    return terms.param_groups(model, weight_decay, sigma_lr=sigma_lr, sigma_param=sigma_param,
                              coupled_decay=not needs_loss_decay(semantics))


def describe(config) -> str | None:
    """One line naming the profile and every point that differs from the corrected method, or
    None when the run trains with the corrected semantics throughout."""
    from .config import PROFILES
    ours, chosen = PROFILES.get("corrected"), config.semantics()
    differs = [f"{k}={chosen[k]!r}" for k in ours if chosen[k] != ours[k]]
    if not differs:
        return None
    return f"training semantics: profile {config.profile!r}; differs from the corrected method in " + ", ".join(differs)
