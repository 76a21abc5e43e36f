"""PWFN against value-only k-means weight sharing at equal budgets (docs/method.md, section 6).

The fine-tuning after k-means is :func:`pwfn_viz.analysis.finetune.kmeans_finetune` (Deep
Compression style: assignments fixed, centroids trained).

* :func:`compare` -- quantises the run's *starting* network (``run.plain_model_at(None)``, the
  network PWFN started from) with k-means at the PWFN final round's budget, once at the same
  number of unique values and once at the same entropy, each without and with fine-tuning, and
  measures every method the same way.  Returns a :class:`Comparison`.

Definitions used in the table (all over the converted tensors, ``run.meta["tensors"]``):

* budget "unique": ``k`` = the PWFN final round's unique count (zero included), clamped to the
  number of distinct starting values.  For ``scope="layer"``/``"channel"`` ``k`` is the size of
  *each* group's codebook, so the network as a whole may hold more values (column ``unique``).
* budget "entropy": the ``k`` whose quantised weights' entropy (bits, zero included) is closest
  to the PWFN final round's ``entropy``.  Search: double ``k`` from 1 until the entropy reaches
  the target, then bisect between the last two; of every ``k`` evaluated the closest wins (ties:
  the smaller ``k``).  When entropy grows with ``k`` (as it does in practice) this is the
  closest ``k`` overall; the evaluated values are kept in ``Comparison.entropy_search``.
* ``weight_error``: ``||w - w_start|| / ||w_start||`` over all converted weights at once; the
  per-tensor version is in ``Comparison.layers`` (NaN for a tensor that starts all zero).
* ``moved_gt_{1,2,3}sigma``: fraction of weights with ``|w - w_start| / sigma_i > 1, 2, 3``,
  where ``sigma_i`` is the weight's learned PWFN sigma: its pre-snap sigma
  (``run.rounds[r].pre_sigma``) in the first round ``r`` whose snap fixed it (see
  :func:`learned_sigma`), floored at 2^-30.
* a run of your own model (recorded by ``Fixer``) is rebuilt from your instance and measured with
  your code: ``compare(run, model=MyNet(), evaluate=my_eval, train_loader=..., loss_fn=...)``; the
  table then holds your metrics (the run's primary metric first) in place of top1/top5.
* the PWFN row is named after the run's method (``"pwfn"``, or ``"wfn"`` for a WFN run); its
  ``k`` is its unique count and ``finetuned`` is False (its training happens between rounds).
* groups with at most ``k`` distinct values keep those values (``kmeans_quantize``'s clamp);
  ``compare`` silences that warning, the ``unique`` column shows what was used.

Example:
    >>> import pwfn_viz
    >>> result = pwfn_viz.compare("runs/digits")                    # doctest: +SKIP
    >>> result.table[["method", "k", "top1", "entropy", "moved_gt_1sigma"]]  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch
import torch.nn as nn

from ..constants import SAMPLING_SIGMA_FLOOR
from ..data.datasets import create_dataset, make_loader
from ..baselines.kmeans import kmeans_quantize, list_inits, list_scopes
from ..core.metrics import codebook_stats, evaluate
from ..core.device import resolve_device
from ..record.rundir import Run, load_run
from ..train.config import RunConfig
from .finetune import FinetuneResult, kmeans_finetune  # noqa: F401  (public here too)
from .palettize import palettize_dkm, palettize_post_training

__all__ = ["Comparison", "FinetuneResult", "compare", "kmeans_finetune", "learned_sigma",
           "match_entropy", "measure_method", "user_metrics", "columns_for", "converted_weights", "flatten_named",
           "CLAMP_WARNING",
           "SIGMA_FLOOR", "COLUMNS"]

SIGMA_FLOOR = SAMPLING_SIGMA_FLOOR
COLUMNS = ["method", "k", "finetuned", "top1", "top5", "unique", "unique_nonzero", "entropy",
           "entropy_nonzero", "weight_error", "moved_gt_1sigma", "moved_gt_2sigma", "moved_gt_3sigma"]
CLAMP_WARNING = r"k=\d+ exceeds the number of distinct values"


def columns_for(metrics) -> list[str]:
    """The table's columns when ``metrics`` (names, the primary first) replace top1/top5."""
    return [*COLUMNS[:3], *metrics, *COLUMNS[5:]]


def user_metrics(evaluate, model: nn.Module, primary: str | None = None) -> dict[str, float]:
    """``evaluate(model)`` (your function, as given to ``Fixer``) in eval mode without gradients:
    plain floats by name, ``primary`` first."""
    model.eval()
    with torch.no_grad():
        got = evaluate(model)
    if not isinstance(got, dict) or not got:
        raise ValueError(f"evaluate(model) returned {type(got).__name__}; it must return a dict of numbers by name")
    out = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in got.items()}
    if primary is not None:
        if primary not in out:
            raise ValueError(f"evaluate(model) returned {sorted(out)}, but the run's primary metric is {primary!r}: "
                             "pass the evaluate the run was recorded with")
        out = {primary: out.pop(primary), **out}
    return out


# ----------------------------------------------------------------------------- fine-tuning

def learned_sigma(run: Run, floor: float = SIGMA_FLOOR) -> dict[str, torch.Tensor]:
    """Each converted weight's learned sigma: its pre-snap sigma in the first round whose snap
    fixed it (the last round's pre-snap sigma if no round did), floored at ``floor``; float64."""
    last = run.rounds[-1].pre_sigma
    sigma = {n: last[n].double().clone() for n in run.meta["tensors"]}
    taken = {n: torch.zeros_like(s, dtype=torch.bool) for n, s in sigma.items()}
    for rnd in run.rounds:
        pre, fixed = rnd.pre_sigma, rnd.fixed
        for n in sigma:
            new = fixed[n] & ~taken[n]
            sigma[n][new] = pre[n][new].double()
            taken[n] |= new
    return {n: s.clamp(min=floor) for n, s in sigma.items()}


def match_entropy(entropy_of, target: float, k_max: int) -> tuple[int, dict[int, float]]:
    """The k in 1..k_max whose ``entropy_of(k)`` is closest to ``target`` (ties: smaller k).

    Doubles k from 1 until the entropy reaches the target, then bisects between the last two
    values; returns (best k among those evaluated, {k: entropy} of every evaluation).  Exact
    when the entropy does not decrease with k.

    >>> import math
    >>> match_entropy(lambda k: math.log2(k), 3.4, 100)[0]     # 2**3.4 = 10.6
    11
    """
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    seen: dict[int, float] = {}

    def h(k):
        if k not in seen:
            seen[k] = float(entropy_of(k))
        return seen[k]

    lo, hi = 0, 1
    while h(hi) < target and hi < k_max:
        lo, hi = hi, min(2 * hi, k_max)
    while lo >= 1 and h(hi) >= target and hi - lo > 1:   # h(lo) < target <= h(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if h(mid) < target else (lo, mid)
    best = min(seen, key=lambda k: (abs(seen[k] - target), k))
    return best, dict(sorted(seen.items()))


def flatten_named(tensors: Mapping[str, torch.Tensor], names) -> torch.Tensor:
    """The tensors ``names`` (in that order) as one flat float64 CPU vector."""
    return torch.cat([tensors[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


def converted_weights(model: nn.Module, names) -> dict[str, torch.Tensor]:
    """The parameters ``names`` of a plain model (the converted tensors of a run), detached."""
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in names}


@dataclass
class Comparison:
    """What :func:`compare` returns.

    table: one row per method (columns :data:`COLUMNS`).
    layers: one row per (method, converted tensor): layer, method, numel, unique, weight_error.
    weights: method -> final converted weights, flat float64 in network order.
    start: the starting weights, flat float64; sigma: each weight's learned sigma (flat float64).
    target_entropy: the PWFN final entropy; entropy_search: {k: entropy} evaluated to match it.
    primary, higher_is_better: the metric the table reports first (the run's) and its direction.
    distinct: method -> (sorted distinct values, counts) of its weights where already known;
        :meth:`value_counts` fills in the rest.
    """
    table: pd.DataFrame
    layers: pd.DataFrame
    weights: dict[str, torch.Tensor] = field(repr=False)
    start: torch.Tensor = field(repr=False)
    sigma: torch.Tensor = field(repr=False)
    target_entropy: float = math.nan
    entropy_search: dict[int, float] = field(default_factory=dict, repr=False)
    run_path: Path | None = None
    primary: str = "top1"
    higher_is_better: bool = True
    distinct: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def value_counts(self, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct values of ``method``'s weights (sorted, float64) and how many weights hold
        each: ``torch.unique(weights[method], return_counts=True)``, computed once."""
        if method not in self.distinct:
            self.distinct[method] = torch.unique(self.weights[method], return_counts=True)
        return self.distinct[method]

    def __repr__(self):
        metric = "" if self.primary == "top1" else \
            f", primary={self.primary} ({'higher' if self.higher_is_better else 'lower'} is better)"
        return f"Comparison({str(self.run_path)!r}, methods={list(self.table['method'])}{metric})"

    def _repr_html_(self):
        return f"<p><code>{self!r}</code></p>" + self.table.to_html(index=False, float_format=lambda v: f"{v:.4g}")


def measure_method(method, k, finetuned, model, names, w_start, sigma, test_loader, device, *, evaluate_fn=None,
                   primary: str | None = None, codebook=None):
    """One table row and the per-layer rows for a model whose converted tensors are final: top1/top5
    on ``test_loader``, or with ``evaluate_fn`` (your ``evaluate(model)``) its metrics, ``primary`` first.

    ``codebook``: a :class:`~pwfn_viz.analysis.codebook_weights.CodebookWeights` holding the converted
    tensors' values (k-means weights); the unique counts and entropies then come from it instead of
    sorting every weight. The numbers are the same."""
    tensors = converted_weights(model, names)
    w = flatten_named(tensors, names) if codebook is None else codebook.flat
    if evaluate_fn is None:
        acc = evaluate(model, test_loader, device)
        acc = {"top1": acc["top1"], "top5": acc["top5"]}
    else:
        acc = user_metrics(evaluate_fn, model, primary)
    if codebook is None:
        stats = codebook_stats(torch.cat([t.reshape(-1).cpu() for t in tensors.values()]))
        unique = [int(torch.unique(t).numel()) for t in tensors.values()]
    else:
        stats, unique = codebook.stats(), codebook.per_tensor_unique()
    change = w - w_start
    moved = change.abs().div_(sigma)   # the fractions below: exact counts over n, as the mean of 0/1 values is
    row = {"method": method, "k": int(k), "finetuned": bool(finetuned), **acc, **stats,
           "weight_error": float(change.norm() / w_start.norm()),
           **{f"moved_gt_{s}sigma": int(torch.count_nonzero(moved > s)) / moved.numel() for s in (1, 2, 3)}}
    sizes = [t.numel() for t in tensors.values()]
    layers = [{"layer": n, "method": method, "numel": t.numel(), "unique": n_unique,
               "weight_error": float(part.norm() / ws.norm())}
              for (n, t), n_unique, part, ws in zip(tensors.items(), unique, change.split(sizes), w_start.split(sizes))]
    return row, layers, w


def _pwfn_training_epochs(cfg: dict, data, train_loader=None, own_loop: bool = False) -> float:
    """How much the PWFN run trained after conversion, in epochs: its epoch budgets, or its step
    budgets (``steps_per_round``) divided by the steps of one epoch (of ``train_loader`` when given).
    A run of your own loop (``own_loop``) records no budget: one epoch of ``train_loader``."""
    steps_given = cfg.get("first_round_steps") is not None or cfg.get("steps_per_round") is not None
    if own_loop and not steps_given:
        return 1.0
    if not steps_given:
        return cfg["first_round_epochs"] + cfg["epochs_per_round"] * (len(cfg["fractions"]) - 1)
    steps_per_epoch = len(train_loader) if train_loader is not None else len(make_loader(data.train, cfg["batch_size"]))
    config = RunConfig.from_dict(cfg)
    return sum(config.round_budget(r, steps_per_epoch) for r in range(len(config.fractions))) / steps_per_epoch


def _check_run(run) -> Run:
    run = run if isinstance(run, Run) else load_run(run)
    n_rounds = len(run.config["fractions"])
    if not run.rounds or not run.complete:
        raise ValueError(f"{run.path} is an incomplete run ({len(run.rounds)} of {n_rounds} rounds done); "
                         f"finish it with `pwfn-viz run --resume {run.path}` before comparing")
    return run


def compare(run, *, init: str = "kmeans++", scope: str = "global", finetune: bool = True, seed: int = 0,
            keep_zero: bool = False, finetune_epochs: float | None = None, finetune_lr: float | None = None,
            device="cpu", progress: bool = False, data=None, coremltools_bits: tuple = (),
            dkm_steps: int = 0, model: nn.Module | None = None, evaluate=None, train_loader=None,
            loss_fn=None) -> Comparison:
    """Compare a finished run's final network with k-means on the same starting network.

    Args:
        run: a :class:`~pwfn_viz.record.rundir.Run` or its directory; it must be complete.
        init, seed, keep_zero: k-means options (:func:`pwfn_viz.baselines.kmeans.kmeans_1d`); with
            ``keep_zero`` one centre is exactly 0 (and stays 0 in fine-tuning), counted in ``k``.
        scope: "global" (one codebook), "layer" or "channel" (``k`` per group).
        finetune: also fine-tune both k-means models (rows "...+ft").
        finetune_epochs: default the PWFN run's own training after conversion,
            ``first_round_epochs + epochs_per_round * (rounds - 1)``, or its step budgets in epochs
            (a run of your own loop records none: one epoch of ``train_loader``).
        finetune_lr: default the run's lr; momentum, grad_clip, batch size and the other
            parameters' weight decay also come from the run's config.
        device: where to evaluate and fine-tune ("auto", "cpu", "cuda", ...).
        data: a DataBundle to use instead of rebuilding the run's dataset from its config.
        coremltools_bits: also coremltools' per-tensor post-training palettization of the starting
            network at these bit widths (rows "ptq@<b>bit"; needs the optional coremltools), and,
            with ``dkm_steps > 0``, its DKM palettization trained for that many SGD steps at the run's
            lr (rows "dkm@<b>bit"). See :mod:`pwfn_viz.analysis.palettize`.
        model, evaluate, train_loader, loss_fn: for a run of your own model: an unconverted instance
            of its architecture (copied, never changed), ``evaluate(model) -> dict of numbers`` (the
            table reports these, the run's primary metric first), and for fine-tuning (and DKM) the
            ``(x, y)`` batches and ``loss_fn(model(x), y)``. Without them such a run raises a
            ValueError naming what to pass. ``evaluate`` may also be given for a registered model.

    Returns:
        :class:`Comparison`; ``.table`` has the rows <method>, kmeans@unique, kmeans@unique+ft,
        kmeans@entropy, kmeans@entropy+ft (no "+ft" rows with ``finetune=False``).
    """
    if init not in list_inits():
        raise ValueError(f"unknown k-means init {init!r}; choose one of {list_inits()}")
    if scope not in list_scopes():
        raise ValueError(f"unknown scope {scope!r}; choose one of {list_scopes()}")
    run = _check_run(run)
    trains = finetune or dkm_steps > 0
    run.require("compare", model=model, evaluate=evaluate,
                **({"train_loader": train_loader, "loss_fn": loss_fn} if trains else {}))
    cfg, device = run.config, resolve_device(device)
    names = list(run.meta["tensors"])
    primary = run.primary if evaluate is not None else "top1"
    if data is None and (evaluate is None or (trains and train_loader is None)):
        data = create_dataset(cfg["dataset"], root=cfg["data_root"], image_size=cfg["image_size"],
                              in_chans=cfg["in_chans"], seed=cfg["seed"])
    test_loader = None if evaluate is not None else make_loader(data.test, batch_size=max(256, cfg["batch_size"]),
                                                                shuffle=False)

    def plain(round_index):   # a fresh network at a round: rebuilt from the record, or a copy of yours
        return run.plain_model_at(round_index, model=None if model is None else copy.deepcopy(model))

    def train_batches():
        if train_loader is not None:
            return train_loader
        return make_loader(data.train, cfg["batch_size"], shuffle=True, seed=seed)

    start_tensors = converted_weights(plain(None), names)
    w_start = flatten_named(start_tensors, names)
    sigma = flatten_named(learned_sigma(run), names)
    rows, layers, weights = [], [], {}

    def add(method, k, finetuned, model):
        row, lay, w = measure_method(method, k, finetuned, model.to(device), names, w_start, sigma, test_loader, device,
                                     evaluate_fn=evaluate, primary=primary)
        rows.append(row)
        layers.extend(lay)
        weights[method] = w

    method = cfg.get("method", "pwfn")
    add(method, 0, False, plain(-1))
    final = rows[0]
    rows[0]["k"] = final["unique"]

    def quantize(k):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", CLAMP_WARNING, UserWarning)
            return kmeans_quantize(start_tensors, k, scope=scope, init=init, seed=seed, keep_zero=keep_zero)

    def entropy_of(k):
        values = torch.cat([q.reshape(-1) for q in quantize(k).quantized.values()])
        return abs(codebook_stats(values)["entropy"])     # abs: one value gives -0.0

    k_max = int(torch.unique(w_start).numel()) + int(keep_zero)
    k_unique = max(1, min(final["unique"], k_max))
    k_entropy, search = match_entropy(entropy_of, final["entropy"], k_max)
    if finetune:
        epochs = finetune_epochs if finetune_epochs is not None else _pwfn_training_epochs(cfg, data, train_loader, run.own_model)
    for budget, k in (("unique", k_unique), ("entropy", k_entropy)):
        quantized, codebooks, labels = quantize(k)
        net = plain(None)
        with torch.no_grad():
            for n, p in converted_weights(net, names).items():
                p.copy_(quantized[n])
        add(f"kmeans@{budget}", k, False, net)
        if finetune:
            torch.manual_seed(seed)
            net = plain(None)
            kmeans_finetune(net, labels, codebooks, train_batches(), epochs,
                            lr=cfg["lr"] if finetune_lr is None else finetune_lr,
                            momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                            grad_clip=cfg["grad_clip"], keep_zero=keep_zero, device=device, progress=progress,
                            loss_fn=loss_fn)
            add(f"kmeans@{budget}+ft", k, True, net)
    for bits in coremltools_bits:
        add(f"ptq@{bits}bit", 2 ** bits, False, palettize_post_training(plain(None), bits))
        if dkm_steps > 0:
            extra = {} if loss_fn is None else {"loss_fn": loss_fn}
            dkm = palettize_dkm(plain(None), bits, train_batches(), dkm_steps, lr=cfg["lr"], momentum=cfg["momentum"],
                                seed=seed, **extra)
            add(f"dkm@{bits}bit", 2 ** bits, True, dkm)
    keys = list(rows[0])
    columns = COLUMNS if evaluate is None else columns_for(keys[3:keys.index("unique")])
    return Comparison(pd.DataFrame(rows, columns=columns), pd.DataFrame(layers), weights, w_start, sigma,
                      final["entropy"], search, run.path, primary,
                      run.higher_is_better if evaluate is not None else True)
