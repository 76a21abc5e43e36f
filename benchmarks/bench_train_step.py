"""Benchmark: one training step of a converted timm model (resnet18, a ViT) against the plain step.

Variants, built from the same initial weights and timed side by side on the same batch, with the
same fraction of the converted weights fixed (``--fixed``, default 0.5: the middle of a schedule):

* ``deterministic``: the plain model; SGD (lr 1e-3, momentum 0.9, weight decay 1e-4).
* ``pwfn torch``: ``pwfn_viz.core.bayes.convert``, the default (corrected) semantics: fixed weights
  exact, regulariser and decay on free weights, sampling on the torch path.
* ``pwfn noisy fixed``: the same with the reference semantics (docs/faithfulness.md): fixed weights
  sampled, regulariser on every weight sigma, the optimiser's decay: the plain approach's work.
* ``pwfn fused``: the default semantics, sampling with the fused Triton kernels (CUDA only).
* ``plain approach``: conv/linear modules *replaced* by Bayesian layers that sample their weights
  with separate torch ops, keep the noise, and edit the gradients after backward (regulariser
  gradient added, fixed weights' gradients zeroed), as the paper authors' code does.

A step is what ``pwfn_viz.train.loop.train_steps`` does: forward, cross-entropy (+ the sigma
regulariser and the decay that spares fixed weights for converted models), zero_grad, backward,
gradient-norm clip 1.0, SGD step. Times are medians over steps, measured in alternating blocks so
that clock drift hits every variant alike.

    python -m benchmarks.bench_train_step --device cuda      # batch 128 at 224x224, float32, NCHW
    python -m benchmarks.bench_train_step --device cuda --amp bf16 --channels-last
    python -m benchmarks.bench_train_step --device cpu       # batch 8 at 64x64
    python -m benchmarks.bench_train_step --device cpu --model vit_tiny_patch16_224 --threads 1

``--amp bf16|fp16`` runs forward and loss under autocast (the loss terms of converted models stay
outside it, as in ``pwfn_viz.train.loop``; fp16 adds a GradScaler); ``--channels-last`` moves every
model and the batch to channels_last.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from pwfn_viz import kernels
from pwfn_viz.core import bayes, loss_terms
from pwfn_viz.train import semantics as training_semantics
from pwfn_viz.train.config import RunConfig
from pwfn_viz.train.loop import backward, clip_and_step, optimizer_step

REFERENCE, CORRECTED = RunConfig(profile="reference").semantics(), RunConfig().semantics()

LR, MOMENTUM, WD, CLIP = 1e-3, 0.9, 1e-4, 1.0


# ---------------------------------------------------------------- the authors' approach, in brief

class _SampledLayer(nn.Module):
    """A replaced conv/linear: mu and sigma parameters for the weight and the bias, noise drawn and
    combined by separate ops (the authors' layers sample the bias too and regularise only the
    weight's sigma)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer   # keeps its hyper-parameters (stride, padding, ...); weights are ours
        self.names = ("weight", "bias") if layer.bias is not None else ("weight",)
        for name in self.names:
            value = getattr(layer, name).detach()
            self.register_parameter(f"{name}_mu", nn.Parameter(value.clone()))
            self.register_parameter(f"{name}_sigma", nn.Parameter(bayes.pwfn_sigma_init(value)))
            self.register_buffer(f"{name}_fixed", torch.zeros_like(value, dtype=torch.bool))
        del layer.weight, layer.bias
        self.eps = {}

    def sampled(self, name: str):
        mu = getattr(self, f"{name}_mu")
        if not self.training:
            return mu
        self.eps[name] = torch.randn_like(mu)
        return mu + getattr(self, f"{name}_sigma").clamp(min=bayes.SIGMA_MIN) * self.eps[name]

    def forward(self, x):
        w = self.sampled("weight")
        b = self.sampled("bias") if "bias" in self.names else None
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, self.layer.stride, self.layer.padding, self.layer.dilation, self.layer.groups)

    @torch.no_grad()
    def edit_gradients(self, lam: float, cap: float):
        """After backward: add the regulariser's gradient to the weight's sigma, zero the fixed
        entries' gradients."""
        self.weight_sigma.grad.add_(-lam * (cap - self.weight_sigma).clamp(min=0) * self.eps["weight"].abs())
        for name in self.names:
            fixed = getattr(self, f"{name}_fixed")
            getattr(self, f"{name}_mu").grad.masked_fill_(fixed, 0)
            getattr(self, f"{name}_sigma").grad.masked_fill_(fixed, 0)


def authors_model(model: nn.Module) -> nn.Module:
    """Replace every Conv2d / Linear of ``model`` by a ``_SampledLayer`` (in place)."""
    for name, child in list(model.named_children()):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(model, name, _SampledLayer(child))
        else:
            authors_model(child)
    return model


# ---------------------------------------------------------------- steps

def _fix(model: nn.Module, fraction: float, seed: int = 1) -> None:
    """Mark a random ``fraction`` of the converted (or replaced) weights fixed, in place."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _SampledLayer):
            for name in m.names:
                fixed = getattr(m, f"{name}_fixed")
                fixed.copy_(torch.rand(fixed.shape, generator=g) < fraction)
    for t in bayes.bayes_tensors(model):
        t.fixed.copy_(torch.rand(t.fixed.shape, generator=g) < fraction)
        t.fixed_value.copy_(torch.where(t.fixed, t.mu.detach(), torch.zeros_like(t.fixed_value)))


def _variants(device: torch.device, fused: bool, channels_last: bool = False, model_name: str = "resnet18",
              resolution: int = 64, fixed: float = 0.5) -> dict:
    torch.manual_seed(0)
    extra = {"img_size": resolution} if model_name.startswith("vit") or model_name.startswith("deit") else {}
    base = timm.create_model(model_name, pretrained=False, num_classes=1000, **extra)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    plain = copy.deepcopy(base).to(device, memory_format=fmt)
    converted = bayes.convert(copy.deepcopy(base)).to(device, memory_format=fmt)
    noisy = bayes.convert(copy.deepcopy(base)).to(device, memory_format=fmt)
    training_semantics.prepare(noisy, REFERENCE)
    authors = authors_model(copy.deepcopy(base)).to(device, memory_format=fmt)
    for m in (converted, noisy, authors):
        _fix(m, fixed)
    variants = {"deterministic": (plain, torch.optim.SGD(plain.parameters(), lr=LR, momentum=MOMENTUM,
                                                         weight_decay=WD), "plain", "torch")}
    conv_opt = torch.optim.SGD(loss_terms.param_groups(converted, WD), lr=LR, momentum=MOMENTUM)
    variants["pwfn torch"] = (converted, conv_opt, "pwfn", "torch")
    noisy_groups = training_semantics.param_groups(noisy, REFERENCE, weight_decay=WD, sigma_lr=None, sigma_param="raw")
    variants["pwfn noisy fixed"] = (noisy, torch.optim.SGD(noisy_groups, lr=LR, momentum=MOMENTUM), "reference", "torch")
    if fused:
        variants["pwfn fused (triton)"] = (converted, conv_opt, "pwfn", "triton")
    variants["plain approach"] = (authors, torch.optim.SGD(authors.parameters(), lr=LR, momentum=MOMENTUM,
                                                           weight_decay=WD), "authors", "torch")
    return variants


def step(model, opt, kind: str, x, y, amp: str | None = None, scaler=None) -> None:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    converted = kind in ("pwfn", "reference")
    with bayes.pass_terms(model) if converted else contextlib.nullcontext():   # as train_steps does
        with torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(model(x).float(), y)
        if converted:   # outside autocast, as in pwfn_viz.train.loop.train_steps
            loss = loss + training_semantics.loss_terms(model, CORRECTED if kind == "pwfn" else REFERENCE,
                                                        reg_lambda=bayes.REG_LAMBDA, reg_cap=bayes.REG_CAP,
                                                        weight_decay=WD, from_pass=True)
    if kind == "authors":
        _authors_update(model, opt, loss, scaler)
    else:
        optimizer_step(model, opt, loss, scaler=scaler, grad_clip=CLIP)


def _authors_update(model, opt, loss, scaler=None) -> None:
    """``pwfn_viz.train.loop.optimizer_step``'s update with the authors' gradient edit between the
    (unscaled) backward and the clip: zero_grad, backward, edit, clip, step."""
    backward(opt, loss, scaler)
    for m in model.modules():
        if isinstance(m, _SampledLayer):
            m.edit_gradients(bayes.REG_LAMBDA, bayes.REG_CAP)
    clip_and_step(model, opt, scaler=scaler, grad_clip=CLIP)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(device: str = "cpu", batch: int = 8, resolution: int = 64, warmup: int = 2, steps: int = 6,
        blocks: int = 2, amp: str | None = None, channels_last: bool = False, model: str = "resnet18",
        fixed: float = 0.5) -> dict:
    """Time every variant; returns {"rows": [...], "device": name, ...}."""
    model_name, dev = model, torch.device(device)
    torch.backends.cudnn.benchmark = True
    variants = _variants(dev, dev.type == "cuda" and kernels.triton_available(), channels_last, model_name,
                         resolution, fixed)
    scalers = {name: torch.amp.GradScaler(dev.type) if amp == "fp16" else None for name in variants}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=g).to(dev)
    failed = {}
    for name, (model, opt, kind, backend) in list(variants.items()):   # warm up (cudnn autotune, compiles)
        model.train()
        try:
            with kernels.use_backend(backend):
                for _ in range(warmup):
                    step(model, opt, kind, x, y, amp, scalers[name])
        except Exception as exc:   # e.g. no C compiler for Triton's launcher: report, time the others
            if name == "deterministic":
                raise
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            del variants[name]
    times = {name: [] for name in variants}
    peaks = {}
    per_block = max(1, steps // blocks)
    for _ in range(blocks):
        for name, (model, opt, kind, backend) in variants.items():
            with kernels.use_backend(backend):
                if dev.type == "cuda":
                    _sync(dev)
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(per_block):
                    _sync(dev)
                    t0 = time.perf_counter()
                    step(model, opt, kind, x, y, amp, scalers[name])
                    _sync(dev)
                    times[name].append(time.perf_counter() - t0)
                if dev.type == "cuda":
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    base = statistics.median(times["deterministic"])
    plain = statistics.median(times["plain approach"])
    rows = [dict(variant=name, ms=1e3 * statistics.median(t), ratio=statistics.median(t) / base,
                 vs_plain=statistics.median(t) / plain,
                 peak_mib=peaks[name] / 2 ** 20 if name in peaks else None, steps=len(t))
            for name, t in times.items()]
    n_weights = sum(t.mu.numel() for t in bayes.bayes_tensors(variants["pwfn torch"][0]))
    return dict(rows=rows, device=_device_name(dev), batch=batch, resolution=resolution, n_weights=n_weights,
                model=model_name, fixed=fixed,
                failed=failed, precision=f"{amp} autocast" if amp else "float32",
                layout="channels_last" if channels_last else "NCHW")


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU, {torch.get_num_threads()} threads"


def report(res: dict) -> list[str]:
    lines = [f"training step, timm {res.get('model', 'resnet18')} ({res['n_weights']:,} converted weights, "
             f"{res.get('fixed', 0):.0%} fixed), batch {res['batch']} "
             f"at {res['resolution']}x{res['resolution']}, {res.get('precision', 'float32')}, "
             f"{res.get('layout', 'NCHW')}, device: {res['device']}",
             f"{'variant':<22} | {'ms/step':>9} | {'vs deterministic':>16} | {'vs plain approach':>17} | "
             f"{'peak MiB':>9} | steps"]
    for r in res["rows"]:
        peak = f"{r['peak_mib']:9.0f}" if r["peak_mib"] is not None else f"{'-':>9}"
        lines.append(f"{r['variant']:<22} | {r['ms']:9.1f} | {r['ratio']:15.3f}x | {r['vs_plain']:16.3f}x | "
                     f"{peak} | {r['steps']}")
    ours = {r["variant"]: r for r in res["rows"]}
    for name in ("pwfn torch", "pwfn noisy fixed"):
        lines.append(f"target: {name} <= the plain approach: {ours[name]['vs_plain']:.3f}x -> "
                     f"{'MET' if ours[name]['vs_plain'] <= 1.0 else 'NOT MET'}")
    for name, why in res.get("failed", {}).items():
        lines.append(f"{name}: FAILED, not timed: {why}")
    if res["device"].startswith("CPU"):
        lines.append("(CPU: peak memory not measured in-process; the fused Triton path needs CUDA)")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--amp", choices=["bf16", "fp16"], help="autocast forward and loss (default: float32)")
    ap.add_argument("--channels-last", action="store_true", help="models and batch in channels_last")
    ap.add_argument("--model", default="resnet18", help="a timm model: resnet18, vit_tiny_patch16_224, ...")
    ap.add_argument("--fixed", type=float, default=0.5, help="fraction of the converted weights fixed")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = args.device == "cuda"
    res = run(args.device, args.batch or (128 if gpu else 8), args.resolution or (224 if gpu else 64),
              warmup=5 if gpu else 2, steps=args.steps, amp=args.amp, channels_last=args.channels_last,
              model=args.model, fixed=args.fixed)
    print("\n".join(report(res)))


if __name__ == "__main__":
    main()
