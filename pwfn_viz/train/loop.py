"""The rounds pipeline (docs/method.md, section 4): train, convert, then fix weights in rounds.

Read top to bottom: ``RunConfig`` (every default visible), ``train_steps`` (one optimiser loop for
both the deterministic pre-training and the Bayesian re-training), then ``run``:

    pre-train (optional) -> convert -> for each fraction: re-train, evaluate, cluster, snap,
    evaluate again, write the round -> the final model has every converted weight on a centre.

Each round's training starts from a seed derived from (seed, round), so a run resumed after a
crash continues exactly as the uninterrupted run would have (on CPU).

Example:
    >>> import pwfn_viz
    >>> run = pwfn_viz.run(pwfn_viz.RunConfig(epochs_per_round=1), out_dir="runs/quick")  # doctest: +SKIP
    >>> run.table()[["fraction", "top1_before", "top1_after", "unique"]]               # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import platform
import time
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..core import bayes
from ..core.device import resolve_device
from ..core.metrics import codebook_stats, evaluate, layer_table
from ..core.sigma_learning import describe as describe_learning
from ..core.sigma_learning import ADVICE as SIGMA_ADVICE
from ..core.sigma_learning import overall as sigma_overall
from ..core.sigma_learning import sigma_learning_table, verdict
from ..core.sigma_param import stepping_variable, to_step_gradients
from ..data.datasets import create_dataset, make_loader
from ..models.factory import create_model, load_checkpoint
from ..record.rundir import (FORMAT_VERSION, Run, atomic_append_csv, atomic_save_tensors, atomic_write_text,
                          load_run, round_file, snapshot_tensors, state_dict_from_snapshot)
from . import distributed
from .config import METHODS, OPTIMIZERS, PAPER_FRACTIONS, RunConfig


def train_steps(model: nn.Module, loader, epochs: float, *, lr: float, momentum: float, weight_decay: float,
                grad_clip: float, device, bayesian: bool, optimizer: str = "sgd", reg_lambda: float = bayes.REG_LAMBDA,
                reg_cap: float = bayes.REG_CAP, progress: bool = True, desc: str = "train",
                forward: nn.Module | None = None, autocast=None, scaler=None, channels_last: bool = False,
                steps: int | None = None, sigma_lr_mult: float = 1.0, sigma_param: str = "raw") -> float:
    """SGD (or Adam) for ``epochs`` (fractions allowed, at least one step), or exactly ``steps``
    optimiser steps when given, with a fresh optimiser; returns the mean task loss. Bayesian models
    add the sigma regulariser and the decay that spares fixed weights, and step sigma at
    ``lr * sigma_lr_mult`` in the ``sigma_param`` parameterisation (:mod:`pwfn_viz.core.sigma_param`).
    ``forward`` is the module to call (a DDP or compiled wrapper of ``model``); ``autocast``/``scaler``
    enable mixed precision."""
    n_steps = steps if steps is not None else (max(1, round(epochs * len(loader))) if epochs > 0 else 0)
    if n_steps == 0:
        return math.nan
    forward = forward or model
    groups = bayes.param_groups(model, weight_decay, sigma_lr=lr * sigma_lr_mult, sigma_param=sigma_param) \
        if bayesian else model.parameters()
    extra = {"momentum": momentum} if optimizer == "sgd" else {}
    opt = OPTIMIZERS[optimizer](groups, lr=lr, weight_decay=0.0 if bayesian else weight_decay, **extra)
    model.train()
    total, done, epoch = 0.0, 0, 0
    bar = tqdm(total=n_steps, desc=desc, leave=False, disable=not progress)
    while done < n_steps:
        if hasattr(loader.sampler, "set_epoch"):   # DistributedSampler: a new order every pass
            loader.sampler.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast() if autocast is not None else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(forward(x).float(), y)
            total = total + loss.detach().double()   # on the device: no host sync per step
            if bayesian:
                loss = loss + bayes.sigma_regulariser(model, reg_lambda, reg_cap) \
                    + bayes.masked_weight_decay(model, weight_decay)
            optimizer_step(model, opt, loss, scaler=scaler, grad_clip=grad_clip)
            done += 1
            bar.update()
            if done == n_steps:
                break
    bar.close()
    return float(total) / n_steps


def optimizer_step(model: nn.Module, opt, loss: torch.Tensor, *, scaler=None, grad_clip: float = 0.0) -> None:
    """The update of one training step, as ``train_steps`` makes it: zero_grad, backward (through
    ``scaler`` when given, then unscaled), sigma's gradient in the variable its group steps (log
    sigma: ``sigma * dL/dsigma``), gradient-norm clip, optimiser step (on log sigma for such groups)."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    to_step_gradients(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    with stepping_variable(opt):
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("pwfn_viz", "torch", "timm", "numpy", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def format_round(m: dict) -> str:
    return (f"round {m['round']:2d} | fixed {m['fraction']:6.1%} | top-1 {m['top1_before']:6.2f} -> "
            f"{m['top1_after']:6.2f} | unique {m['unique']:4d} ({m['unique_nonzero']:4d} w/o 0) | "
            f"entropy {m['entropy']:.2f} bits ({m['entropy_nonzero']:.2f} w/o 0)")


class _Log:
    """Prints a line and appends it to the run's log.txt."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo

    def __call__(self, line: str):
        if self.echo:
            tqdm.write(line)
        with open(self.path, "a") as f:
            f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")


def _prepare_out(config, out_dir, resume, info, verbose):
    """The run directory and its metadata (None for a new run); rank 0 creates it, and its path is
    shared with the other ranks."""
    if resume is not None:
        out = Path(resume)
        if not (out / "run.json").exists():
            raise FileNotFoundError(f"{out / 'run.json'} not found: nothing to resume (start with `pwfn-viz run --out {out}`)")
        meta = json.loads((out / "run.json").read_text())
        if info.is_main:
            for stale in out.glob(".*.tmp"):   # half-written files of the interrupted round
                stale.unlink()
        return out, meta
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir) if out_dir else Path("runs") / f"{config.model}-{config.dataset}-{stamp}"
    if info.enabled:   # every rank must use rank 0's path (timestamps differ)
        import torch.distributed as dist
        shared = [str(out)]
        dist.broadcast_object_list(shared, src=0)
        out = Path(shared[0])
    if out.exists() and any(out.iterdir()):   # every rank checks, before rank 0 writes anything
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or continue it with --resume {out}")
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out, None


def _write_round(out: Path, r: int, model: nn.Module, pre: dict, steps: pd.DataFrame, learning: pd.DataFrame,
                 meta: dict) -> None:
    """Round ``r``'s record: its tensors, then its rows of steps.csv and layers.csv (the layer
    table with the per-layer sigma diagnostic ``learning``), then run.json last (the commit point
    for --resume: a round is recorded once run.json lists it)."""
    atomic_save_tensors(out / round_file(r), snapshot_tensors(model, pre))
    atomic_append_csv(out / "steps.csv", steps)
    per_layer = learning[learning["layer"] != "all"].rename(columns={"layer": "name"})
    atomic_append_csv(out / "layers.csv", layer_table(model).merge(per_layer, on="name", how="left").assign(round=r))
    atomic_write_text(out / "run.json", json.dumps(meta, indent=1))


def _initial_sigma(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each converted tensor's sigma as it is now (right after conversion: its initial value)."""
    return {t.name: t.sigma.detach().clone() for t in bayes.bayes_tensors(model)}


def run(config: RunConfig | None = None, out_dir=None, *, resume=None, progress: bool = True,
        verbose: bool = True) -> Run:
    """Run (or, with ``resume=DIR``, continue) the whole PWFN pipeline; returns the loaded :class:`Run`.

    ``out_dir`` defaults to ``runs/<model>-<dataset>-<timestamp>``; it must be new or empty. Under
    ``torchrun`` the work is spread over the processes (see :mod:`pwfn_viz.train.distributed`).
    """
    config = config or RunConfig()
    if resume is not None and (Path(resume) / "run.json").exists():
        config = RunConfig.from_dict(json.loads((Path(resume) / "run.json").read_text())["config"])
    device = resolve_device(config.device)
    info = distributed.setup(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out, meta = _prepare_out(config, out_dir, resume, info, verbose)
    if meta is not None and meta.get("status") == "complete":
        if verbose and info.is_main:
            print(f"{out} is already complete ({len(meta['rounds'])} rounds)")
        return load_run(out)
    main = info.is_main
    log = _Log(out / "log.txt", verbose) if main else (lambda line: None)
    write = main   # only rank 0 writes the record
    torch.manual_seed(config.seed)

    # ImageFolder data takes mean/std/crop from the model's pretrained config (timm's data pipeline)
    by_model = {"model_name": config.model} if config.dataset == "imagefolder" else {}
    data = create_dataset(config.dataset, root=config.data_root, image_size=config.image_size,
                          in_chans=config.in_chans, seed=config.seed, **by_model)
    spec = {"name": config.model, "num_classes": data.num_classes, "in_chans": data.in_chans,
            "kwargs": dict(config.model_kwargs)}
    if config.model in ("digits_mlp",) and "image_size" not in spec["kwargs"]:
        spec["kwargs"]["image_size"] = data.image_size
    model = create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"],
                         pretrained=config.pretrained if meta is None else False, **spec["kwargs"])
    if device.type == "cpu":  # small models: thread start-up costs more than it saves
        small = sum(p.numel() for p in model.parameters()) < 1_000_000
        torch.set_num_threads(config.threads or (1 if small else torch.get_num_threads()))
    test_loader = make_loader(distributed.eval_shard(data.test, info), batch_size=max(256, config.batch_size))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else None
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    reduce = (lambda values: distributed.sum_across(values, info)) if info.enabled else None
    evaluate_now = lambda: evaluate(model, test_loader, device, reduce=reduce, autocast=autocast)  # noqa: E731

    def wrapped():
        """The module training calls: DDP and/or compiled around ``model`` (re-made after conversion)."""
        fwd = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel
            fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(fwd, backend=config.compile_backend) if config.compile else fwd

    train_kw = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                    grad_clip=config.grad_clip, device=device, progress=progress and main,
                    autocast=autocast, scaler=scaler, channels_last=config.channels_last)

    if meta is None:  # a new run: pre-train, convert, record the start
        if config.checkpoint:
            load_checkpoint(model, config.checkpoint)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.pretrain_epochs > 0:
            loader = distributed.train_loader(data.train, config.batch_size, config.seed, info)
            train_steps(model, loader, config.pretrain_epochs, bayesian=False, forward=wrapped(),
                        **{**train_kw, "lr": config.pretrain_lr}, desc="pre-train")
        baseline = evaluate_now()
        n_params = sum(p.numel() for p in model.parameters())
        bayes.convert(model, config.sigma_init, **({"value": config.sigma_init_value}
                                                   if config.sigma_init == "constant" else {}))
        n_conv = sum(t.mu.numel() for t in bayes.bayes_tensors(model))
        initial_sigma = _initial_sigma(model)
        meta = {"format_version": FORMAT_VERSION, "status": "running", "config": config.to_dict(),
                "model_spec": spec, "versions": _versions(), "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                "world_size": info.world_size, "seed": config.seed,
                "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "n_params": n_params, "n_converted": n_conv,
                "tensors": {t.name: list(t.mu.shape) for t in bayes.bayes_tensors(model)},
                "baseline": baseline, "rounds": []}
        if write:
            atomic_save_tensors(out / "start.safetensors", snapshot_tensors(model))
            atomic_write_text(out / "run.json", json.dumps(meta, indent=1))
        log(f"{config.model} on {config.dataset} ({device}{f' x {info.world_size}' if info.enabled else ''}): "
            f"{n_conv:,} converted weights; unquantised top-1 {baseline['top1']:.2f}, top-5 {baseline['top5']:.2f}")
    else:  # resume: rebuild the model as it was after the last completed round
        done = meta["rounds"]
        snap = out / (round_file(done[-1]["round"]) if done else "start.safetensors")
        from safetensors.torch import load_file
        bayes.convert(model, "constant", value=0.0)
        start = load_file(str(out / "start.safetensors"))
        initial_sigma = {name: start[f"sigma/{name}"] for name in meta["tensors"]}
        model.load_state_dict(state_dict_from_snapshot(load_file(str(snap))))
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if write:   # drop table rows of a round that was written but never committed to run.json
            for table in ("steps.csv", "layers.csv"):
                rows = pd.read_csv(out / table) if (out / table).exists() else None
                if rows is not None and (rows["round"] >= len(done)).any():
                    atomic_write_text(out / table, rows[rows["round"] < len(done)].to_csv(index=False))
        log(f"resuming {out} after round {done[-1]['round'] if done else '(none)'}")
    forward = wrapped()

    first = len(meta["rounds"])
    bar = tqdm(total=len(config.fractions), initial=first, desc="rounds", disable=not (progress and main))
    for r in range(first, len(config.fractions)):
        fraction = config.fractions[r]
        t0 = time.time()
        torch.manual_seed(config.seed * 1_000_003 + r * 7919 + info.rank)   # each round reproducible on its own
        loader = distributed.train_loader(data.train, config.batch_size, config.seed * 1_000_003 + r, info)
        train_loss = train_steps(model, loader, 0, steps=config.round_budget(r, len(loader)), bayesian=True,
                                 optimizer=config.optimizer, reg_lambda=config.reg_lambda, reg_cap=config.reg_cap,
                                 sigma_lr_mult=config.sigma_lr_mult, sigma_param=config.sigma_param,
                                 forward=forward, desc=f"round {r} train", **train_kw)
        before = evaluate_now()
        mu, sigma, fixed = bayes.flat_state(model)
        pre = {}
        for t in bayes.bayes_tensors(model):
            pre[f"mu/{t.name}"], pre[f"sigma/{t.name}"], pre[f"fixed/{t.name}"] = t.value, t.sigma.detach().clone(), t.fixed.clone()
        # Has sigma learned? The sigma this round clusters with against its initial value, free weights.
        learning = sigma_learning_table({n: s.cpu() for n, s in initial_sigma.items()},
                                        {k[6:]: v.cpu() for k, v in pre.items() if k.startswith("sigma/")},
                                        {k[6:]: v.cpu() for k, v in pre.items() if k.startswith("fixed/")})
        # Rank 0 clusters; the others receive its result, so every rank holds the same network.
        result = METHODS[config.method](mu, sigma, fixed, fraction, r, config) if main else None
        new_mu, new_sigma = (result.mu, result.sigma) if main else (torch.empty_like(mu), torch.empty_like(sigma))
        new_fixed = result.fixed_mask.to(torch.uint8) if main else torch.empty_like(fixed, dtype=torch.uint8)
        distributed.broadcast_([new_mu, new_sigma, new_fixed], info)
        bayes.load_flat_state(model, new_mu, new_sigma, new_fixed.bool())
        after = evaluate_now()
        identical = distributed.ranks_identical(model, info)
        stats = codebook_stats(new_mu)
        metrics = {"round": r, "fraction": fraction, "n_fixed": int(new_fixed.sum()),
                   "top1_before": before["top1"], "top1_after": after["top1"],
                   "top5_before": before["top5"], "top5_after": after["top5"],
                   "loss_before": before["loss"], "loss_after": after["loss"], "train_loss": train_loss,
                   **stats, "n_centres": len(result.centres) if main else None,
                   "n_steps": len(result.steps) if main else None, "seconds": round(time.time() - t0, 3),
                   **sigma_overall(learning)}
        if info.enabled:
            metrics["ranks_identical"] = identical
        meta["rounds"].append(metrics)
        if r == len(config.fractions) - 1:
            meta["status"] = "complete"
        if write:
            _write_round(out, r, model, pre, result.steps, learning, meta)
        log(format_round(metrics))
        log(f"         {describe_learning(metrics, learning)}")
        bar.update()
    bar.close()
    if meta["status"] == "complete":
        final = meta["rounds"][-1]
        log(f"done: top-1 {meta['baseline']['top1']:.2f} unquantised -> {final['top1_after']:.2f} with "
            f"{final['unique']} unique values ({final['entropy_nonzero']:.2f} bits w/o 0); record in {out}")
        if config.preset:
            from .presets import PUBLISHED
            for line in PUBLISHED.get(config.preset, []):
                log(f"published ({config.preset}): {line}")
    told = verdict(meta["rounds"])
    if told is not None:
        r, m = told
        learned = f"sigma learned by round {r}" if m["sigma_learned"] else f"WARNING: by round {r} sigma has not learned"
        log(f"{learned}: {describe_learning(m)} ({m['sigma_layers_learned']} layers)"
            + ("" if m["sigma_learned"] else f". {SIGMA_ADVICE}"))
    distributed.cleanup(info)
    return load_run(out)
