"""``Fixer``: PWFN inside any training loop, recorded round by round like ``pwfn_viz.run``.

The built-in pipeline (:func:`pwfn_viz.run`) and your own loop go through this class: it converts
the model, records the start, and each ``fix(fraction)`` evaluates the network, clusters, snaps,
evaluates again and writes the round (docs/method.md, sections 4-6 and 9)::

    fixer = pwfn_viz.Fixer(model, "runs/mine", evaluate=my_eval)   # converts, records the start
    for fraction in fixer.fractions:                                # the paper schedule by default
        train_my_way(model, extra_loss=fixer.loss_terms)             # regulariser + masked decay
        fixer.fix(fraction)
    run = fixer.run                                                 # what pwfn_viz.load_run gives

``evaluate(model)`` returns a dict of numbers (``{"top1": ..}``, ``{"mse": ..}``, ...); the run
records every one before and after each snap, which one is primary and whether higher is better.
Each round's training starts from a torch seed derived from (seed, round), set by the Fixer, so a
loop reopened with ``resume=True`` after a crash continues exactly as the uninterrupted run would
have (on CPU, with a fresh optimiser each round). Under torch.distributed (any initialised process
group) rank 0 clusters and writes, the other ranks receive its result.

Example:
    >>> import torch.nn as nn, pwfn_viz                                   # doctest: +SKIP
    >>> fixer = pwfn_viz.Fixer(nn.Linear(4, 2), "runs/tiny", evaluate=lambda m: {"mse": 0.0},
    ...                        fractions=(0.5, 1.0))                       # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import time
import weakref
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..core import bayes
from ..core.metrics import codebook_stats
from ..core.sigma_learning import describe as describe_learning
from ..core.sigma_learning import overall as sigma_overall
from ..core.sigma_learning import sigma_learning_table, verdict, verdict_line
from ..record.rundir import Run, load_run, metric_label, round_file
from ..record.schema import FORMAT_VERSION, read_meta
from ..record.storage import (atomic_save_tensors, atomic_write_text, check_tensors, load_tensors,
                              read_csv, snapshot_tensors, state_dict_from_snapshot)
from ..record import strict_json
from ..record.writer import LOCK_NAME, RunLock, clear_leftovers, is_fresh, make_writable_dir
from . import distributed
from .round_record import (RUNTIME_FIELDS, RunLog, as_number, format_round, guess_higher_is_better, number_text,
                           package_versions, write_round)
from . import semantics as training_semantics
from .config import METHODS, OPTIMIZERS, RunConfig

class Fixer:
    """Weight fixing in rounds around your own training loop; see the module docstring.

    ``evaluate(model) -> {name: number}`` measures the network (called in eval mode, without
    gradients; the first key is primary unless ``primary`` names another, ``top1`` when present).
    ``config`` (a :class:`RunConfig`) or keyword ``settings`` (its fields, e.g. ``fractions=(0.5, 1.0)``,
    ``reg_lambda=..``, ``seed=..``) set the method; model and data fields are not used.
    ``model_spec`` ({"name", "num_classes", "in_chans", "kwargs"}) lets the record rebuild a registered
    model by name; for your own model leave it None and pass your instance when replaying
    (``run.model_at(3, model=MyNet())``). ``resume=True`` continues the run recorded in ``out_dir``
    (or starts one when there is none): the last completed round's state is loaded into ``model``
    and ``fixer.fractions`` holds the fractions that remain.

    The Fixer holds the run directory's writer lock (:mod:`pwfn_viz.record.writer`) from its start
    to its last round, :meth:`close` or garbage collection (``with Fixer(...) as fixer:`` releases
    it on any exit); a second writer of the same directory is refused with the holder's pid and host.
    """

    def __init__(self, model: nn.Module, out_dir, evaluate: Callable[[nn.Module], dict], *,
                 config: RunConfig | None = None, primary: str | None = None, higher_is_better: bool | None = None,
                 model_spec: dict | None = None, resume: bool = False, verbose: bool = True, **settings):
        if not callable(evaluate):
            raise ValueError(f"evaluate must be a function evaluate(model) -> dict of numbers, got {type(evaluate).__name__}")
        self.model, self.evaluate, self.out = model, evaluate, Path(out_dir)
        self.info = distributed.current()
        settings_given = bool(settings) or config is not None
        config = dataclasses.replace(config or RunConfig(), **settings) if settings else (config or RunConfig())
        if model_spec is None:   # your own model: the record must not claim a registered one
            config = dataclasses.replace(config, model=type(model).__name__, dataset=None, pretrained=False)
        self._lock, note = self._take_lock(resume)
        self._release = weakref.finalize(self, self._lock.release) if self._lock else (lambda: None)
        try:
            if resume and (self.out / "run.json").exists():
                self._reopen(config if settings_given else None, primary, higher_is_better)
            else:
                self._start(config, primary, higher_is_better, model_spec)
        except BaseException:
            self.close()
            raise
        self.log = RunLog(self.out / "log.txt", verbose) if self.info.is_main else (lambda line: None)
        self.log(self._start_line() if self._new else
                 f"resuming {self.out} after round {self.meta['rounds'][-1]['round'] if self.meta['rounds'] else '(none)'}")
        if note:
            self.log(note)
        semantics_line = training_semantics.describe(self.config) if self._new else None
        if semantics_line:
            self.log(semantics_line)
        self._seed_round()

    def close(self) -> None:
        """Release the run directory's writer lock (done after the last round; safe to call twice)."""
        self._release()

    def __enter__(self) -> "Fixer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ setting up
    def _take_lock(self, resume: bool):
        """Rank 0's writer lock of the directory (created and checked writable first), and a note
        when a killed writer's lock was taken over; (None, None) on other ranks and for a directory
        a new run will refuse anyway (not empty, no lock: nothing is created in it)."""
        out = self.out
        if not self.info.is_main:
            return None, None
        if not (resume and (out / "run.json").exists()) and not is_fresh(out) and not (out / LOCK_NAME).exists():
            return None, None
        make_writable_dir(out)
        lock = RunLock(out)
        return lock, lock.acquire()

    def _start(self, config: RunConfig, primary, higher_is_better, model_spec) -> None:
        out, model, info = self.out, self.model, self.info
        if not is_fresh(out):   # every rank checks, before rank 0 writes anything
            raise FileExistsError(f"{out} exists and is not empty; choose another directory or continue it "
                                  f"with resume=True (`pwfn-viz run --resume {out}`)")
        if bayes.is_converted(model) or any(bayes.is_converted(m) for m in model.modules()):
            raise ValueError("model is already converted; pass the plain (unconverted) model to Fixer")
        if info.enabled:
            torch.distributed.barrier()
        if info.is_main:   # what a start killed before its run.json left (under the lock)
            out.mkdir(parents=True, exist_ok=True)
            clear_leftovers(out)
        self.config = config
        baseline = self._measure(expected=None)
        self.primary = primary or ("top1" if "top1" in baseline else next(iter(baseline)))
        if self.primary not in baseline:
            raise ValueError(f"primary={self.primary!r} is not among the metrics evaluate returns: {sorted(baseline)}")
        self.higher_is_better = guess_higher_is_better(self.primary) if higher_is_better is None else bool(higher_is_better)
        n_params = sum(p.numel() for p in model.parameters())
        bayes.convert(model, config.sigma_init, **({"value": config.sigma_init_value}
                                                   if config.sigma_init == "constant" else {}))
        training_semantics.prepare(model, config.semantics(), config.reg_cap)
        tensors = bayes.bayes_tensors(model)
        self.initial_sigma = {t.name: t.sigma.detach().clone() for t in tensors}
        device = next(model.parameters()).device
        self.meta = {"format_version": FORMAT_VERSION, "status": "running", "config": config.to_dict(),
                     "model_spec": model_spec or {"name": None, "class": f"{type(model).__module__}.{type(model).__qualname__}"},
                     "primary_metric": self.primary, "higher_is_better": self.higher_is_better,
                     "versions": package_versions(), "device": str(device),
                     "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                     "world_size": info.world_size, "seed": config.seed,
                     "created": datetime.datetime.now().isoformat(timespec="seconds"),
                     "n_params": n_params, "n_converted": sum(t.mu.numel() for t in tensors),
                     "tensors": {t.name: list(t.mu.shape) for t in tensors}, "baseline": baseline, "rounds": [],
                     "checksums": {}}
        if info.is_main:
            self.meta["checksums"]["start.safetensors"] = atomic_save_tensors(out / "start.safetensors",
                                                                              snapshot_tensors(model))
            atomic_write_text(out / "run.json", strict_json.dumps(self.meta, indent=1))
        self._new = True

    def _reopen(self, config: RunConfig | None, primary, higher_is_better) -> None:
        """Resume: the last committed round's state into ``self.model``; drop what came after it."""
        out = self.out
        self.meta = meta = read_meta(out)   # format version and keys checked
        self.config = RunConfig.from_dict(meta["config"])
        given = json.loads(json.dumps(config.to_dict())) if config is not None else meta["config"]
        changed = sorted(k for k, v in given.items() if k not in RUNTIME_FIELDS and meta["config"].get(k) != v)
        if changed:
            shown = ", ".join(f"{k}={given[k]!r} (recorded: {meta['config'].get(k)!r})" for k in changed)
            raise ValueError(f"{out} was recorded with other settings ({shown}); resume without "
                             "config/settings (the record's are used) or start a new directory")
        self.primary = meta.get("primary_metric", "top1")
        self.higher_is_better = meta.get("higher_is_better", True)
        for given, recorded, name in ((primary, self.primary, "primary"),
                                      (higher_is_better, self.higher_is_better, "higher_is_better")):
            if given is not None and given != recorded:
                raise ValueError(f"{name}={given!r}, but {out} records {name}={recorded!r}; drop the argument")
        if not any(bayes.is_converted(m) for m in self.model.modules()):
            bayes.convert(self.model, "constant", value=0.0)
        check_tensors(self.model, meta["tensors"], f"{out} belongs to another model")
        training_semantics.prepare(self.model, self.config.semantics(), self.config.reg_cap)
        done = meta["rounds"]
        sums = meta.get("checksums", {})
        last = round_file(done[-1]["round"]) if done else ("warmup.safetensors" if "warmup" in meta else "start.safetensors")
        snapshot = load_tensors(out / last, sums.get(last), meta["tensors"], pre=bool(done))
        self.model.load_state_dict(state_dict_from_snapshot(snapshot))
        start = load_tensors(out / "start.safetensors", sums.get("start.safetensors"), meta["tensors"])
        self.initial_sigma = {name: start[f"sigma/{name}"] for name in meta["tensors"]}
        if self.info.is_main:
            for stale in out.glob(".*.tmp"):   # half-written files of the interrupted round
                stale.unlink()
            for table in ("steps.csv", "layers.csv"):   # rows of a round written but never committed
                rows = read_csv(out / table) if (out / table).exists() else None
                if rows is not None and (rows["round"] >= len(done)).any():
                    atomic_write_text(out / table, rows[rows["round"] < len(done)].to_csv(index=False))
        self._new = False

    def _start_line(self) -> str:
        c, m = self.config, self.meta
        what = f"{c.model} on {c.dataset}" if c.dataset else c.model
        shown = [k for k in m["baseline"] if k != "loss"] or list(m["baseline"])
        shown = [self.primary] + [k for k in shown if k != self.primary]
        world = f" x {self.info.world_size}" if self.info.enabled else ""
        return (f"{what} ({m['device'].split(':')[0] if not self.info.enabled else m['device']}{world}): "
                f"{m['n_converted']:,} converted weights; unquantised "
                + ", ".join(f"{metric_label(k)} {number_text(m['baseline'][k])}" for k in shown))

    # ------------------------------------------------------------------ what the training loop uses
    @property
    def round(self) -> int:
        """The index of the next round to fix."""
        return len(self.meta["rounds"])

    @property
    def fractions(self) -> tuple:
        """The fractions still to fix, in order (all of the schedule for a new run)."""
        return self.config.fractions[self.round:]

    @property
    def run(self) -> Run:
        """The record so far, read back (the same as ``pwfn_viz.load_run(out_dir)``)."""
        return load_run(self.out)

    def loss_terms(self) -> torch.Tensor:
        """The sigma regulariser plus weight decay that spares fixed weights, for the latest forward
        pass in training mode: add it to your loss (``loss = task + fixer.loss_terms()``)."""
        if not self._trained_since_fix():
            raise ValueError("loss_terms() needs a forward pass in training mode first: model.train(); "
                             "out = model(x); loss = task_loss + fixer.loss_terms()")
        c = self.config
        return training_semantics.loss_terms(self.model, c.semantics(), reg_lambda=c.reg_lambda, reg_cap=c.reg_cap,
                                             weight_decay=c.weight_decay)

    def param_groups(self, lr: float | None = None) -> list[dict]:
        """Optimiser groups (mu, sigma at ``lr * sigma_lr_mult``, the rest with weight decay):
        ``torch.optim.SGD(fixer.param_groups(lr=1e-3), lr=1e-3, momentum=0.9)``."""
        c = self.config
        return training_semantics.param_groups(self.model, c.semantics(), weight_decay=c.weight_decay,
                                               sigma_lr=None if lr is None else lr * c.sigma_lr_mult,
                                               sigma_param=c.sigma_param)

    def optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        """A fresh optimiser of the config's kind (``optimizer``, ``lr``, ``momentum``) over
        :meth:`param_groups`; make one each round, as the built-in loop does."""
        c = self.config
        lr = c.lr if lr is None else lr
        extra = {"momentum": c.momentum} if c.optimizer == "sgd" else {}
        return OPTIMIZERS[c.optimizer](self.param_groups(lr), lr=lr, weight_decay=0.0, **extra)

    def record_warmup(self, **record) -> dict:
        """Record the Bayesian warm-up (training of mu and sigma before round 0) like a round: its
        metrics, its state (``warmup.safetensors``, where a resume starts) and ``record``'s numbers
        (e.g. ``steps=``, ``train_loss=``) under run.json's "warmup"."""
        if self.round or "warmup" in self.meta:
            raise ValueError("the warm-up comes before round 0, once: this run has already "
                             + ("fixed a round" if self.round else "recorded its warm-up"))
        metrics = {**self._measure(expected=self.meta["baseline"]), **{k: as_number(v, k) for k, v in record.items()},
                   "seconds": round(time.time() - self._t0, 3)}
        if self.info.is_main:
            self.meta["checksums"]["warmup.safetensors"] = atomic_save_tensors(self.out / "warmup.safetensors",
                                                                               snapshot_tensors(self.model))
        self.meta["warmup"] = metrics
        if self.info.is_main:
            atomic_write_text(self.out / "run.json", strict_json.dumps(self.meta, indent=1))
        shown = ", ".join(f"{metric_label(k)} {number_text(v)}" for k, v in metrics.items() if k != "seconds")
        self.log(f"warm-up: {shown}")
        self._seed_round()
        return metrics

    # ------------------------------------------------------------------ one round
    def fix(self, fraction: float | None = None, *, allow_untrained: bool = False, **record) -> dict:
        """Fix weights up to ``fraction`` (the next of :attr:`fractions`; None: that one): evaluate,
        cluster, snap, evaluate again, write the round; returns its metrics. Extra keyword numbers
        (e.g. ``train_loss=0.1``) are recorded with the round. ``allow_untrained`` permits a round
        without a training step since the previous one."""
        t0, r = self._t0, self.round
        if r == len(self.config.fractions):
            raise ValueError(f"all {r} rounds of {self.out} are fixed; nothing left to fix")
        expected = self.config.fractions[r]
        fraction = expected if fraction is None else float(fraction)
        if fraction != expected:
            raise ValueError(f"fix({fraction}): the next fraction of this run is {expected} (round {r} of the schedule "
                             f"{self.config.fractions}); fix the fractions in order, once each, or pass another "
                             "schedule as Fixer(..., fractions=...)")
        if not allow_untrained and not self._trained_since_fix():
            raise ValueError(f"fix({fraction}) before any training step since the {'last fix' if r else 'start'}: "
                             "train (a forward pass in model.train() mode, loss + fixer.loss_terms()) before each "
                             "fix, or pass allow_untrained=True to fix without re-training")
        check_tensors(self.model, self.meta["tensors"], "the model changed since the run started")
        model, info, main = self.model, self.info, self.info.is_main
        before = self._measure(expected=self.meta["baseline"])
        mu, sigma, fixed = bayes.flat_state(model)
        if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
            bad = [t.name for t in bayes.bayes_tensors(model)
                   if not (torch.isfinite(t.mu).all() and torch.isfinite(t.sigma).all())]
            raise ValueError(f"round {r}: training diverged, mu or sigma of {bad[:3]} holds NaN/inf; lower the learning "
                             f"rate (lr={self.config.lr}) or sigma's multiplier (sigma_lr_mult="
                             f"{self.config.sigma_lr_mult}), then resume from the last completed round")
        pre = {}
        for t in bayes.bayes_tensors(model):
            pre[f"mu/{t.name}"], pre[f"sigma/{t.name}"], pre[f"fixed/{t.name}"] = t.value, t.sigma.detach().clone(), t.fixed.clone()
        # Has sigma learned? The sigma this round clusters with against its initial value, free weights.
        learning = sigma_learning_table({n: s.cpu() for n, s in self.initial_sigma.items()},
                                        {k[6:]: v.cpu() for k, v in pre.items() if k.startswith("sigma/")},
                                        {k[6:]: v.cpu() for k, v in pre.items() if k.startswith("fixed/")})
        # Rank 0 clusters; the others receive its result, so every rank holds the same network.
        result = METHODS[self.config.method](mu, sigma, fixed, fraction, r, self.config) if main else None
        new_mu, new_sigma = (result.mu, result.sigma) if main else (torch.empty_like(mu), torch.empty_like(sigma))
        new_fixed = result.fixed_mask.to(torch.uint8) if main else torch.empty_like(fixed, dtype=torch.uint8)
        distributed.broadcast_([new_mu, new_sigma, new_fixed], info)
        bayes.load_flat_state(model, new_mu, new_sigma, new_fixed.bool())
        after = self._measure(expected=self.meta["baseline"])
        identical = distributed.ranks_identical(model, info)
        measured = {}
        for k in before:
            measured[f"{k}_before"], measured[f"{k}_after"] = before[k], after[k]
        metrics = {"round": r, "fraction": fraction, "n_fixed": int(new_fixed.sum()), **measured,
                   **{k: as_number(v, k) for k, v in record.items()}, **codebook_stats(new_mu),
                   "n_centres": len(result.centres) if main else None,
                   "n_steps": len(result.steps) if main else None, "seconds": round(time.time() - t0, 3),
                   **sigma_overall(learning)}
        if info.enabled:
            metrics["ranks_identical"] = identical
        self.meta["rounds"].append(metrics)
        if r == len(self.config.fractions) - 1:
            self.meta["status"] = "complete"
        if main:
            write_round(self.out, r, model, pre, result.steps, learning, self.meta)
        self.log(format_round(metrics, self.primary))
        self.log(f"         {describe_learning(metrics, learning)}")
        if self.meta["status"] == "complete":
            self._log_end()
            self.close()
        self._seed_round()
        return metrics

    # ------------------------------------------------------------------ helpers
    def _measure(self, expected: dict | None) -> dict:
        """``evaluate(model)`` checked: a dict of numbers (the baseline's names after the start)."""
        modes = [m.training for m in self.model.modules()]
        self.model.eval()   # the mean network: no weight noise, whatever mode the training loop left
        with torch.no_grad():
            got = self.evaluate(self.model)
        for m, mode in zip(self.model.modules(), modes):
            m.training = mode
        if not isinstance(got, dict) or not got or not all(isinstance(k, str) for k in got):
            raise ValueError(f"evaluate(model) returned {type(got).__name__} {got!r:.80}; it must return a "
                             "non-empty dict of numbers by name, e.g. {'top1': 97.2} or {'mse': 0.013}")
        got = {k: as_number(v, k) for k, v in got.items()}
        if expected is not None and set(got) != set(expected):
            raise ValueError(f"evaluate(model) returned {sorted(got)}, at the start {sorted(expected)}: "
                             "return the same metrics every time")
        return got

    def _trained_since_fix(self) -> bool:
        return bayes.has_pass_noise(self.model)

    def _seed_round(self) -> None:
        """A fresh start for the next round: no noise of the last pass, its own torch seed."""
        bayes.clear_pass_noise(self.model)
        torch.manual_seed(self.config.seed * 1_000_003 + self.round * 7919 + self.info.rank)
        self._t0 = time.time()

    def _log_end(self) -> None:
        meta, p = self.meta, self.primary
        final = meta["rounds"][-1]
        self.log(f"done: {metric_label(p)} {number_text(meta['baseline'][p])} unquantised -> {number_text(final[f'{p}_after'])} "
                 f"with {final['unique']} unique values ({final['entropy_nonzero']:.2f} bits w/o 0); record in {self.out}")
        if self.config.preset:
            from .presets import published_lines
            for line in published_lines(self.config.preset):
                self.log(line)
        told = verdict(meta["rounds"])
        if told is not None:
            self.log(("" if told["learned"] else "WARNING: ") + verdict_line(told))
