"""The rounds pipeline (docs/method.md, section 4): train, convert, then fix weights in rounds.

Read top to bottom: ``train_steps`` (one optimiser loop for both the deterministic pre-training and
the Bayesian re-training), ``fix_rounds`` (the round loop: re-train, then ``Fixer.fix``), then the
two ways in: ``fix_in_rounds`` (your model, loader, loss and evaluate) and ``run`` (a model and
dataset by name, from a ``RunConfig``; also ``pwfn-viz run`` and torchrun):

    pre-train (optional) -> convert -> for each fraction: re-train, evaluate, cluster, snap,
    evaluate again, write the round -> the final model has every converted weight on a centre.

Converting, evaluating, clustering and recording are the :class:`~pwfn_viz.train.fixer.Fixer`'s;
each round's training starts from a seed derived from (seed, round), so a run resumed after a
crash continues exactly as the uninterrupted run would have (on CPU).

Example:
    >>> import pwfn_viz
    >>> run = pwfn_viz.run(pwfn_viz.RunConfig(epochs_per_round=1), out_dir="runs/quick")  # doctest: +SKIP
    >>> run.table()[["fraction", "top1_before", "top1_after", "unique"]]               # doctest: +SKIP
    >>> run = pwfn_viz.fix_in_rounds(net, loader, nn.functional.mse_loss, lambda m: {"mse": mse(m)},
    ...                              "runs/mine", steps_per_round=100)                  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import secrets
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..core import bayes
from ..core.device import resolve_device
from ..core.metrics import evaluate
from ..core.sigma_param import stepping_variable, to_step_gradients
from ..data.datasets import auto_workers, create_dataset, make_loader, train_subset
from ..models.factory import create_model, load_checkpoint, timm_name
from ..record.rundir import Run, load_run
from ..record.writer import LOCK_NAME, RunLock, is_fresh, make_writable_dir
from ..record.schema import read_meta
from . import distributed
from . import semantics as training_semantics
from .config import OPTIMIZERS, RunConfig
from .fixer import Fixer
from .round_record import RUNTIME_FIELDS


def train_steps(model: nn.Module, loader, epochs: float, *, lr: float, momentum: float, weight_decay: float,
                grad_clip: float, device, bayesian: bool, optimizer: str = "sgd", reg_lambda: float = bayes.REG_LAMBDA,
                reg_cap: float = bayes.REG_CAP, progress: bool = True, desc: str = "train",
                forward: nn.Module | None = None, autocast=None, scaler=None, channels_last: bool = False,
                steps: int | None = None, sigma_lr_mult: float = 1.0, sigma_param: str = "raw",
                loss_fn: Callable | None = None, semantics: dict | None = None) -> float:
    """SGD (or Adam) for ``epochs`` (fractions allowed, at least one step), or exactly ``steps``
    optimiser steps when given, with a fresh optimiser, over ``(x, y)`` batches; returns the mean
    task loss ``loss_fn(output, y)`` (default: cross-entropy of the float logits). Bayesian models
    add the sigma regulariser and the decay that spares fixed weights, and step sigma at
    ``lr * sigma_lr_mult`` in the ``sigma_param`` parameterisation (:mod:`pwfn_viz.core.sigma_param`).
    ``forward`` is the module to call (a DDP or compiled wrapper of ``model``); ``autocast``/``scaler``
    enable mixed precision. ``semantics`` (``RunConfig.semantics()``; None: the corrected profile's)
    decide which weights the regulariser and the decay act on (:mod:`pwfn_viz.train.semantics`)."""
    n_steps = steps if steps is not None else (max(1, round(epochs * len(loader))) if epochs > 0 else 0)
    if n_steps == 0:
        return math.nan
    forward = forward or model
    semantics = semantics or RunConfig().semantics()
    groups = training_semantics.param_groups(model, semantics, weight_decay=weight_decay, sigma_lr=lr * sigma_lr_mult,
                                             sigma_param=sigma_param) if bayesian else model.parameters()
    extra = {"momentum": momentum} if optimizer == "sgd" else {}
    opt = OPTIMIZERS[optimizer](groups, lr=lr, weight_decay=0.0 if bayesian else weight_decay, **extra)
    model.train()
    total, done, epoch = 0.0, 0, 0
    bar = tqdm(total=n_steps, desc=desc, leave=False, disable=not progress)
    # the loss terms come with each pass's sample (bayes.pass_terms): one backward for the step
    with bayes.pass_terms(model) if bayesian else contextlib.nullcontext():
        while done < n_steps:
            if hasattr(loader.sampler, "set_epoch"):   # DistributedSampler: a new order every pass
                loader.sampler.set_epoch(epoch)
            epoch += 1
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast() if autocast is not None else contextlib.nullcontext():
                    out = forward(x)
                    loss = nn.functional.cross_entropy(out.float(), y) if loss_fn is None else loss_fn(out, y)
                total = total + loss.detach().double()   # on the device: no host sync per step
                if bayesian:
                    loss = loss + training_semantics.loss_terms(model, semantics, reg_lambda=reg_lambda,
                                                                reg_cap=reg_cap, weight_decay=weight_decay,
                                                                from_pass=True)
                optimizer_step(model, opt, loss, scaler=scaler, grad_clip=grad_clip)
                done += 1
                bar.update()
                if done == n_steps:
                    break
    bar.close()
    return float(total) / n_steps


def optimizer_step(model: nn.Module, opt, loss: torch.Tensor, *, scaler=None, grad_clip: float = 0.0) -> None:
    """The update of one training step, as ``train_steps`` makes it: :func:`backward` then
    :func:`clip_and_step`."""
    backward(opt, loss, scaler)
    clip_and_step(model, opt, scaler=scaler, grad_clip=grad_clip)


def backward(opt, loss: torch.Tensor, scaler=None) -> None:
    """zero_grad and backward (through ``scaler`` when given, then unscaled): the gradients a step
    uses, before anything edits or clips them."""
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()


def clip_and_step(model: nn.Module, opt, *, scaler=None, grad_clip: float = 0.0) -> None:
    """Sigma's gradient in the variable its group steps (log sigma: ``sigma * dL/dsigma``),
    gradient-norm clip, optimiser step (on log sigma for such groups)."""
    to_step_gradients(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    with stepping_variable(opt):
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


def fix_rounds(fixer: Fixer, loader_for_round: Callable[[int], object], *, progress: bool = True,
               **train_kw) -> None:
    """The round loop of every run: for each fraction left, re-train with the fixer's settings on
    ``loader_for_round(r)`` (``RunConfig.round_budget`` steps), then ``fixer.fix``. ``train_kw`` go to
    :func:`train_steps` (device, forward, autocast, scaler, channels_last, loss_fn)."""
    c = fixer.config
    bar = tqdm(total=len(c.fractions), initial=fixer.round, desc="rounds", disable=not progress)
    for fraction in fixer.fractions:
        r = fixer.round
        loader = loader_for_round(r)
        budget = c.round_budget(r, len(loader))
        train_loss = bayesian_training(fixer, loader, budget, progress=progress, desc=f"round {r} train", **train_kw)
        fixer.fix(fraction, allow_untrained=budget == 0, train_loss=train_loss)
        bar.update()
    bar.close()


def bayesian_training(fixer: Fixer, loader, steps: int, *, progress: bool = True, desc: str = "train",
                      **train_kw) -> float:
    """``steps`` optimiser steps of :func:`train_steps` on the converted model with the fixer's
    settings (optimiser, regulariser, semantics); returns the mean task loss."""
    c = fixer.config
    return train_steps(fixer.model, loader, 0, steps=steps, bayesian=True, optimizer=c.optimizer, lr=c.lr,
                       momentum=c.momentum, weight_decay=c.weight_decay, grad_clip=c.grad_clip, reg_lambda=c.reg_lambda,
                       reg_cap=c.reg_cap, sigma_lr_mult=c.sigma_lr_mult, sigma_param=c.sigma_param,
                       semantics=c.semantics(), progress=progress, desc=desc, **train_kw)


def warm_up(fixer: Fixer, loader, *, progress: bool = True, **train_kw) -> None:
    """The optional Bayesian warm-up: ``RunConfig.warmup_budget`` steps of training mu and sigma
    (the round settings) after conversion and before round 0, recorded by ``fixer.record_warmup``;
    nothing when the budget is 0."""
    steps = fixer.config.warmup_budget(len(loader))
    if steps:
        loss = bayesian_training(fixer, loader, steps, progress=progress, desc="warm-up", **train_kw)
        fixer.record_warmup(steps=steps, train_loss=loss)


def fix_in_rounds(model: nn.Module, train_loader, loss_fn: Callable, evaluate: Callable[[nn.Module], dict], out_dir,
                  *, config: RunConfig | None = None, primary: str | None = None, higher_is_better: bool | None = None,
                  resume: bool = False, progress: bool = True, verbose: bool = True, **settings) -> Run:
    """The whole schedule on your objects: convert ``model``, then for every fraction re-train on
    ``train_loader`` (``(x, y)`` batches, loss ``loss_fn(model(x), y)`` + the fixer's loss terms, a
    fresh optimiser each round) and fix; returns the recorded :class:`Run`.

    Optimiser settings, budgets and schedule come from ``config`` or ``settings`` (RunConfig fields:
    ``lr``, ``optimizer``, ``momentum``, ``weight_decay``, ``grad_clip``, ``steps_per_round``,
    ``first_round_steps``, ``epochs_per_round``, ``sigma_lr_mult``, ``fractions``, ``seed``, ...).
    ``evaluate``, ``primary``, ``higher_is_better`` and ``resume`` are :class:`Fixer`'s.

    >>> run = fix_in_rounds(net, loader, nn.functional.mse_loss, my_eval, "runs/mine",
    ...                     primary="mse", steps_per_round=100)                  # doctest: +SKIP
    """
    with Fixer(model, out_dir, evaluate, config=config, primary=primary, higher_is_better=higher_is_better,
               resume=resume, verbose=verbose, **settings) as fixer:   # the writer lock, released on any exit
        device = next(model.parameters()).device
        fix_rounds(fixer, lambda r: train_loader, progress=progress, device=device, loss_fn=loss_fn)
    return fixer.run


def _out_dir(config: RunConfig, out_dir, info) -> Path:
    """A new run's directory: ``out_dir``, or a new runs/<model>-<dataset>-<time>-<random> created
    here exclusively (runs started in the same second never share one); rank 0's under torchrun."""
    if out_dir:
        out = Path(out_dir)
    elif info.is_main:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        runs = make_writable_dir("runs")
        for _ in range(100):
            out = runs / f"{config.model}-{config.dataset}-{stamp}-{secrets.token_hex(3)}"
            try:
                out.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no new directory name found under {runs.resolve()}; pass --out")
    else:
        out = None
    if info.enabled:   # every rank must use rank 0's path
        import torch.distributed as dist
        shared = [str(out) if out is not None else None]
        dist.broadcast_object_list(shared, src=0)
        out = Path(shared[0])
    return out


def _resume_config(recorded: RunConfig, given: RunConfig | None, out: Path, runtime: dict) -> RunConfig:
    """The config a resume runs with: the record's, with the fields that do not change the result
    (``RUNTIME_FIELDS``: device, threads, data_root) from ``runtime`` or ``given``; any other field of
    ``given`` must equal the record's."""
    if given is not None:
        a, b = (json.loads(json.dumps(c.to_dict())) for c in (recorded, given))
        changed = sorted(k for k in a if k not in RUNTIME_FIELDS and a[k] != b.get(k))
        if changed:
            shown = ", ".join(f"{k}={b.get(k)!r} (recorded: {a[k]!r})" for k in changed)
            raise ValueError(f"resume={out}: {shown} would change the result; a resumed run keeps its recorded "
                             f"settings (only {', '.join(RUNTIME_FIELDS)} may differ): drop them, or start a new run "
                             "in another directory")
        runtime = {**{k: getattr(given, k) for k in RUNTIME_FIELDS}, **runtime}
    return dataclasses.replace(recorded, **runtime)


def run(config: RunConfig | None = None, out_dir=None, *, resume=None, progress: bool = True,
        verbose: bool = True, device: str | None = None, threads: int | None = None,
        data_root: str | None = None) -> Run:
    """Run (or, with ``resume=DIR``, continue) the whole PWFN pipeline; returns the loaded :class:`Run`.

    ``out_dir`` defaults to a new ``runs/<model>-<dataset>-<time>-<random>``; it must be new or
    empty, and is created and checked writable before any training. ``device``, ``threads`` and
    ``data_root`` replace the config's; they are all a resume may change (the record's config is used:
    ``pwfn_viz.run(resume=DIR, device="cpu")``; a ``config`` given with ``resume`` must otherwise equal
    the record's). The run holds the directory's writer lock (:mod:`pwfn_viz.record.writer`) from
    start to end. Under ``torchrun`` the work is spread over the processes (see
    :mod:`pwfn_viz.train.distributed`).
    """
    runtime = {k: v for k, v in (("device", device), ("threads", threads), ("data_root", data_root)) if v is not None}
    with contextlib.ExitStack() as held:   # the writer lock, released on every way out
        return _run(held, config, out_dir, resume, progress, verbose, runtime)


def _run(held: contextlib.ExitStack, config, out_dir, resume, progress, verbose, runtime) -> Run:
    main_process = os.environ.get("RANK", "0") == "0"   # rank 0 locks; torch.distributed is not set up yet
    if resume is not None:
        out = Path(resume)
        if out_dir is not None and Path(out_dir).resolve() != out.resolve():
            raise ValueError(f"resume={resume} with out_dir={out_dir}: a resumed run continues in its own directory")
        if main_process and out.is_dir() and ((out / "run.json").exists() or (out / LOCK_NAME).exists()):
            make_writable_dir(out)
            held.enter_context(RunLock(out))   # a run still being written: refused, naming its writer
        meta_path = out / "run.json"
        if not meta_path.exists():
            killed = out.is_dir() and is_fresh(out) and any(p.name != LOCK_NAME for p in out.iterdir())
            how = ("it was stopped before its first record was written; start it again" if killed else "start")
            raise FileNotFoundError(f"{meta_path} not found: nothing to resume ({how} with `pwfn-viz run --out {resume}`)")
        meta = read_meta(resume)   # format version and keys checked
        config = _resume_config(RunConfig.from_dict(meta["config"]), config, out, runtime)
    else:
        config = dataclasses.replace(config or RunConfig(), **runtime)
    device = resolve_device(config.device)
    info = distributed.setup(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if resume is None:
        out = _out_dir(config, out_dir, info)
        not_empty = FileExistsError(f"{out} exists and is not empty; choose another --out or continue it with "
                                    f"--resume {out}")
        if info.is_main:   # before any training: a file in the way, no permission, another writer
            if out.is_dir() and not is_fresh(out) and not (out / LOCK_NAME).exists():
                raise not_empty
            make_writable_dir(out)
            held.enter_context(RunLock(out))
        if not is_fresh(out):   # under the lock (the Fixer checks again)
            raise not_empty
    if resume is not None and meta.get("status") == "complete":
        if verbose and info.is_main:
            print(f"{out} is already complete ({len(meta['rounds'])} rounds)")
        return load_run(out)
    main = info.is_main
    torch.manual_seed(config.seed)

    semantics = config.semantics()
    # ImageFolder data takes mean/std/crop from the model's pretrained config (timm's data pipeline)
    by_model = ({"model_name": timm_name(config.model, config.pretrained_tag),
                 "transforms": semantics["data_transforms"]} if config.dataset == "imagefolder" else {})
    data = create_dataset(config.dataset, root=config.data_root, image_size=config.image_size,
                          in_chans=config.in_chans, seed=config.seed, **by_model)
    data.train = train_subset(data.train, semantics["train_split"], seed=config.seed)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    loading = dict(num_workers=auto_workers(data.train, per_node) if config.num_workers is None else config.num_workers,
                   pin_memory=device.type == "cuda")
    spec = {"name": config.model, "num_classes": data.num_classes, "in_chans": data.in_chans,
            "kwargs": dict(config.model_kwargs)}
    if config.model in ("digits_mlp",) and "image_size" not in spec["kwargs"]:
        spec["kwargs"]["image_size"] = data.image_size
    model = create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"],
                         pretrained=config.pretrained if resume is None else False,
                         pretrained_tag=config.pretrained_tag if resume is None and config.pretrained else None,
                         **spec["kwargs"])
    if device.type == "cpu":  # small models: thread start-up costs more than it saves
        small = sum(p.numel() for p in model.parameters()) < 1_000_000
        torch.set_num_threads(config.threads or (1 if small else torch.get_num_threads()))
    test_loader = make_loader(distributed.eval_shard(data.test, info), batch_size=max(256, config.batch_size), **loading)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else None
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    reduce = (lambda values: distributed.sum_across(values, info)) if info.enabled else None
    evaluate_now = lambda m: evaluate(m, test_loader, device, reduce=reduce, autocast=autocast)  # noqa: E731

    def wrapped():
        """The module training calls: DDP and/or compiled around ``model`` (re-made after conversion)."""
        fwd = model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel
            fwd = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(fwd, backend=config.compile_backend) if config.compile else fwd

    train_kw = dict(device=device, autocast=autocast, scaler=scaler, channels_last=config.channels_last)
    if resume is None and config.checkpoint:
        load_checkpoint(model, config.checkpoint)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if resume is None and config.pretrain_epochs > 0:   # deterministic training before conversion
        loader = distributed.train_loader(data.train, config.batch_size, config.seed, info, **loading)
        train_steps(model, loader, config.pretrain_epochs, bayesian=False, forward=wrapped(), lr=config.pretrain_lr,
                    momentum=config.momentum, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
                    progress=progress and main, desc="pre-train", **train_kw)
    # a new run: baseline, convert, record the start; a resumed one: the last completed round's state
    fixer = Fixer(model, out, evaluate_now, config=config, model_spec=spec, resume=resume is not None, verbose=verbose)
    round_loader = lambda r: distributed.train_loader(data.train, config.batch_size,  # noqa: E731
                                                      config.seed * 1_000_003 + r, info, **loading)
    if fixer.round == 0 and "warmup" not in fixer.meta:
        warm_up(fixer, round_loader(-1), progress=progress and main, forward=wrapped(), **train_kw)
    fix_rounds(fixer, round_loader, progress=progress and main, forward=wrapped(), **train_kw)
    distributed.cleanup(info)
    return load_run(out)
