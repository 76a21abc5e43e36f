"""The numbers and view data of :class:`~pwfn_viz.widgets.whatif.WhatIf`, as pure functions:
one re-clustering and its codebook (:func:`whatif_snap`), the accuracy of the snapped network
(:func:`snapped_accuracy`, :class:`PlainNetwork`) and sigma against mu after it (:func:`whatif_view`).

An update repeats nothing that depends only on the round: the widget sorts mu and floors sigma
once (:class:`~pwfn_viz.core.clustering_cpu.SortedInputs`) and converts what the view draws once
(:class:`RoundArrays`); the codebook comes from the round's centres, their steps' sizes and the
sorted mu, not from a sort of every snapped value (:func:`snapped_value_counts`); the network is
evaluated as a plain network that takes the snapped values in one copy per tensor
(:class:`PlainNetwork`), on test batches read once. Each gives the numbers of the direct calls
(``cluster_round``, ``codebook_stats``, ``load_flat_state`` + ``evaluate``), bit for bit.
"""
from __future__ import annotations

import threading
from functools import cached_property

import numpy as np
import torch
from torch.nn.utils import parametrize

from ..core.bayes import bayes_tensors, load_flat_state
from ..core.clustering import ClusterConfig, ClusterResult, cluster_round
from ..core.clustering_cpu import SortedInputs, cluster_sorted
from ..core.metrics import codebook_stats, counted_codebook_stats, evaluate
from ._common import held_batches
from ._data import SigmaMu, clamped_sigma, density_grid
from ._panels import MAX_POINTS

__all__ = ["whatif_snap", "fixed_value_counts", "snapped_value_counts", "snapped_accuracy", "PlainNetwork",
           "clamp_fraction", "RoundArrays", "whatif_view", "started"]


def whatif_snap(mu: torch.Tensor, sigma: torch.Tensor, fraction: float, config: ClusterConfig,
                round_index: int = 0, order: torch.Tensor | None = None,
                inputs: SortedInputs | None = None) -> tuple[ClusterResult, dict]:
    """One re-clustering: ``cluster_round`` and the codebook of its snapped values
    (``codebook_stats``) plus the number fixed, of centres and of greedy steps. ``order``:
    ``mu_order(mu)``, computed once for a widget's mu (the round's sort, reused). ``inputs``:
    ``SortedInputs.of(mu, sigma)`` of CPU tensors, made once: the round then starts from them
    (:func:`~pwfn_viz.core.clustering_cpu.cluster_sorted`) and the codebook is counted from the
    centres (:func:`snapped_value_counts`); the same result and numbers."""
    if inputs is None:
        result = cluster_round(mu, sigma, fraction, config=config, round_index=round_index, order=order, threads=None)
        codebook = codebook_stats(result.mu)
    else:
        result = cluster_sorted(inputs, fraction, config, round_index)
        codebook = counted_codebook_stats(*snapped_value_counts(inputs, result))
    stats = {"n_fixed": int(result.fixed_mask.sum()), **codebook,
             "n_centres": len(result.centres), "n_steps": len(result.steps)}
    return result, stats


def fixed_value_counts(result: ClusterResult, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(result.mu[result.fixed_mask], return_counts=True)`` read off the round's
    steps: step i took ``n_taken`` weights to centre i, which the snap wrote in ``dtype`` (the
    weights' dtype). Centres of equal value (won in different passes) are one value."""
    values = result.centres.to(dtype)
    counts = torch.tensor(result.steps["n_taken"].tolist() if len(values) else [], dtype=torch.long)
    uniq, which = torch.unique(values, return_inverse=True)
    return uniq, torch.zeros(len(uniq), dtype=torch.long).index_add_(0, which, counts)


def snapped_value_counts(inputs: SortedInputs, result: ClusterResult) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(result.mu, return_counts=True)`` for a round of ``inputs``, without sorting
    the snapped values: the fixed ones are counted per centre (:func:`fixed_value_counts`), the
    free ones keep their mu, whose runs of equal values the sorted mu already holds; a centre
    that equals a free value adds to its count, another is inserted in order."""
    values, counts = fixed_value_counts(result, inputs.mu.dtype)
    values, counts = values.to(torch.promote_types(values.dtype, torch.float32)).numpy(), counts.numpy()   # exact
    fixed = result.fixed_mask.numpy()
    free = inputs.sorted_mu[~fixed[inputs.index]] if np.count_nonzero(fixed) < fixed.size else inputs.sorted_mu[:0]
    if free.size == 0:
        return torch.from_numpy(values), torch.from_numpy(counts)
    starts = np.flatnonzero(np.concatenate([[True], free[1:] != free[:-1]]))   # -0.0 == 0.0, as in torch.unique
    free_values, free_counts = free[starts], np.diff(np.append(starts, free.size))
    at = np.searchsorted(free_values, values)
    equal = at < free_values.size
    equal[equal] = free_values[at[equal]] == values[equal]
    free_counts[at[equal]] += counts[equal]
    return (torch.from_numpy(np.insert(free_values, at[~equal], values[~equal])),
            torch.from_numpy(np.insert(free_counts, at[~equal], counts[~equal])))


def snapped_accuracy(model: torch.nn.Module, result: ClusterResult, loader, device="cpu") -> dict:
    """Load a re-clustered round into a converted ``model`` (in place) and evaluate it."""
    load_flat_state(model, result.mu, result.sigma, result.fixed_mask)
    return evaluate(model, loader, device)


class PlainNetwork:
    """A converted network made plain (in place), for evaluating re-clustered rounds. In eval mode
    a converted tensor is ``where(fixed, fixed_value, mu)``, which after ``load_flat_state`` is the
    snapped mu itself: copying the snapped mu into plain parameters gives the same network for one
    copy per tensor (instead of four copies and two selections) and a forward pass without the
    selections. The test split is read once when it is small. One evaluation at a time (a lock).

    ``converted`` must be a network of its own (``run.model_at(i)``), not a ``copy.deepcopy`` of
    another converted one: a copy shares its layers' parametrized classes, which making it plain
    would change for both."""

    MAX_CACHED_BYTES = 256 * 2 ** 20   # a larger test split is read from its loader at every evaluation

    def __init__(self, converted: torch.nn.Module, loader, device="cpu"):
        tensors = bayes_tensors(converted)   # the flat vectors' order
        for t in tensors:
            parametrize.remove_parametrizations(t.module, t.attr, leave_parametrized=True)
        self.tensors = [getattr(t.module, t.attr) for t in tensors]
        self.model, self.device = converted.to(device).eval(), device
        self.batches, self._lock = held_batches(loader, self.MAX_CACHED_BYTES), threading.Lock()

    @torch.no_grad()
    def accuracy(self, result: ClusterResult) -> dict:
        """``snapped_accuracy(converted, result, loader)``: the same numbers."""
        with self._lock:
            offset = 0
            for param in self.tensors:
                param.copy_(result.mu[offset:offset + param.numel()].view(param.shape))
                offset += param.numel()
            return evaluate(self.model, self.batches, self.device)


def clamp_fraction(fraction: float, already: float) -> tuple[float, str]:
    """The fraction to re-cluster with and a note: a round cannot free weights an earlier round
    fixed, so a fraction below ``already`` (the share fixed before the round) becomes ``already``.

    >>> clamp_fraction(0.3, 0.5)
    (0.5, 'fraction 0.3 is below the 0.5 fixed before this round: weights are never freed; re-clustered at 0.5')
    """
    if fraction + 1e-9 >= already:
        return fraction, ""
    return already, (f"fraction {fraction:g} is below the {already:.4g} fixed before this round: weights are "
                     f"never freed; re-clustered at {already:.4g}")


class RoundArrays:
    """What the sigma-against-mu view of every re-clustering of one round shares, made once: the
    pre-snap mu and clamped sigma as float64 arrays, the weights fixed before the round and the
    density image of all weights (it depends on mu and sigma alone)."""

    def __init__(self, names, mu: torch.Tensor, sigma: torch.Tensor, pre_fixed: torch.Tensor):
        self.names = list(names)
        self.mu, self.sigma = mu.double().numpy(), clamped_sigma(sigma.double().numpy())
        self.before = pre_fixed.bool().numpy()

    @cached_property
    def density(self):
        return density_grid(self.mu, self.sigma)   # SigmaMu.density's grid


def whatif_view(names, mu, sigma, pre_fixed, result: ClusterResult, round_index: int, zero_band,
                arrays: RoundArrays | None = None) -> SigmaMu:
    """Sigma against mu of a re-clustered round (every weight, network order), as the round views
    draw it. ``arrays``: ``RoundArrays(names, mu, sigma, pre_fixed)``, made once for the round."""
    arrays = arrays or RoundArrays(names, mu, sigma, pre_fixed)
    fixed = result.fixed_mask.bool().numpy()
    # 0 fixed before, 1 fixed now, 2 free: 2 - fixed * (1 + before), in bytes (no masked writes)
    status = arrays.before.view(np.uint8) + np.uint8(1)
    status *= fixed.view(np.uint8)
    np.subtract(np.uint8(2), status, out=status)
    status = status.view(np.int8)
    steps = result.steps
    col = lambda c, t: steps[c].to_numpy(t) if len(steps) else np.zeros(0, t)  # noqa: E731
    view = SigmaMu(round_index, arrays.names, arrays.mu, arrays.sigma, status, result.mu.double().numpy(),
                   col("centre", float), col("P", int), col("delta", float), zero_band,
                   np.count_nonzero(fixed) / fixed.size)   # fixed.mean(), exactly (an integer count over n)
    if fixed.size > MAX_POINTS:   # drawn as a density image under sampled points: the same for every re-clustering
        view._cache["density"] = arrays.density
    return view


def started(fn):
    """Start ``fn()`` on a new thread; return a function that waits for it and gives its value
    (or raises its exception). A new thread per call: it takes torch's current thread count."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:   # raised again where the value is asked for
            out["error"] = exc

    thread = threading.Thread(target=run, name="whatif-evaluation", daemon=True)
    thread.start()

    def value():
        thread.join()
        if "error" in out:
            raise out["error"]
        return out["value"]
    return value
