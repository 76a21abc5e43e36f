"""Noise resilience and calibration of a recorded run (docs/method.md, section 6).

How much does the network care about the uncertainty it learned? ``analyse(run)`` takes the
mean weights ``mu`` and the standard deviations ``sigma`` of one round and measures, on the test
split:

- the mean-weight network (top-1, NLL, expected calibration error, reliability table);
- ``n_samples`` networks with every converted weight drawn from N(mu, sigma^2);
- ``n_samples`` networks with isotropic noise of the same total size: one standard deviation
  ``s_iso`` for every weight with ``N * s_iso^2 = sum_i sigma_i^2``;
- the two ensembles: the softmax averaged over each set of samples.

Which sigma: ``which="pre"`` (default) uses the round's pre-snap mu and sigma (the network as
trained, just before the round fixed more weights); ``which="post"`` the state after the snap. In
the final round after the snap every weight is fixed and its sigma is the standard deviation of
the pre-snap values its group absorbed ("std_mu"), not a learned quantity, hence the default.
Weights fixed in earlier rounds carry that group sigma as well; ``round_index=0, which="pre"``
is the state where nothing was fixed yet and every sigma is learned. ``round_index=None`` is the
starting network (sigma as initialised). Every weight is sampled with its recorded sigma (negative
values count as 0; the training forward pass floors sigma at 2^-30, which is left out here so that
a weight with sigma 0 stays exactly on mu).

A run of your own model is rebuilt from your instance and measured with your code:
``analyse(run, model=MyNet(), evaluate=my_eval)`` reports your metrics (the run's primary metric
first, its direction in ``higher_is_better``) for the mean weights and every noise sample. ECE, the
reliability table and the softmax ensembles need class probabilities, which ``evaluate`` does not
give: they are skipped, and ``notes`` says so.

The learned and isotropic sample ``k`` share one standard-normal draw ``eps`` (learned:
``mu + sigma * eps``, isotropic: ``mu + s_iso * eps``), so the two are compared on common random
numbers. Same ``seed``, same samples.

Example:
    >>> result = analyse(load_run("runs/digits"), n_samples=8)    # doctest: +SKIP
    >>> result.summary                                            # doctest: +SKIP
    >>> result.reliability["learned ensemble"]                    # doctest: +SKIP
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import pandas as pd
import torch
import torch.nn as nn

N_BINS = 15
ROWS = ("mean weights", "learned sigma samples", "isotropic samples", "learned ensemble", "isotropic ensemble")
NOT_CLASSIFICATION = ("calibration (ECE, reliability) and the softmax ensembles need class probabilities, which "
                      "evaluate(model) does not give: skipped; the mean weights and every noise sample are measured "
                      "with your metrics")
WHICH = ("pre", "post")


# ---------------------------------------------------------------------------------------------
# Calibration: reliability bins and expected calibration error
def reliability_table(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> pd.DataFrame:
    """Equal-width bins over [0, 1]: bin b holds the predictions with confidence in
    (b / n_bins, (b + 1) / n_bins] (the first bin also holds 0). Per bin: mean confidence, accuracy
    (both fractions, NaN when empty) and the number of predictions.

    >>> t = reliability_table(torch.tensor([0.9, 0.95, 0.5]), torch.tensor([True, False, True]), n_bins=2)
    >>> t[["confidence", "accuracy", "count"]].round(3).values.tolist()
    [[0.5, 1.0, 1.0], [0.925, 0.5, 2.0]]
    """
    conf = confidence.detach().double().flatten().cpu()
    hit = correct.detach().flatten().cpu().double()
    if conf.numel() != hit.numel():
        raise ValueError(f"{conf.numel()} confidences but {hit.numel()} correctness flags")
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=False)          # (lo, hi]; <= first edge -> bin 0
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    hit_sum = torch.bincount(idx, weights=hit, minlength=n_bins)
    with torch.no_grad():
        mean_conf = torch.where(count > 0, conf_sum / count.clamp(min=1), torch.full_like(count, math.nan))
        acc = torch.where(count > 0, hit_sum / count.clamp(min=1), torch.full_like(count, math.nan))
    return pd.DataFrame({"bin_lower": edges[:-1].numpy(), "bin_upper": edges[1:].numpy(),
                         "confidence": mean_conf.numpy(), "accuracy": acc.numpy(), "count": count.numpy()})


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over the bins of :func:`reliability_table`
    (a fraction in [0, 1]).

    >>> round(expected_calibration_error(torch.tensor([0.9, 0.95, 0.5]), torch.tensor([True, False, True]), 2), 6)
    0.45
    """
    return _ece_from_table(reliability_table(confidence, correct, n_bins))


def _ece_from_table(table: pd.DataFrame) -> float:
    used = table[table["count"] > 0]
    return float((used["count"] / used["count"].sum() * (used["accuracy"] - used["confidence"]).abs()).sum())


# ---------------------------------------------------------------------------------------------
# Weight samples
def isotropic_std(sigma: Mapping[str, torch.Tensor]) -> float:
    """The single standard deviation ``s`` with ``N * s^2 = sum_i sigma_i^2`` over all weights
    (negative sigma counts as 0).

    >>> isotropic_std({"w": torch.tensor([0.0, 0.0, 2.0, 0.0])})
    1.0
    """
    total = sum(float(s.detach().double().clamp(min=0).pow(2).sum()) for s in sigma.values())
    n = sum(s.numel() for s in sigma.values())
    if n == 0:
        raise ValueError("no weights given")
    return math.sqrt(total / n)


def weight_samples(mu: Mapping[str, torch.Tensor], sigma: Mapping[str, torch.Tensor], n_samples: int,
                   seed: int = 0) -> Iterator[tuple[dict, dict]]:
    """Yield ``n_samples`` pairs ``(learned, isotropic)`` of weight dicts (same keys as ``mu``):
    ``mu + sigma * eps`` and ``mu + s_iso * eps`` with one shared draw ``eps ~ N(0, 1)`` per pair,
    from a CPU generator seeded with ``seed`` (tensors in ``mu``'s key order)."""
    if list(mu) != list(sigma):
        raise ValueError(f"mu and sigma name different tensors: {sorted(set(mu) ^ set(sigma))[:5]}")
    for name in mu:
        if mu[name].shape != sigma[name].shape:
            raise ValueError(f"{name}: mu has shape {tuple(mu[name].shape)}, sigma {tuple(sigma[name].shape)}")
    s_iso = isotropic_std(sigma)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_samples):
        learned, iso = {}, {}
        for name, m in mu.items():
            m = m.detach().cpu()
            eps = torch.randn(m.shape, generator=gen, dtype=m.dtype)
            learned[name] = m + sigma[name].detach().cpu().to(m.dtype).clamp(min=0) * eps
            iso[name] = m + s_iso * eps
        yield learned, iso


# ---------------------------------------------------------------------------------------------
# Evaluation
def _as_loader(data, batch_size: int = 256):
    """A DataBundle (its test split), a Dataset, or anything that yields (x, y) batches."""
    from ..data.datasets import DataBundle, make_loader
    if isinstance(data, DataBundle):
        return make_loader(data.test, batch_size=batch_size, shuffle=False)
    if isinstance(data, torch.utils.data.Dataset):
        return make_loader(data, batch_size=batch_size, shuffle=False)
    return data


@torch.no_grad()
def _log_probs(model: nn.Module, loader, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-softmax outputs (float32, CPU) and labels over the whole loader."""
    outs, labels = [], []
    for x, y in loader:
        outs.append(torch.log_softmax(model(x.to(device)).float(), dim=1).cpu())
        labels.append(torch.as_tensor(y).cpu())
    if not outs:
        raise ValueError("the evaluation data yielded no batches")
    return torch.cat(outs), torch.cat(labels)


def _scores(logp: torch.Tensor, y: torch.Tensor, n_bins: int) -> tuple[dict, pd.DataFrame]:
    """top1 (%), nll (nats), ece (%) and the reliability table of one set of predictions."""
    max_logp, pred = logp.max(dim=1)
    correct = pred == y
    table = reliability_table(max_logp.double().exp(), correct, n_bins)
    nll = -logp.double().gather(1, y[:, None]).mean().item()
    return {"top1": 100.0 * correct.double().mean().item(), "ece": 100.0 * _ece_from_table(table),
            "nll": nll}, table


@torch.no_grad()
def _load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    for name, w in weights.items():
        model.get_parameter(name).copy_(w)


# ---------------------------------------------------------------------------------------------
# The result
@dataclass
class AnalysisResult:
    """What :func:`analyse` measured.

    ``summary``: one row per entry of ``ROWS``; columns ``top1`` (%), ``top1_std`` (standard
    deviation over samples, ddof=0; NaN for single networks), ``ece`` (%), ``nll`` (nats); sample
    rows hold the mean over samples. ``reliability``: reliability tables (see
    :func:`reliability_table`) of "mean weights", "learned ensemble" and "isotropic ensemble".
    ``samples``: one row per sample with top1/ece/nll of the learned and isotropic networks.
    Measured with your ``evaluate`` (a run of your own model): ``summary`` has the first three rows
    and your metrics as columns (``primary`` first, then ``<primary>_std``), ``samples`` has
    ``learned_<metric>`` / ``isotropic_<metric>``, ``reliability`` is empty and ``notes`` says why.
    """
    summary: pd.DataFrame
    reliability: dict
    samples: pd.DataFrame = field(repr=False)
    round_index: int | None = None
    which: str = "pre"
    n_samples: int = 0
    seed: int = 0
    sigma_iso: float = 0.0          # the isotropic standard deviation
    total_variance: float = 0.0     # sum of sigma_i^2 (= n_weights * sigma_iso^2)
    n_weights: int = 0
    primary: str = "top1"
    higher_is_better: bool = True
    notes: list = field(default_factory=list)

    def __repr__(self):
        s = self.summary
        if self.primary != "top1" or not self.reliability:
            p, where = self.primary, "start" if self.round_index is None else f"round {self.round_index} {self.which}-snap"
            return (f"AnalysisResult({where}, {self.n_samples} samples, s_iso={self.sigma_iso:.3g}: {p} "
                    f"({'higher' if self.higher_is_better else 'lower'} is better) mean weights "
                    f"{s.at['mean weights', p]:.4g}, learned {s.at['learned sigma samples', p]:.4g}"
                    f"+-{s.at['learned sigma samples', f'{p}_std']:.2g}, isotropic {s.at['isotropic samples', p]:.4g}"
                    f"+-{s.at['isotropic samples', f'{p}_std']:.2g}; no calibration or ensembles)")
        where = "start" if self.round_index is None else f"round {self.round_index} {self.which}-snap"
        return (f"AnalysisResult({where}, {self.n_samples} samples, s_iso={self.sigma_iso:.3g}: top-1 mean "
                f"{s.at['mean weights', 'top1']:.2f}, learned {s.at['learned sigma samples', 'top1']:.2f}"
                f"+-{s.at['learned sigma samples', 'top1_std']:.2f} (ensemble {s.at['learned ensemble', 'top1']:.2f}), "
                f"isotropic {s.at['isotropic samples', 'top1']:.2f}+-{s.at['isotropic samples', 'top1_std']:.2f} "
                f"(ensemble {s.at['isotropic ensemble', 'top1']:.2f}); ECE mean {s.at['mean weights', 'ece']:.2f}%, "
                f"ensemble {s.at['learned ensemble', 'ece']:.2f}%)")

    def _repr_html_(self):
        notes = "".join(f"<p><em>{n}</em></p>" for n in self.notes)
        return f"<p><code>{self!r}</code></p>" + notes + self.summary.to_html(float_format=lambda v: f"{v:.4g}")


# ---------------------------------------------------------------------------------------------
# Entry points
def analyse_model(model: nn.Module, mu: Mapping[str, torch.Tensor], sigma: Mapping[str, torch.Tensor], data, *,
                  n_samples: int = 8, seed: int = 0, device="cpu", n_bins: int = N_BINS,
                  progress: bool = False) -> AnalysisResult:
    """The analysis on any plain network: ``mu``/``sigma`` map parameter names of ``model`` to
    tensors of their shape; the other parameters and buffers stay as they are. ``data`` is a
    DataBundle (its test split is used), a Dataset, or an iterable of ``(x, y)`` batches that
    comes in the same order every pass. ``model`` itself is not modified (a copy is used)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    params = dict(model.named_parameters())
    for name in mu:
        if name not in params:
            raise ValueError(f"{name!r} is not a parameter of {type(model).__name__}; "
                             f"its parameters: {list(params)[:8]}")
        if params[name].shape != mu[name].shape:
            raise ValueError(f"{name}: model has shape {tuple(params[name].shape)}, mu {tuple(mu[name].shape)}")
    loader = _as_loader(data)
    net = copy.deepcopy(model).to(device).eval()
    _load_weights(net, mu)
    logp_mean, y = _log_probs(net, loader, device)
    rows, tables = {}, {}
    rows["mean weights"], tables["mean weights"] = _scores(logp_mean, y, n_bins)
    ensembles = {"learned": None, "isotropic": None}
    per_sample = []
    from tqdm.auto import tqdm
    for k, pair in enumerate(tqdm(weight_samples(mu, sigma, n_samples, seed), total=n_samples,
                                  desc="noise samples", disable=not progress)):
        row = {"sample": k}
        for kind, weights in zip(ensembles, pair):
            _load_weights(net, weights)
            logp, y_k = _log_probs(net, loader, device)
            if not torch.equal(y_k, y):
                raise ValueError("the evaluation data must come in the same order every pass "
                                 "(use a loader with shuffle=False)")
            acc = ensembles[kind]
            ensembles[kind] = logp if acc is None else torch.logaddexp(acc, logp)
            row.update({f"{kind}_{key}": v for key, v in _scores(logp, y, n_bins)[0].items()})
        per_sample.append(row)
    samples = pd.DataFrame(per_sample).set_index("sample")
    for kind, label in (("learned", "learned sigma samples"), ("isotropic", "isotropic samples")):
        rows[label] = {"top1": samples[f"{kind}_top1"].mean(), "top1_std": samples[f"{kind}_top1"].std(ddof=0),
                       "ece": samples[f"{kind}_ece"].mean(), "nll": samples[f"{kind}_nll"].mean()}
    for kind, label in (("learned", "learned ensemble"), ("isotropic", "isotropic ensemble")):
        rows[label], tables[label] = _scores(ensembles[kind] - math.log(n_samples), y, n_bins)
    summary = pd.DataFrame.from_dict(rows, orient="index").reindex(index=list(ROWS),
                                                                    columns=["top1", "top1_std", "ece", "nll"])
    s_iso = isotropic_std(sigma)
    n = sum(s.numel() for s in sigma.values())
    return AnalysisResult(summary, tables, samples, n_samples=n_samples, seed=seed, sigma_iso=s_iso,
                          total_variance=n * s_iso ** 2, n_weights=n)


def analyse_user_model(model: nn.Module, mu: Mapping[str, torch.Tensor], sigma: Mapping[str, torch.Tensor],
                       evaluate, primary: str, *, higher_is_better: bool = True, n_samples: int = 8, seed: int = 0,
                       device="cpu", progress: bool = False) -> AnalysisResult:
    """:func:`analyse_model` measured with your ``evaluate(model) -> dict of numbers`` instead of
    class predictions: the mean weights and every learned / isotropic sample (common random
    numbers as there), without calibration or ensembles (see ``notes``)."""
    from .compare import user_metrics
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    net = copy.deepcopy(model).to(device).eval()
    _load_weights(net, mu)
    rows = {"mean weights": user_metrics(evaluate, net, primary)}
    per_sample = []
    from tqdm.auto import tqdm
    for k, pair in enumerate(tqdm(weight_samples(mu, sigma, n_samples, seed), total=n_samples,
                                  desc="noise samples", disable=not progress)):
        row = {"sample": k}
        for kind, weights in zip(("learned", "isotropic"), pair):
            _load_weights(net, weights)
            row.update({f"{kind}_{key}": v for key, v in user_metrics(evaluate, net, primary).items()})
        per_sample.append(row)
    samples = pd.DataFrame(per_sample).set_index("sample")
    metrics = list(rows["mean weights"])
    for kind, label in (("learned", "learned sigma samples"), ("isotropic", "isotropic samples")):
        rows[label] = {m: samples[f"{kind}_{m}"].mean() for m in metrics}
        rows[label][f"{primary}_std"] = samples[f"{kind}_{primary}"].std(ddof=0)
    summary = pd.DataFrame.from_dict(rows, orient="index").reindex(index=list(ROWS[:3]),
                                                                    columns=[primary, f"{primary}_std", *metrics[1:]])
    s_iso = isotropic_std(sigma)
    n = sum(s.numel() for s in sigma.values())
    return AnalysisResult(summary, {}, samples, n_samples=n_samples, seed=seed, sigma_iso=s_iso,
                          total_variance=n * s_iso ** 2, n_weights=n, primary=primary,
                          higher_is_better=higher_is_better, notes=[NOT_CLASSIFICATION])


def _run_data(run):
    from ..data.datasets import create_dataset
    c = run.config
    return create_dataset(c["dataset"], root=c.get("data_root"), image_size=c.get("image_size"),
                          in_chans=c.get("in_chans"), seed=c.get("seed", 0))


def analyse(run, *, round_index: int | None = -1, which: str = "pre", n_samples: int = 8, seed: int = 0,
            device="cpu", data=None, progress: bool = False, model: nn.Module | None = None,
            evaluate=None) -> AnalysisResult:
    """Noise resilience and calibration of ``run`` (a :class:`~pwfn_viz.record.rundir.Run` or its
    directory) at round ``round_index`` (default the last; None: the starting network), with the
    round's pre-snap (``which="pre"``, default) or post-snap mu and sigma; see the module docstring.
    ``data`` defaults to the run's own dataset (its test split). A run of your own model needs
    ``model`` (an unconverted instance of its architecture, not changed) and ``evaluate`` (your
    ``evaluate(model) -> dict of numbers``); with ``evaluate`` the result reports those metrics and
    skips calibration and ensembles (classification only)."""
    from ..core.device import resolve_device
    from ..record.rundir import Run, load_run
    run = run if isinstance(run, Run) else load_run(run)
    run.require("analyse", model=model, evaluate=evaluate)
    device = resolve_device(str(device))
    if which not in WHICH:
        raise ValueError(f"which={which!r}: use 'pre' (the round's state before its snap) or 'post' (after it)")
    if round_index is None:
        names = list(run.meta["tensors"])
        mu = {n: run.start[f"mu/{n}"] for n in names}
        sigma = {n: run.start[f"sigma/{n}"] for n in names}
        index = None
    else:
        if not run.rounds:
            raise IndexError(f"{run.path} has no completed round yet; use round_index=None for the starting network")
        if not -len(run.rounds) <= round_index < len(run.rounds):
            raise IndexError(f"round {round_index} not recorded; this run has rounds 0..{len(run.rounds) - 1}")
        rnd = run.rounds[round_index]
        mu, sigma = (rnd.pre_mu, rnd.pre_sigma) if which == "pre" else (rnd.mu, rnd.sigma)
        if not mu:
            raise ValueError(f"round {rnd.index} of {run.path} has no {which}-snap tensors recorded")
        index = rnd.index
    model = run.plain_model_at(round_index, model=None if model is None else copy.deepcopy(model))
    if evaluate is not None:
        result = analyse_user_model(model, mu, sigma, evaluate, run.primary, higher_is_better=run.higher_is_better,
                                    n_samples=n_samples, seed=seed, device=device, progress=progress)
    else:
        result = analyse_model(model, mu, sigma, _run_data(run) if data is None else data, n_samples=n_samples,
                               seed=seed, device=device, progress=progress)
    result.round_index, result.which = index, which
    return result
