"""Fused reparameterised sampling of a converted tensor, with its loss terms' gradients fused in.

The torch path (``pwfn_viz.bayes._sample_hook``) draws ``eps`` with ``randn_like``, keeps it for
the regulariser and builds ``w`` from five separate tensor operations; the sigma regulariser and
the masked weight decay are ordinary autograd expressions. The fused path:

* forward: ``w = fixed ? fixed_value : mu + max(sigma, sigma_min) * eps`` in one kernel, with
  ``eps[i] = randn(seed, i)`` drawn inside it by a counter-based generator (Philox); eps is
  never written to memory. One int64 ``seed`` per tensor and pass is drawn from torch's
  generator on the tensor's device, so ``torch.manual_seed`` makes runs reproducible.
* loss terms: :func:`fused_regulariser` ``= (lam / 2) * sum |eps| * max(0, cap - sigma)^2`` and
  :func:`fused_weight_decay` ``= (wd / 2) * sum mu^2`` (sums over free, i.e. unfixed, weights;
  METHOD.md section 3) each take the tensors of a whole model: one reduction kernel per tensor
  and one sum, no elementwise autograd graph.
* backward: recomputes eps from the seed; ``grad_mu = free * (g + d * mu)`` and
  ``grad_sigma = free * (g * eps * [sigma > sigma_min] - r * max(0, cap - sigma) * |eps|)`` in
  one kernel, where ``r = lam * G`` and ``d = wd * G`` are handed over by the loss terms'
  backward, ``G`` being the gradient that reaches the term (a device tensor: 1 for a plain
  ``loss.backward()``, a ``GradScaler``'s scale, ``1 / accumulation steps``, ...).

The hand-over: autograd reaches a loss term's node (it hangs off the loss) before the sampling
node (it waits for the whole network's backward). When the term's backward finds that the
sampling backward of the same pass is still to run in the same backward call, it hands ``G``
over (a reference to the tensor, no copy, no host sync) and returns no gradient of its own;
several terms of the same kind add up. Otherwise (the sampling backward already ran or is no
part of this backward call: the terms' own ``.backward()``, ``autograd.grad`` on the terms alone,
a second backward through a retained graph) it computes its full gradient itself. Either way
the gradients equal the torch path's for any scaling of the loss and any number of calls.

Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)::

    w, noise = fused_sample(mu, sigma, fixed, fixed_value)   # w requires grad through mu, sigma
    loss = (w * x).sum() + fused_regulariser([sigma], [fixed], [noise], 2 ** -11, 0.05) \\
        + fused_weight_decay([mu], [fixed], [noise], 1e-4)
    (1024 * loss).backward()                                  # grads 1024x the torch path's
    eps = noise.materialise()                                 # the noise the kernels used (tests)
"""
from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import torch

BLOCK = 1024
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SIGMA_MIN = 2.0 ** -30   # the same floor as pwfn_viz.bayes.SIGMA_MIN (callers pass theirs)
MU, SIGMA = 0, 1         # input positions of mu and sigma in the sampling node


def _tk():
    from . import triton_module
    return triton_module("_tl_sampling")


def _grid(n: int) -> tuple[int]:
    return (max(1, -(-n // BLOCK)),)


def _graph_task_id() -> int:
    """The id of the backward call running now (-1 outside one, or on a torch without it)."""
    fn = getattr(torch._C, "_current_graph_task_id", None)
    return fn() if fn is not None else -1


@dataclass
class _Handover:
    """A loss term's gradient scale waiting for the sampling backward: ``coef * scale[0]``."""
    scale: torch.Tensor      # one-element device tensor
    coef: float
    task: int | None         # the backward call it belongs to (None: the next one, see arm())
    extra: object            # "reg": the cap; "decay": the mu tensor


class FusedNoise:
    """The noise of one fused sampling pass of one tensor, ``eps[i] = randn(seed, i)``, held as
    its seed only, and the loss terms' gradient scales handed over to the pass's backward."""

    def __init__(self, seed: torch.Tensor, numel: int):
        self.seed, self.numel = seed, numel
        self._node = None            # weak reference to the pass's autograd node
        self._ran_in = None          # the backward call its backward last ran in
        self._handover: dict[str, _Handover] = {}

    def materialise(self) -> torch.Tensor:
        """The float32 noise the kernels drew (flat; a test and debugging helper: O(N) memory)."""
        out = torch.empty(self.numel, dtype=torch.float32, device=self.seed.device)
        _tk().noise_kernel[_grid(self.numel)](self.seed, out, self.numel, BLOCK=BLOCK)
        return out

    def arm(self, lam: float, cap: float) -> None:
        """Make the pass's next backward add the regulariser's gradient ``-lam * max(0, cap -
        sigma) * |eps|`` at loss scale 1 (kernel checks; training uses :func:`fused_regulariser`,
        which follows the loss's scale)."""
        one = torch.ones(1, dtype=torch.float32, device=self.seed.device)
        self._handover["reg"] = _Handover(one, float(lam), None, float(cap))

    def _will_run(self, position: int) -> bool:
        """Is this pass's sampling backward still to run in the current backward call, computing
        the gradient of input ``position`` (MU or SIGMA)?"""
        node = self._node() if self._node is not None else None
        task = _graph_task_id()
        if node is None or task == -1 or self._ran_in == task or not node.needs_input_grad[position]:
            return False
        try:
            return bool(torch._C._will_engine_execute_node(node))
        except (AttributeError, RuntimeError):   # a torch without it, or an engine that refuses
            return False

    def _hand_over(self, kind: str, grad: torch.Tensor, coef: float, extra) -> bool:
        """Queue ``coef * grad`` for the sampling backward; False where the caller has to compute
        its gradient itself (see the module docstring)."""
        if not self._will_run(MU if kind == "decay" else SIGMA):
            return False
        task, scale = _graph_task_id(), grad.reshape(1)
        waiting = self._handover.get(kind)
        if waiting is None or waiting.task != task:
            self._handover[kind] = _Handover(scale, float(coef), task, extra)
            return True
        same = _same_tensor(waiting.extra, extra) if kind == "decay" else waiting.extra == extra
        if not same:   # another cap (or mu): the kernel takes one; the caller computes its own
            return False
        waiting.scale = waiting.scale.float() * waiting.coef + scale.float() * coef
        waiting.coef = 1.0
        return True

    def _take(self, kind: str, task: int) -> _Handover | None:
        waiting = self._handover.pop(kind, None)
        return waiting if waiting is not None and waiting.task in (None, task) else None

    def __repr__(self):
        return f"FusedNoise(numel={self.numel}, waiting={sorted(self._handover)})"


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                      and a.dtype == b.dtype)


def _as_bytes(mask: torch.Tensor) -> torch.Tensor:
    return mask.contiguous().view(torch.uint8)


class _FusedSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, fixed, fixed_value, noise: FusedNoise, sigma_min: float):
        out = torch.empty_like(mu, memory_format=torch.contiguous_format)
        _tk().sample_fwd_kernel[_grid(mu.numel())](
            mu.contiguous(), sigma.contiguous(), _as_bytes(fixed), fixed_value.contiguous(), noise.seed,
            out, mu.numel(), float(sigma_min), BLOCK=BLOCK)
        ctx.save_for_backward(sigma, fixed)
        ctx.noise, ctx.sigma_min = noise, float(sigma_min)
        noise._node = weakref.ref(ctx)   # ctx is the autograd node; weak: no cycle, no lifetime change
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        sigma, fixed = ctx.saved_tensors
        need_mu, need_sigma = ctx.needs_input_grad[MU], ctx.needs_input_grad[SIGMA]
        noise, task = ctx.noise, _graph_task_id()
        noise._ran_in = task
        reg, decay = noise._take("reg", task), noise._take("decay", task)
        reg, decay = reg if need_sigma else None, decay if need_mu else None
        if not (need_mu or need_sigma):
            return None, None, None, None, None, None
        grad = grad.contiguous()
        grad_mu = torch.empty_like(sigma, memory_format=torch.contiguous_format) if need_mu else grad
        grad_sigma = torch.empty_like(sigma, memory_format=torch.contiguous_format) if need_sigma else grad
        _tk().sample_bwd_kernel[_grid(sigma.numel())](
            grad, decay.extra.contiguous() if decay else grad, sigma.contiguous(), _as_bytes(fixed), noise.seed,
            reg.scale if reg else grad, decay.scale if decay else grad, grad_mu, grad_sigma, sigma.numel(),
            ctx.sigma_min, reg.coef if reg else 0.0, reg.extra if reg else 0.0, decay.coef if decay else 0.0,
            BLOCK=BLOCK, NEED_MU=need_mu, NEED_SIGMA=need_sigma, HAS_REG=reg is not None,
            HAS_DECAY=decay is not None)
        return (grad_mu if need_mu else None, grad_sigma if need_sigma else None, None, None, None, None)


def _result_dtype(tensors) -> torch.dtype:
    """The dtype the torch path's sum would have (float32 for float32 tensors)."""
    dtypes = {t.dtype for t in tensors}
    return dtypes.pop() if len(dtypes) == 1 else functools.reduce(torch.promote_types, dtypes)


def _block_sums(tensors, launch) -> torch.Tensor:
    """One float32 buffer of per-block partial sums for all tensors (``launch(i, grid, out)``
    fills tensor i's slice); the caller sums it once."""
    blocks = [_grid(t.numel())[0] for t in tensors]
    partial = torch.empty(sum(blocks), dtype=torch.float32, device=tensors[0].device)
    start = 0
    for i, b in enumerate(blocks):
        launch(i, (b,), partial[start:start + b])
        start += b
    return partial


class _FusedRegulariser(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam, cap, noises, fixeds, *sigmas):
        tk = _tk()
        partial = _block_sums(sigmas, lambda i, grid, out: tk.regulariser_sum_kernel[grid](
            sigmas[i].contiguous(), _as_bytes(fixeds[i]), noises[i].seed, out, sigmas[i].numel(),
            float(cap), float(lam) / 2, BLOCK=BLOCK))
        ctx.save_for_backward(*sigmas)
        ctx.lam, ctx.cap, ctx.noises, ctx.fixeds = float(lam), float(cap), noises, fixeds
        return partial.sum().to(_result_dtype(sigmas))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grads = []
        for i, (sigma, fixed, noise) in enumerate(zip(ctx.saved_tensors, ctx.fixeds, ctx.noises)):
            if not ctx.needs_input_grad[4 + i] or noise._hand_over("reg", grad, ctx.lam, ctx.cap):
                grads.append(None)
                continue
            out = torch.empty_like(sigma, memory_format=torch.contiguous_format)
            _tk().regulariser_grad_kernel[_grid(sigma.numel())](
                sigma.contiguous(), _as_bytes(fixed), noise.seed, grad.reshape(1), out, sigma.numel(),
                ctx.cap, ctx.lam, BLOCK=BLOCK)
            grads.append(out)
        return (None, None, None, None, *grads)


class _FusedDecay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight_decay, noises, fixeds, *mus):
        tk = _tk()
        partial = _block_sums(mus, lambda i, grid, out: tk.decay_sum_kernel[grid](
            mus[i].contiguous(), _as_bytes(fixeds[i]), out, mus[i].numel(), float(weight_decay) / 2,
            BLOCK=BLOCK))
        ctx.save_for_backward(*mus)
        ctx.wd, ctx.noises, ctx.fixeds = float(weight_decay), noises, fixeds
        return partial.sum().to(_result_dtype(mus))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        grads = []
        for i, (mu, fixed, noise) in enumerate(zip(ctx.saved_tensors, ctx.fixeds, ctx.noises)):
            if not ctx.needs_input_grad[3 + i] or noise._hand_over("decay", grad, ctx.wd, mu):
                grads.append(None)
            else:
                grads.append((mu * (grad * ctx.wd)).masked_fill_(fixed, 0))
        return (None, None, None, *grads)


def _check_terms(name: str, tensors, fixeds, noises) -> None:
    if not tensors or not len(tensors) == len(fixeds) == len(noises):
        raise ValueError(f"{name} needs one fixed mask and one FusedNoise per tensor (and at least one "
                         f"tensor); got {len(tensors)} tensors, {len(fixeds)} masks, {len(noises)} noises")
    for t, f, n in zip(tensors, fixeds, noises):
        if not t.numel() == f.numel() == n.numel or t.device != tensors[0].device:
            raise ValueError(f"{name}: a tensor of {t.numel()} entries on {t.device} does not match its "
                             f"mask ({f.numel()}), its noise ({n.numel}) or the first tensor's device "
                             f"({tensors[0].device}); call it once per device")


def fused_regulariser(sigmas, fixeds, noises, lam: float, cap: float) -> torch.Tensor:
    """``(lam / 2) * sum |eps| * max(0, cap - sigma)^2`` over the free weights of all ``sigmas``
    (one device), each with its pass's :class:`FusedNoise`; differentiable in the sigmas, with
    the gradient handed over to the sampling backward where it can be (module docstring)."""
    sigmas, fixeds, noises = tuple(sigmas), tuple(fixeds), tuple(noises)
    _check_terms("fused_regulariser", sigmas, fixeds, noises)
    return _FusedRegulariser.apply(float(lam), float(cap), noises, fixeds, *sigmas)


def fused_weight_decay(mus, fixeds, noises, weight_decay: float) -> torch.Tensor:
    """``(wd / 2) * sum mu^2`` over the free weights of all ``mus`` (one device); differentiable
    in the mus, gradient ``wd * mu`` on free weights, handed over to the sampling backward of
    each tensor's pass (its :class:`FusedNoise`) where it can be (module docstring)."""
    mus, fixeds, noises = tuple(mus), tuple(fixeds), tuple(noises)
    _check_terms("fused_weight_decay", mus, fixeds, noises)
    return _FusedDecay.apply(float(weight_decay), noises, fixeds, *mus)


def fused_sampling_applies(mu: torch.Tensor, sigma: torch.Tensor, fixed_value: torch.Tensor) -> bool:
    """Whether the fused kernel serves this tensor: the Triton backend applies to it (see
    ``pwfn_viz.kernels.use_triton``) and mu, sigma, fixed_value share a float32/16/bf16 dtype."""
    from . import use_triton
    return (mu.dtype in DTYPES and sigma.dtype == mu.dtype == fixed_value.dtype
            and mu.numel() < 2 ** 31 and use_triton(mu))


def fused_sample(mu: torch.Tensor, sigma: torch.Tensor, fixed: torch.Tensor, fixed_value: torch.Tensor,
                 sigma_min: float = SIGMA_MIN, seed: int | None = None) -> tuple[torch.Tensor, FusedNoise]:
    """One training sample of a converted tensor and its :class:`FusedNoise` (see module docstring).

    ``seed`` (tests): use this seed instead of drawing one from torch's generator.
    """
    if seed is None:
        seed_t = torch.randint(0, 2 ** 62, (1,), dtype=torch.int64, device=mu.device)
    else:
        seed_t = torch.tensor([int(seed)], dtype=torch.int64, device=mu.device)
    noise = FusedNoise(seed_t, mu.numel())
    return _FusedSample.apply(mu, sigma, fixed, fixed_value, noise, sigma_min), noise


def reference_sample(mu, sigma, fixed, fixed_value, eps, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """The torch path's formula with a given ``eps`` (the reference the tests compare against)."""
    w = mu + sigma.clamp(min=sigma_min) * eps.view_as(mu).to(mu.dtype)
    return torch.where(fixed, fixed_value, w)
