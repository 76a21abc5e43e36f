"""Bayesian conversion: every conv/linear weight and bias becomes mu (its value) and sigma.

``convert(model)`` works on any ``nn.Module`` without touching its ``forward``: each converted
tensor (``weight``, ``bias``) gets a :class:`BayesianWeight` parametrization
(``torch.nn.utils.parametrize``): parametrize keeps mu as the tensor's ``original``, the
parametrization holds sigma, the fixed mask and the fixed values, and computes the tensor the
layer's own forward reads (docs/method.md, section 1):

    training:   w = mu + max(sigma, 2^-30) * eps,  eps ~ N(0, 1), drawn at each read of the weight
                (once per forward pass for conv and linear layers)
    evaluation: w = mu
    fixed:      w = fixed_value exactly (no task gradient reaches mu or sigma there)

All state lives in parameters and buffers (``conv1.parametrizations.weight.original`` is mu,
``conv1.parametrizations.weight.0.sigma`` sigma, ``...0.fixed`` and ``...0.fixed_value``), so
``state_dict``, ``.to()``, ``deepcopy``, DDP, ``torch.compile`` and any optimiser work as usual, and
nothing is attached to the user's modules beyond parametrize's own. Norm layers, embeddings and
tokens are left deterministic.

Example:
    >>> import torch, torch.nn as nn
    >>> model = convert(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    >>> [t.name for t in bayes_tensors(model)]
    ['0.weight', '0.bias', '2.weight', '2.bias']
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..constants import CONSTANT_SIGMA_INIT, REGULARISER_LAMBDA, SAMPLING_SIGMA_FLOOR, SIGMA_CAP  # noqa: F401
# sigma initialisation lives in sigma_init.py; its names stay importable from here
from .sigma_init import (SIGMA_INITS, constant_sigma_init, power_of_two_gap, pwfn_sigma_init,  # noqa: F401
                         quantile, register_sigma_init)

# The former names of three constants (pwfn_viz.constants holds them; CONSTANT_SIGMA_INIT too), for callers
# importing them here.
SIGMA_MIN, REG_LAMBDA, REG_CAP = SAMPLING_SIGMA_FLOOR, REGULARISER_LAMBDA, SIGMA_CAP
# Every convolution and transposed convolution (torch's public classes; LazyConv* are subclasses)
CONVERTIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

# ---------------------------------------------------------------------------------------------
# Conversion
def _free_mask(fixed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 where free, 0 where fixed, in ``dtype``: masking by multiplication is several times faster
    on a CPU than ``masked_fill`` or ``where`` with a bool mask that is about half set."""
    return fixed.logical_not().to(dtype)


class _SampleWithTerms(torch.autograd.Function):
    """``w = mu + max(sigma, floor) * eps``, fixed entries replaced by ``base`` (None: sampled like
    the rest), with the backward written out: ``grad_mu = g`` and ``grad_sigma = g * eps`` on free
    weights (sigma's only where it is above the floor), 0 on fixed ones; a fused multiply-add and
    float-mask products, about half the passes of autograd's graph of the same expression with
    ``where``. And, from the same pass, the two loss terms' sums: ``reg = sum |eps| *
    max(0, cap - sigma)^2`` (times ``reg_mask`` when given) and ``decay = sum free * mu^2``.
    Outputs (w, reg, decay); the backward gets the gradients reaching all three at once (whatever
    the loss's scale, and whichever of them reached it), so the terms' gradients join the sampling
    gradients in the same two passes instead of passes and accumulations of their own. With
    ``cap=None`` the sums are not computed (reg and decay are constant zeros)."""

    @staticmethod
    def forward(ctx, mu, sigma, eps, free, base, cap: float, reg_mask):
        ctx.set_materialize_grads(False)
        with torch.autocast(mu.device.type, enabled=False):   # the sums in the parameters' precision
            w = torch.addcmul(mu, sigma.clamp(min=SAMPLING_SIGMA_FLOOR), eps)
            if base is not None:   # w * free + base * (1 - free): exactly base where fixed, w where free
                w.mul_(free).addcmul_(base, torch.rsub(free, 1))
            if cap is None:   # no loss terms from this pass
                ctx.save_for_backward(sigma, eps, free, None, None)
                zero = mu.new_zeros(())
                ctx.mark_non_differentiable(zero)
                return w, zero, zero
            gap = (cap - sigma.detach()).clamp_(min=0)
            weighted = eps.abs().mul_(gap)
            if reg_mask is not None:
                weighted.mul_(reg_mask)
            free_mu = mu.detach() * free
            reg, decay = _sum_of_products(weighted, gap), _sum_of_products(free_mu, free_mu)
        ctx.save_for_backward(sigma, eps, free, weighted, free_mu)
        return w, reg, decay

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, g_reg, g_decay):
        sigma, eps, free, weighted, free_mu = ctx.saved_tensors
        grad_mu = grad_sigma = None
        if ctx.needs_input_grad[0] and (g is not None or g_decay is not None):
            grad_mu = g * free if g is not None else torch.zeros_like(free_mu)
            if g_decay is not None:          # d(sum free * mu^2) = 2 * free * mu
                grad_mu.addcmul_(free_mu, g_decay, value=2.0)
        if ctx.needs_input_grad[1] and (g is not None or g_reg is not None):
            if g is not None:                # clamp passes no gradient at or below its floor (few weights)
                grad_sigma = torch.mul(g, eps).mul_(free).masked_fill_(sigma <= SAMPLING_SIGMA_FLOOR, 0)
            else:
                grad_sigma = torch.zeros_like(weighted)
            if g_reg is not None:            # d(sum |eps| * gap^2) = -2 * |eps| * gap
                grad_sigma.addcmul_(weighted, g_reg, value=-2.0)
        return grad_mu, grad_sigma, None, None, None, None, None


class BayesianWeight(nn.Module):
    """The parametrization of one converted tensor: ``forward(mu)`` is the tensor the layer uses.

    Holds sigma (a parameter), the fixed mask and values (buffers), the training semantics
    (:func:`set_semantics`) and the noise of the latest training pass (``noise``: a tensor, or a
    ``FusedNoise`` on the fused Triton path, which is opt-in; see ``pwfn_viz.kernels``)."""

    def __init__(self, data: torch.Tensor, sigma0: torch.Tensor):
        super().__init__()
        self.sigma = nn.Parameter(sigma0)
        self.register_buffer("fixed", torch.zeros_like(data, dtype=torch.bool))
        self.register_buffer("fixed_value", torch.zeros_like(data))
        self.fixed_noise = self.follows_mu = self.torch_sampling = False
        # the loss terms each pass computes with its sample (see set_semantics, pass_terms)
        self.cap, self.reg_fixed, self.pass_terms = SIGMA_CAP, False, False
        self.noise = self.free = None   # this training pass's eps and mask of free weights
        self.reg_term = self.decay_term = None   # ... and its sums for the regulariser and the decay

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        from .. import kernels
        # coupled weight decay moves fixed mu: the fixed weight is then mu itself
        fixed_value = mu.detach() if self.follows_mu else self.fixed_value
        if not self.training:
            return torch.where(self.fixed, fixed_value, mu)
        if not (self.fixed_noise or self.follows_mu or self.torch_sampling) and \
                kernels.fused_sampling_applies(mu, self.sigma, fixed_value):
            w, self.noise = kernels.fused_sample(mu, self.sigma, self.fixed, fixed_value, SAMPLING_SIGMA_FLOOR)
            self.free = None
            return w
        # the loss terms need this pass's noise, and reuse its mask of free weights
        self.noise, self.free = torch.randn_like(mu), _free_mask(self.fixed, mu.dtype)
        # fixed_noise: a fixed weight is sampled around its mu (its value) like the rest, with no
        # task gradient; otherwise it is its value exactly
        w, reg, decay = _SampleWithTerms.apply(
            mu, self.sigma, self.noise, self.free, None if self.fixed_noise else fixed_value,
            float(self.cap) if self.pass_terms else None, None if self.reg_fixed else self.free)
        self.reg_term, self.decay_term = (reg, decay) if self.pass_terms else (None, None)
        return w

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value   # assigning layer.weight = value sets mu

    def extra_repr(self) -> str:
        return f"shape={tuple(self.sigma.shape)}, fixed={self.fixed.float().mean().item():.1%}"


def set_semantics(model: nn.Module, fixed_noise: bool = False, fixed_follows_mu: bool = False,
                  torch_sampling: bool = False, reg_cap: float = SIGMA_CAP, reg_fixed: bool = False) -> None:
    """How the converted layers of ``model`` treat fixed weights in training (docs/faithfulness.md):
    ``fixed_noise`` samples them too (``w = value + sigma * eps``, no task gradient to their mu or
    sigma), and ``fixed_follows_mu`` makes the fixed value read mu itself, so that an optimiser's
    own weight decay moves it. All False (the default): a fixed weight is its value exactly.
    ``torch_sampling`` (implied by either) keeps every pass on the torch path, whose noise covers
    fixed weights too (``sigma_regulariser(include_fixed=True)`` needs it). ``reg_cap`` and
    ``reg_fixed`` say which regulariser each training pass computes along with its sample (the
    one ``sigma_regulariser(cap=reg_cap, include_fixed=reg_fixed)`` asks for; any other is
    computed on its own, the same value and gradient, a little slower)."""
    for m in model.modules():
        if isinstance(m, BayesianWeight):
            m.cap, m.reg_fixed = float(reg_cap), bool(reg_fixed)
            m.fixed_noise, m.follows_mu = bool(fixed_noise), bool(fixed_follows_mu)
            m.torch_sampling = bool(torch_sampling or fixed_noise or fixed_follows_mu)


@contextlib.contextmanager
def pass_terms(model: nn.Module):
    """Inside the block, each training pass also computes the loss terms' sums with its sample, for
    ``sigma_regulariser(from_pass=True)`` and ``masked_weight_decay(from_pass=True)`` (the built-in
    loop's step); outside, passes skip that work and the terms build nodes of their own."""
    layers = [m for m in model.modules() if isinstance(m, BayesianWeight)]
    before = [m.pass_terms for m in layers]
    for m in layers:
        m.pass_terms = True
    try:
        yield
    finally:
        for m, was in zip(layers, before):
            m.pass_terms = was


def _convert_module(module: nn.Module, module_name: str, sigma_fn) -> None:
    from torch.nn.utils import parametrize
    for name in ("weight", "bias"):
        param = _own(module).get(name)
        if param is None:
            continue
        if isinstance(param, nn.parameter.UninitializedParameter):
            raise ValueError(f"{module_name}.{name} is not initialised yet (lazy module): run one "
                             "forward pass before converting")
        if not torch.isfinite(param).all():
            bad = int((~torch.isfinite(param)).sum())
            raise ValueError(f"{module_name or type(module).__name__}.{name} has {bad} non-finite "
                             "values (NaN/inf); fix or re-initialise the model before converting")
        data = param.detach()
        parametrize.register_parametrization(module, name, BayesianWeight(data, sigma_fn(data).to(data.dtype)),
                                             unsafe=True)


def _own(module: nn.Module) -> dict[str, nn.Parameter]:
    """``module``'s own parameters by name (not its children's; shared ones under each name)."""
    return dict(module.named_parameters(recurse=False, remove_duplicate=False))


# Modules whose weights are read by a forward that bypasses the parametrization, or that hold weights in
# a form the conversion does not handle: left deterministic, and named in convert()'s warning.
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def _frozen(module: nn.Module) -> list[str]:
    """The names of ``module``'s weight and bias that are frozen (requires_grad=False)."""
    return [name for name in ("weight", "bias")
            if _own(module).get(name) is not None and not _own(module)[name].requires_grad]


def _check_untied(model: nn.Module, todo: list[tuple[str, nn.Module]]) -> None:
    """A clear ValueError when a tensor to convert is shared with another module (tied weights)."""
    owners: dict[int, list[str]] = {}
    for mname, m in model.named_modules():
        for pname, p in _own(m).items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
    for mname, m in todo:
        for name in ("weight", "bias"):
            p = _own(m).get(name)
            if p is not None and len(owners[id(p)]) > 1:
                tied = owners[id(p)]
                raise ValueError(
                    f"{' and '.join(tied)} are one tied parameter; converting would untie them (each converted "
                    "layer gets its own mu and sigma). Untie them before converting, e.g. "
                    f"model.{tied[-1]} = nn.Parameter(model.{tied[-1]}.detach().clone()), "
                    "or convert a model without the tie")


def _unconverted_report(model: nn.Module, todo: list[tuple[str, nn.Module]], frozen: list[str]) -> str | None:
    """One line per module whose weight matrices stay deterministic (recurrent layers, attention
    internals, bilinear layers, frozen layers, embeddings holding most of the weights), or None."""
    converted = {id(m) for _, m in todo}
    n_converted = sum(p.numel() for _, m in todo for p in _own(m).values() if p is not None)
    n_embedding = sum(p.numel() for m in model.modules() if isinstance(m, _EMBEDDINGS)
                      for p in _own(m).values() if p is not None)
    lines = []
    for mname, m in model.named_modules():
        if id(m) in converted:
            continue
        own = [(pname, p) for pname, p in _own(m).items() if p is not None]
        if isinstance(m, _EMBEDDINGS):
            if n_embedding <= n_converted:   # embeddings are expected to stay; say so only when they dominate
                continue
        elif not any(p.dim() >= 2 and "weight" in pname for pname, p in own):
            continue   # norm layers, tokens, scalars: deterministic by design
        why = "frozen (requires_grad=False)" if mname in frozen else type(m).__name__
        lines.append(f"{mname or type(m).__name__} ({why}, {sum(p.numel() for _, p in own):,} parameters)")
    if not lines:
        return None
    return (f"{len(lines)} module(s) with weights stay deterministic (not converted, never fixed; {n_converted:,} "
            "parameters are converted): " + "; ".join(lines) + ". Only nn.Linear and convolutions are converted "
            "(nn.MultiheadAttention reads its weights directly: use timm-style attention built from nn.Linear; "
            "frozen layers are left as they are)")


def convert(model: nn.Module, sigma_init: str = "pwfn", **init_kwargs) -> nn.Module:
    """Make every convolution and linear layer of ``model`` Bayesian, in place; returns ``model``.

    ``sigma_init`` names an entry of ``SIGMA_INITS`` ("pwfn" or "constant"); extra keyword
    arguments go to it (e.g. ``convert(model, "constant", value=1e-4)``).

    Left deterministic, named in one warning with their parameter counts: modules that hold weight
    matrices but are not linear or convolutional (LSTM, GRU, RNN, Bilinear, nn.MultiheadAttention
    with its output projection, ...), frozen layers (a weight or bias with requires_grad=False:
    they stay frozen, unconverted), and embeddings when they hold more parameters than the
    converted layers. Tied weights (one parameter shared by a converted layer and another module,
    e.g. an LM head tied to its embedding) raise a ValueError naming them: untie them first.
    """
    init = SIGMA_INITS.get(sigma_init)
    if any(is_converted(m) for m in model.modules()):
        raise ValueError("model is already converted")
    sigma_fn = lambda mu: init(mu, **init_kwargs)  # noqa: E731
    # nn.MultiheadAttention reads out_proj.weight directly, bypassing its forward and our hook.
    skip = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, CONVERTIBLE) and id(m) not in skip]
    frozen = [n for n, m in candidates if _frozen(m)]
    todo = [(n, m) for n, m in candidates if n not in frozen]
    if not todo:
        raise ValueError(f"{type(model).__name__} has no convolution or linear layer to convert (norm layers, "
                         "embeddings and tokens are never converted; frozen layers are left frozen: "
                         f"{', '.join(frozen) or 'none here'})")
    for name, module in todo:
        for attr in ("weight", "bias"):
            if isinstance(_own(module).get(attr), nn.parameter.UninitializedParameter):
                raise ValueError(f"{name}.{attr} is not initialised yet (lazy module): run one forward pass "
                                 "before converting")
    _check_untied(model, todo)
    report = _unconverted_report(model, todo, frozen)
    if report:
        warnings.warn(report, stacklevel=2)
    for name, module in todo:
        _convert_module(module, name, sigma_fn)
    return model


def converted_names(module: nn.Module) -> tuple[str, ...]:
    """The converted tensors of ``module`` itself ("weight", "bias"), in that order."""
    plists = getattr(module, "parametrizations", None)
    if not isinstance(plists, nn.ModuleDict):
        return ()
    return tuple(n for n in ("weight", "bias") if n in plists and isinstance(plists[n][0], BayesianWeight))


def is_converted(module: nn.Module) -> bool:
    return bool(converted_names(module))


@dataclass(frozen=True)
class BayesTensor:
    """One converted tensor: ``name`` is the original parameter's name, e.g. ``"conv1.weight"``."""
    name: str
    module: nn.Module
    attr: str   # "weight" or "bias"

    param = property(lambda self: self.module.parametrizations[self.attr][0])   # its BayesianWeight
    mu = property(lambda self: self.module.parametrizations[self.attr].original)
    sigma = property(lambda self: self.param.sigma)
    fixed = property(lambda self: self.param.fixed)
    fixed_value = property(lambda self: self.param.fixed_value)
    noise = property(lambda self: self.param.noise)   # the latest training pass's eps (None: none since)

    @property
    def value(self) -> torch.Tensor:
        """The mean weight the network uses in evaluation (fixed value where fixed)."""
        if self.param.follows_mu:   # fixed weights follow mu
            return self.mu.detach().clone()
        return torch.where(self.fixed, self.fixed_value, self.mu.detach())

    def state_keys(self) -> dict[str, str]:
        """This tensor's state_dict keys: {"mu", "sigma", "fixed", "fixed_value"} -> key."""
        return state_keys(self.name)

    def __repr__(self):
        return (f"BayesTensor({self.name!r}, shape={tuple(self.mu.shape)}, "
                f"fixed={self.fixed.float().mean().item():.1%})")


def state_keys(name: str) -> dict[str, str]:
    """The state_dict keys of converted tensor ``name`` ("conv1.weight").

    >>> state_keys("conv1.weight")["sigma"]
    'conv1.parametrizations.weight.0.sigma'
    """
    prefix, _, attr = name.rpartition(".")
    base = f"{prefix}.parametrizations.{attr}" if prefix else f"parametrizations.{attr}"
    return {"mu": f"{base}.original", "sigma": f"{base}.0.sigma", "fixed": f"{base}.0.fixed",
            "fixed_value": f"{base}.0.fixed_value"}


def bayes_tensors(model: nn.Module) -> list[BayesTensor]:
    """The converted tensors of ``model`` in network order (weight before bias)."""
    return [BayesTensor(f"{mname}.{attr}" if mname else attr, m, attr)
            for mname, m in model.named_modules() for attr in converted_names(m)]


def clear_pass_noise(model: nn.Module) -> None:
    """Forget the latest training pass's noise (a new round starts without it)."""
    for m in model.modules():
        if isinstance(m, BayesianWeight):
            m.noise = m.free = m.reg_term = m.decay_term = None


def has_pass_noise(model: nn.Module) -> bool:
    """Has a training pass run since the noise was last cleared?"""
    return any(m.noise is not None for m in model.modules() if isinstance(m, BayesianWeight))


def flat_state(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All converted tensors flattened into one vector each: (mu, sigma, fixed_mask), with mu the
    value the network uses (the fixed value where fixed)."""
    ts = bayes_tensors(model)
    return (torch.cat([t.value.flatten() for t in ts]),
            torch.cat([t.sigma.detach().flatten() for t in ts]),
            torch.cat([t.fixed.flatten() for t in ts]))


@torch.no_grad()
def load_flat_state(model: nn.Module, mu: torch.Tensor, sigma: torch.Tensor, fixed: torch.Tensor) -> None:
    """Write flat vectors (as from ``flat_state`` or a clustering round) back into the layers;
    fixed weights get their fixed value."""
    tensors = bayes_tensors(model)
    total = sum(t.mu.numel() for t in tensors)
    if not mu.numel() == sigma.numel() == fixed.numel() == total:
        raise ValueError(f"flat state has {mu.numel()} entries, the model's converted tensors {total}")
    offset = 0
    for t in tensors:
        n = t.mu.numel()
        sl = slice(offset, offset + n)
        shape = t.mu.shape
        t.mu.copy_(mu[sl].view(shape))
        t.sigma.copy_(sigma[sl].view(shape))
        t.fixed.copy_(fixed[sl].view(shape))
        t.fixed_value.copy_(torch.where(t.fixed, t.mu, torch.zeros_like(t.mu)))
        # the last pass's noise, mask and terms belong to the old state
        t.param.noise = t.param.free = t.param.reg_term = t.param.decay_term = None
        offset += n


def _sum_of_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) in one pass (a dot product) when both lie contiguously, else elementwise."""
    if a.is_contiguous() and b.is_contiguous() and a.dtype in (torch.float32, torch.float64):
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()
