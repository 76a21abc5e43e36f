"""WhatIf: re-cluster a recorded round with other settings, live, without retraining.

The round's stored pre-snap mu and sigma go through :func:`~pwfn_viz.core.clustering.cluster_round`
again with the chosen ``delta`` (band width in sigmas), zero threshold ``2^-b`` and fraction;
the widget shows the unique values and entropy after that snap next to what the run recorded,
and (optionally) the test accuracy of the network with the snapped values loaded
(:func:`~pwfn_viz.core.bayes.load_flat_state` into ``run.model_at(round)``).

    >>> w = WhatIf(run, round_index=-1)                          # doctest: +SKIP
    >>> w.delta.value = 2.0                                       # doctest: +SKIP
    >>> w.stats["unique"], w.stats["entropy"], w.stats["top1"]    # doctest: +SKIP

The numbers come from two pure functions, also used by ``benchmarks/bench_whatif_cpu.py``:

    >>> result, stats = whatif_snap(mu, sigma, 0.5, ClusterConfig(delta=2.0))   # doctest: +SKIP
    >>> snapped_accuracy(model, result, loader)                                # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import time

import ipywidgets as widgets
import pandas as pd
import torch

from ..core.bayes import load_flat_state
from ..core.clustering import ClusterConfig, ClusterResult, cluster_round, mu_order
from ..core.metrics import codebook_stats, evaluate
from ..analysis.tables import round_from_cluster, value_counts
from ..viz.uncertainty import plot_sigma_vs_mu
from ._common import Explorer, as_run, figure, incomplete_message, png, table_html, test_loader, torch_threads
from ._plots import plot_value_counts

__all__ = ["WhatIf", "whatif_snap", "snapped_accuracy"]

STAT_KEYS = ["n_fixed", "unique", "unique_nonzero", "entropy", "entropy_nonzero", "n_centres", "n_steps"]


def whatif_snap(mu: torch.Tensor, sigma: torch.Tensor, fraction: float, config: ClusterConfig,
                round_index: int = 0, order: torch.Tensor | None = None) -> tuple[ClusterResult, dict]:
    """One re-clustering: ``cluster_round`` and the codebook of its snapped values
    (``codebook_stats``) plus the number fixed, of centres and of greedy steps. ``order``:
    ``mu_order(mu)``, computed once for a widget's mu (the round's sort, reused)."""
    result = cluster_round(mu, sigma, fraction, config=config, round_index=round_index, order=order)
    stats = {"n_fixed": int(result.fixed_mask.sum()), **codebook_stats(result.mu),
             "n_centres": len(result.centres), "n_steps": len(result.steps)}
    return result, stats


def snapped_accuracy(model: torch.nn.Module, result: ClusterResult, loader, device="cpu") -> dict:
    """Load a re-clustered round into a converted ``model`` (in place) and evaluate it."""
    load_flat_state(model, result.mu, result.sigma, result.fixed_mask)
    return evaluate(model, loader, device)


class WhatIf(Explorer):
    """Sliders for delta, the zero threshold exponent b and the fraction over one recorded round.

    Driven from Python: set ``delta.value``, ``b.value``, ``fraction.value`` (or call
    :meth:`set` to change several with one update); read ``stats`` (dict: the keys of
    :data:`STAT_KEYS`, plus the measured metrics when ``accuracy`` is on (``top1``/``top5``
    for classification runs), and ``seconds``),
    ``result`` (the :class:`~pwfn_viz.core.clustering.ClusterResult`), ``table.value`` (HTML),
    ``plot.value`` (codebooks, PNG bytes) and ``bands.value`` (sigma against mu with the what-if
    centres and bands, PNG). ``accuracy.value = False`` skips the evaluation, ``plots.value =
    False`` the drawing.

    A run of your own model evaluates with your code: ``WhatIf(run, model=MyNet(), evaluate=my_eval)``
    (``evaluate(model) -> dict of numbers``, as given to :class:`~pwfn_viz.train.fixer.Fixer`);
    without them its evaluation is off.

    ``cluster_threads``: torch CPU threads for the re-clustering (None: torch's setting). One
    thread is the default: ``cluster_round`` is many small tensor operations, and at a million
    weights on a 2-core CPU it ran 3 to 9 times faster on one thread than on two
    (``benchmarks/bench_whatif_cpu.py``).
    """

    css_class = "pwfn-whatif"

    def __init__(self, run, round_index: int = -1, *, data=None, accuracy: bool = True, device="cpu",
                 cluster_threads: int | None = 1, width: float = 6.0, model=None, evaluate=None):
        super().__init__()
        self.width, self.device, self._data, self.cluster_threads = width, device, data, cluster_threads
        self._user_model, self._user_evaluate = model, evaluate
        self.result, self.stats, self._model, self._loader, self._holding = None, {}, None, None, False
        self._order = None
        self.delta = widgets.FloatLogSlider(value=1.0, base=2, min=-3, max=4, step=0.25, description="delta",
                                            continuous_update=False)
        self.b = widgets.IntSlider(value=7, min=1, max=16, description="zero 2^-b", continuous_update=False)
        self.fraction = widgets.FloatSlider(value=0.5, min=0.01, max=1.0, step=0.01, description="fraction",
                                            continuous_update=False)
        self.accuracy = widgets.Checkbox(value=accuracy, description="evaluate")
        self.round_label = widgets.Label()
        self.table = widgets.HTML()
        self.plots = widgets.Checkbox(value=True, description="draw plots")
        self.plot = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.bands = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self._compose(widgets.HBox([self.delta, self.b]), widgets.HBox([self.fraction, self.accuracy, self.plots]),
                      self.round_label, widgets.HBox([self.table, self.plot]), self.bands)
        try:
            self.run = as_run(run)
            self._set_notice(incomplete_message(self.run))
            if not self.run.rounds:
                raise ValueError(f"{self.run.path} has no completed round: nothing to re-cluster")
            n = len(self.run.rounds)
            if not -n <= round_index < n:
                raise IndexError(f"round {round_index} not recorded; this run has rounds 0..{n - 1}")
            self.round = self.run.rounds[round_index]
            self.base = ClusterConfig(**self.run.config["cluster"])
            self.mu, self.sigma, self.pre_fixed = self.round.flat("pre")
            if evaluate is None and not (self.run.meta.get("model_spec") or {}).get("name"):
                self.accuracy.value = False   # your own model: evaluating needs model= and evaluate=
        except Exception as exc:
            self.error, self.run = exc, None
            self.show_message(f"{type(exc).__name__}: {exc}")
            for w in (self.delta, self.b, self.fraction, self.accuracy, self.plots):
                w.disabled = True
            return
        m = self.round.metrics
        self.round_label.value = (f"re-clustering the pre-snap mu and sigma of round {self.round.index} "
                                  f"({self.mu.numel():,} weights); recorded: fraction {m['fraction']:g}, "
                                  f"{m['unique']} unique values, {m['entropy']:.3f} bits, {self.run.primary_label} "
                                  f"{m[f'{self.run.primary}_after']:.4g}")
        self.set(delta=self.base.delta, b=self.base.b, fraction=self.round.fraction)
        for w in (self.delta, self.b, self.fraction, self.accuracy, self.plots):
            w.observe(lambda _: self.update(), names="value")

    def config(self) -> ClusterConfig:
        """The run's clustering settings with the sliders' delta and b."""
        return dataclasses.replace(self.base, delta=float(self.delta.value), b=int(self.b.value))

    def set(self, **values) -> None:
        """Set several sliders (delta, b, fraction, accuracy) and update once."""
        self._holding = True
        try:
            for key, value in values.items():
                getattr(self, key).value = value
        finally:
            self._holding = False
        self.update()

    def _evaluate(self, result) -> dict:
        """The re-clustered network measured: top-1/top-5 on the run's test split, or the numbers
        of the ``evaluate`` given (all but ``loss``)."""
        if self._model is None:
            self._model = self.run.model_at(self.round.index, model=self._user_model).to(self.device)
            self._loader = test_loader(self.run, self._data) if self._user_evaluate is None else None
        if self._user_evaluate is None:
            acc = snapped_accuracy(self._model, result, self._loader, self.device)
        else:
            load_flat_state(self._model, result.mu, result.sigma, result.fixed_mask)
            with torch.no_grad():
                acc = {k: float(v) for k, v in self._user_evaluate(self._model.eval()).items()}
        return {k: v for k, v in acc.items() if k != "loss"} or acc

    def update(self) -> None:
        if self._holding or self.run is None:
            return
        with self.busy(1 + self.accuracy.value + 2 * self.plots.value) as step:
            step("re-clustering")
            t0 = time.perf_counter()
            with torch_threads(self.cluster_threads):
                if self._order is None:   # the sort of this round's mu, once for every update
                    self._order = mu_order(self.mu)
                result, stats = whatif_snap(self.mu, self.sigma, float(self.fraction.value), self.config(),
                                            self.round.index, order=self._order)
            stats["seconds"] = time.perf_counter() - t0
            if self.accuracy.value:
                step("evaluating on the test split")
                stats.update(self._evaluate(result))
            self.result, self.stats = result, stats
            self.table.value = table_html(self._table(), height="320px")
            if self.plots.value:
                self._draw(result, step)

    def _draw(self, result, step):
        step("codebook plot")
        fixed = result.mu[result.fixed_mask]
        recorded = self.round.mu
        recorded_fixed = torch.cat([recorded[n].flatten()[self.round.fixed[n].flatten()] for n in recorded])
        fig, ax = figure(self.width, 3.6)
        plot_value_counts({"what-if": value_counts(fixed), "recorded": value_counts(recorded_fixed)}, ax)
        ax.set_title("values of the fixed weights", fontsize="small")
        self.plot.value = png(fig)
        step("centres and bands")
        what_if = round_from_cluster(self.mu, self.sigma, result, pre_fixed=self.pre_fixed, index=self.round.index)
        fig, ax = figure(self.width + 2.5, 4.0)
        plot_sigma_vs_mu(what_if, ax=ax, zero_band=2.0 ** -int(self.b.value) if self.base.zero_fix else None)
        ax.set_title(f"what-if: round {self.round.index} re-clustered with delta {self.delta.value:g}, "
                     f"zero 2^-{self.b.value}, fraction {self.fraction.value:g}", fontsize="small")
        self.bands.value = png(fig)

    def _table(self) -> pd.DataFrame:
        m = self.round.metrics
        measured = [k for k in self.stats if k not in STAT_KEYS and k != "seconds"]
        keys = STAT_KEYS + measured + ["seconds"]
        recorded = {**m, **{k: m.get(f"{k}_after") for k in measured}, "seconds": None}
        return pd.DataFrame({"": keys, "what-if": [_fmt(self.stats.get(k)) for k in keys],
                             "recorded": [_fmt(recorded.get(k)) for k in keys]})


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
