"""The loss terms of a converted model and its optimiser groups (docs/method.md, sections 3-4):
the sigma regulariser, the weight decay that spares fixed weights, and the parameter groups that
keep the optimiser's own decay off mu and sigma.

    >>> import torch, torch.nn as nn
    >>> from pwfn_viz.core.bayes import convert
    >>> model = convert(nn.Linear(3, 2)).train()
    >>> _ = model(torch.randn(4, 3))
    >>> loss = sigma_regulariser(model) + masked_weight_decay(model, 1e-4)
    >>> [len(g["params"]) for g in param_groups(model, 1e-4)]
    [2, 2, 0]
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..constants import REGULARISER_LAMBDA, SIGMA_CAP
from .bayes import BayesTensor, _free_mask, _sum_of_products, bayes_tensors


def _pass_free_mask(t: BayesTensor) -> torch.Tensor:
    """The latest training pass's mask of free weights (1/0 in mu's dtype), else a new one."""
    free = t.param.free
    return _free_mask(t.fixed, t.mu.dtype) if free is None or t.noise is None else free


class _RegulariserSum(torch.autograd.Function):
    """sum |eps| * max(0, cap - sigma)^2 over free weights (torch path), with the gradient
    -2 * |eps| * max(0, cap - sigma) written out: half the passes over the weights of the same
    expression left to autograd."""

    @staticmethod
    def forward(ctx, sigma, eps, free, cap: float):
        gap = (cap - sigma.detach()).clamp_(min=0)
        weighted = eps.abs().mul_(gap)          # |eps| * gap, on free weights only unless free is None
        if free is not None:
            weighted.mul_(free)
        ctx.save_for_backward(weighted)
        return _sum_of_products(weighted, gap)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        weighted, = ctx.saved_tensors
        return weighted * (-2 * grad), None, None, None


class _SquareSum(torch.autograd.Function):
    """sum mu^2 over free weights (torch path), gradient 2 * mu on free weights, 0 on fixed."""

    @staticmethod
    def forward(ctx, mu, free):
        free_mu = mu.detach() * free
        ctx.save_for_backward(free_mu)
        return _sum_of_products(free_mu, free_mu)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        free_mu, = ctx.saved_tensors
        return free_mu * (2 * grad), None


def _fused_by_device(items) -> dict:
    """Group (tensor, fixed, noise) triples by device: the fused loss terms take one device."""
    groups: dict = {}
    for item in items:
        groups.setdefault(item[0].device, []).append(item)
    return groups


def sigma_regulariser(model: nn.Module, lam: float = REGULARISER_LAMBDA, cap: float = SIGMA_CAP, *,
                      include_fixed: bool = False, include_bias: bool = True, from_pass: bool = False) -> torch.Tensor:
    """R = (lam / 2) * sum |eps| * max(0, cap - sigma)^2 over unfixed weights (docs/method.md, section 3),
    with eps the noise of each layer's latest training forward pass. Its gradient on sigma is
    -lam * max(0, cap - sigma) * |eps|: every sigma is pushed up towards ``cap``.

    ``include_fixed`` sums over fixed weights too and ``include_bias=False`` leaves biases out (the
    authors' code does both; docs/faithfulness.md).

    ``from_pass=True`` uses the sums each training pass computed with its sample (inside
    ``bayes.pass_terms(model)``, where they are this regulariser; else as the default): the gradient then joins the sampling backward, the fastest step, but the
    term shares the pass's graph, so the task loss and the term go through one ``backward()``
    (``(task + R).backward()``, as ``pwfn_viz.train.loop`` does). The default builds a node of
    its own, which any number of separate backward calls may use.

    Tensors sampled by the fused kernel (``pwfn_viz.kernels.sampling``) go through
    ``fused_regulariser``: the value from one reduction kernel per tensor, and a gradient that is
    exactly this one, scaled like the rest of the loss (``GradScaler``, division for gradient
    accumulation, repeated calls, a separate ``.backward()``); in the usual ``(task + R)
    .backward()`` it is added inside the sampling backward kernel instead of a pass of its own."""
    from .. import kernels
    from ..kernels.loss_terms import fused_regulariser
    total, fused, found = None, [], False
    for t in bayes_tensors(model):
        eps = t.noise
        if eps is None:
            continue
        found = True
        if t.attr == "bias" and not include_bias:
            continue
        if isinstance(eps, kernels.FusedNoise):
            if include_fixed:
                raise RuntimeError("include_fixed needs the noise of fixed weights, which the fused sampling kernel "
                                   "does not keep: call bayes.set_semantics(model, ...) first (it selects the torch path)")
            fused.append((t.sigma, t.fixed, eps))
            continue
        p = t.param
        if from_pass and p.reg_term is not None and p.cap == float(cap) and p.reg_fixed == bool(include_fixed):
            term = p.reg_term   # computed with the pass's sample
        else:
            term = _RegulariserSum.apply(t.sigma, eps, None if include_fixed else _pass_free_mask(t), float(cap))
        total = term if total is None else total + term
    if not found:
        raise RuntimeError("sigma_regulariser needs a training-mode forward pass first "
                           "(model.train(); loss = task_loss + sigma_regulariser(model))")
    out = None if total is None else lam / 2 * total
    for items in _fused_by_device(fused).values():
        term = fused_regulariser(*zip(*items), lam, cap)
        out = term if out is None else out + term
    if out is None:   # every tensor left out (biases only, include_bias=False): a zero with a graph
        out = sum(t.sigma.sum() * 0.0 for t in bayes_tensors(model))
    return out


def masked_weight_decay(model: nn.Module, weight_decay: float, *, from_pass: bool = False) -> torch.Tensor:
    """(wd / 2) * sum mu^2 over unfixed weights: SGD's weight decay as a loss term that leaves fixed
    weights exactly on their values (their optimiser group then uses weight_decay=0).

    Tensors whose latest training pass used the fused kernel go through ``fused_weight_decay``
    (one reduction kernel each; the gradient ``wd * mu`` is added inside the sampling backward
    kernel in the usual ``(task + decay).backward()``, scaled like the rest of the loss)."""
    from .. import kernels
    from ..kernels.loss_terms import fused_weight_decay
    terms, fused = [], []
    for t in bayes_tensors(model):
        noise = t.noise
        if isinstance(noise, kernels.FusedNoise) and kernels.fused_sampling_applies(t.mu, t.sigma, t.fixed_value):
            fused.append((t.mu, t.fixed, noise))
        else:
            decay = t.param.decay_term if from_pass and t.noise is not None else None   # from the pass (above)
            terms.append(decay if decay is not None else _SquareSum.apply(t.mu, _pass_free_mask(t)))
    if not terms and not fused:
        raise ValueError(f"{type(model).__name__} has no converted tensors; convert(model) first")
    out = weight_decay / 2 * torch.stack(terms).sum() if terms else None
    for items in _fused_by_device(fused).values():
        term = fused_weight_decay(*zip(*items), weight_decay)
        out = term if out is None else out + term
    return out


def param_groups(model: nn.Module, weight_decay: float, sigma_lr: float | None = None,
                 sigma_param: str = "raw", coupled_decay: bool = False) -> list[dict]:
    """Optimiser groups: converted mu, converted sigma, and everything else (norm layers,
    embeddings, tokens, with ``weight_decay``). Neither mu nor sigma gets the optimiser's decay
    (mu gets ``masked_weight_decay`` instead; sigma is governed by the regulariser).

    ``sigma_lr`` gives sigma a learning rate of its own (None: the optimiser's); ``sigma_param``
    ("raw" or "log", see :mod:`pwfn_viz.core.sigma_param`) is the variable the optimiser steps for
    sigma, read by ``train.loop.optimizer_step``. ``coupled_decay`` gives mu and sigma the
    optimiser's decay instead (add no ``masked_weight_decay`` then; docs/faithfulness.md)."""
    from .sigma_param import GROUP_KEY, SIGMA_PARAMS
    SIGMA_PARAMS.get(sigma_param)
    tensors = bayes_tensors(model)
    mus, sigmas = {id(t.mu) for t in tensors}, {id(t.sigma) for t in tensors}
    params = [p for p in model.parameters() if p.requires_grad]
    # coupled: the optimiser's own decay on mu and sigma of every weight, fixed ones too (the authors' code)
    bayes_decay = weight_decay if coupled_decay else 0.0
    sigma_group = {"params": [p for p in params if id(p) in sigmas], "weight_decay": bayes_decay, GROUP_KEY: sigma_param}
    if sigma_lr is not None:
        sigma_group["lr"] = sigma_lr
    return [{"params": [p for p in params if id(p) in mus], "weight_decay": bayes_decay}, sigma_group,
            {"params": [p for p in params if id(p) not in mus and id(p) not in sigmas], "weight_decay": weight_decay}]
