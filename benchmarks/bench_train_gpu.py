"""Training throughput of a converted resnet18 against the deterministic one, on a synthetic
ImageFolder read through timm's data pipeline (the ImageNet path), with AMP.

    python -m benchmarks.bench_train_gpu                 # GPU: batch 128 at 224, 300 steps, bf16
    python -m benchmarks.bench_train_gpu --quick         # CPU smoke run: tiny images, few steps

Both models are measured in the same process on the same data, alternating warm-up and timed
phases; the ratio (converted / deterministic images per second) is what to compare across machines.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image


def make_imagefolder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(1, per_class // 10))):
        for c in range(classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=85)


def throughput(model: nn.Module, loader, steps: int, warmup: int, device, amp: str | None, bayesian: bool) -> float:
    from pwfn_viz.core import loss_terms
    params = loss_terms.param_groups(model, 1e-4) if bayesian else model.parameters()
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    model.train()
    seen, t0, step = 0, None, 0
    while step < warmup + steps:
        for x, y in loader:
            if step == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, seen = time.perf_counter(), 0
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast():
                loss = nn.functional.cross_entropy(model(x).float(), y)
            if bayesian:
                loss = loss + loss_terms.sigma_regulariser(model) + loss_terms.masked_weight_decay(model, 1e-4)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            seen += x.shape[0]
            step += 1
            if step == warmup + steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized smoke run")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    args = p.parse_args(argv)
    import timm
    from pwfn_viz.core import bayes
    from pwfn_viz.data.datasets import create_dataset

    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    size, batch = (64, 8) if args.quick else (224, 128)
    steps = args.steps or (5 if args.quick else 300)
    warmup = 2 if args.quick else 30
    amp = None if args.amp == "none" or device.type == "cpu" else args.amp
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    lines = [f"# bench_train_gpu: resnet18, batch {batch} at {size}x{size}, {steps} timed steps, amp={amp}, "
             f"device={name}, torch {torch.__version__}"]
    with tempfile.TemporaryDirectory() as tmp:
        make_imagefolder(Path(tmp), classes=10, per_class=(4 if args.quick else 64), size=size + size // 7)
        data = create_dataset("imagefolder", root=tmp, image_size=size, model_name="resnet18")
        workers = 0 if args.quick else 8
        loader = torch.utils.data.DataLoader(data.train, batch_size=batch, shuffle=True, num_workers=workers,
                                             pin_memory=device.type == "cuda", drop_last=True,
                                             persistent_workers=workers > 0)
        results = {}
        for label, bayesian in (("deterministic", False), ("converted (PWFN)", True)):
            torch.manual_seed(0)
            model = timm.create_model("resnet18", num_classes=data.num_classes)
            if bayesian:
                bayes.convert(model)
            model.to(device).to(memory_format=torch.channels_last)
            results[label] = throughput(model, loader, steps, warmup, device, amp, bayesian)
            lines.append(f"{label:18s} {results[label]:10.1f} images/s")
        ratio = results["deterministic"] / results["converted (PWFN)"]
        lines.append(f"converted step time / deterministic step time: {ratio:.3f}x")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
