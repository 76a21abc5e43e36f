"""WhatIf: re-cluster a recorded round with other settings, live, without retraining.

The round's stored pre-snap mu and sigma go through :func:`~pwfn_viz.core.clustering.cluster_round`
again with the chosen ``delta`` (band width in sigmas), zero threshold ``2^-b`` and fraction;
the widget shows the unique values and entropy after that snap next to what the run recorded,
and (optionally) the test accuracy of the network with the snapped values loaded
(:func:`~pwfn_viz.core.bayes.load_flat_state` into ``run.model_at(round)``).

    >>> w = WhatIf(run, round_index=-1)                          # doctest: +SKIP
    >>> w.delta.value = 2.0                                       # doctest: +SKIP
    >>> w.stats["unique"], w.stats["entropy"], w.stats["top1"]    # doctest: +SKIP

The numbers come from pure functions in :mod:`pwfn_viz.widgets._whatif_data`, also used by
``benchmarks/bench_whatif_cpu.py``:

    >>> result, stats = whatif_snap(mu, sigma, 0.5, ClusterConfig(delta=2.0))   # doctest: +SKIP
    >>> snapped_accuracy(model, result, loader)                                # doctest: +SKIP

An update re-clusters, counts the codebook and evaluates without repeating what depends only on
the round (sorted once, converted once, the test split read once); the evaluation runs on its own
thread while the panels draw. The numbers and pictures are those of the direct calls.
"""
from __future__ import annotations

import dataclasses
import time

import ipywidgets as widgets
import pandas as pd
import torch

from ..core.bayes import load_flat_state
from ..core.clustering import ClusterConfig
from ..core.clustering_cpu import SortedInputs
from ..core.clustering_readable import check_inputs
from ..kernels import use_triton
from ..analysis.tables import value_counts
from ._common import Explorer, as_run, incomplete_message, row, table_html, test_loader, torch_threads
from ._data import fixed_rounds, hover_info
from ._interact import Hover
from ._live import Coalescer, Memo, from_frontend, redraw
from ._panels import SigmaMuPanel
from ._panels_codebook import Codebooks, ValueCountsPanel
from ._whatif_data import (PlainNetwork, RoundArrays, clamp_fraction, fixed_value_counts, snapped_accuracy, started,
                           whatif_snap, whatif_view)

__all__ = ["WhatIf", "whatif_snap", "snapped_accuracy", "whatif_view", "clamp_fraction"]

STAT_KEYS = ["n_fixed", "unique", "unique_nonzero", "entropy", "entropy_nonzero", "n_centres", "n_steps"]


class WhatIf(Explorer):
    """Sliders for delta, the zero threshold exponent b and the fraction over one recorded round.

    Driven from Python: set ``delta.value``, ``b.value``, ``fraction.value`` (or call
    :meth:`set` to change several with one update); read ``stats`` (dict: the keys of
    :data:`STAT_KEYS`, plus the measured metrics when ``accuracy`` is on (``top1``/``top5``
    for classification runs), and ``seconds``),
    ``result`` (the :class:`~pwfn_viz.core.clustering.ClusterResult`), ``table.value`` (HTML),
    ``plot`` (live panel: the codebooks) and ``bands`` (live panel: sigma against mu with the
    what-if centres; hover names a weight). ``accuracy.value = False`` skips the evaluation,
    ``plots.value = False`` hides the panels and skips their drawing. A fraction below the share
    the round had fixed before its snap is raised to it, with a visible note. Results are cached
    per (delta, b, fraction, evaluate).

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
                 cluster_threads: int | None = 1, width: float = 5.0, model=None, evaluate=None):
        super().__init__()
        self.width, self.device, self._data, self.cluster_threads = width, device, data, cluster_threads
        self._user_model, self._user_evaluate = model, evaluate
        self.result, self.stats, self._model, self._holding = None, {}, None, False
        self._inputs = self._arrays = None   # the round's sorted inputs and view arrays, made at first use
        self.delta = widgets.FloatLogSlider(value=1.0, base=2, min=-3, max=4, step=0.25, description="delta",
                                            continuous_update=False)
        self.b = widgets.IntSlider(value=7, min=1, max=16, description="zero 2^-b", continuous_update=False)
        self.fraction = widgets.FloatSlider(value=0.5, min=0.01, max=1.0, step=0.01, description="fraction",
                                            continuous_update=False)
        self.accuracy = widgets.Checkbox(value=accuracy, description="evaluate")
        self.round_label = widgets.Label()
        self.table = widgets.HTML()
        self.plots = widgets.Checkbox(value=True, description="draw plots")
        self.hover_label = widgets.HTML("<i>hover a weight in sigma against mu</i>")
        self.hover_label.add_class("pwfn-hover")
        self.memo = Memo(128)
        self._updater = Coalescer(self.update)
        self._fraction_note = ""
        # drawn at their display size (the canvas is the figure's pixel size): never stretched
        self.plot = ValueCountsPanel(width, 3.6)
        self.bands = SigmaMuPanel(width, 3.9)
        self.panels = [self.plot, self.bands]
        self.plot_box = row(self.plot.canvas, self.bands.canvas)
        self.table.layout = widgets.Layout(width="330px")
        self._compose([self.delta, self.b, self.fraction, self.accuracy, self.plots], self.round_label,
                      row(self.table, self.hover_label), self.plot_box)
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
            self.already = float(self.pre_fixed.float().mean())   # share fixed before the round
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
            w.observe(self._changed, names="value")
        self.hover = Hover(self.bands, self.describe, self.hover_label)

    def _changed(self, change):
        if not self._holding:
            self._updater.request(deferred=from_frontend(change))

    def describe(self, position: int) -> dict:
        """What the hover label says about weight ``position`` (network order); its centre is the
        what-if's, the round that fixed it the recorded run's."""
        return hover_info(self.run, self.bands.data, position,
                          self.memo.get(("fixed_rounds",), lambda: fixed_rounds(self.run)))

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

    def _accuracy_later(self, result, key):
        """A function that gives :meth:`_evaluate` of ``result``. The built-in evaluation of a
        result not yet cached starts now, on a thread of its own: torch releases the GIL while the
        network runs, so it runs while the panels draw (with the same torch threads: the same
        numbers). Your ``evaluate`` runs when the function is called, on the widget's thread."""
        if ("acc",) + key in self.memo or self._user_evaluate is not None or not self.plots.value:
            return lambda: self._evaluate(result)
        self._network()   # built here, not on the thread
        return started(lambda: self._evaluate(result))

    def _network(self):
        """The network to evaluate, made at first use: a :class:`PlainNetwork` for the built-in
        evaluation, the converted network for yours."""
        if self._model is None:
            converted = self.run.model_at(self.round.index, model=self._user_model)
            if self._user_evaluate is None:
                self._model = PlainNetwork(converted, test_loader(self.run, self._data), self.device)
            else:
                self._model = converted.to(self.device)
        return self._model

    def _evaluate(self, result) -> dict:
        """The re-clustered network measured: top-1/top-5 on the run's test split, or the numbers
        of the ``evaluate`` given (all but ``loss``)."""
        self._network()
        if self._user_evaluate is None:
            acc = self._model.accuracy(result)
        else:
            load_flat_state(self._model, result.mu, result.sigma, result.fixed_mask)
            with torch.no_grad():
                acc = {k: float(v) for k, v in self._user_evaluate(self._model.eval()).items()}
        return {k: v for k, v in acc.items() if k != "loss"} or acc

    def _snap(self, fraction: float, config: ClusterConfig):
        with torch_threads(self.cluster_threads):
            if self._inputs is None and not use_triton(self.mu):   # once: the round's checks and sort
                check_inputs(self.mu, self.sigma, 1.0)
                self._inputs = SortedInputs.of(self.mu, self.sigma)
            t0 = time.perf_counter()
            result, stats = whatif_snap(self.mu, self.sigma, fraction, config, self.round.index, inputs=self._inputs)
            stats["seconds"] = time.perf_counter() - t0
        return result, stats

    def update(self) -> None:
        if self._holding or self.run is None:
            return
        fraction, note = clamp_fraction(float(self.fraction.value), self.already)
        with self.busy() as step:
            step("re-clustering")
            config = self.config()
            key = (config.delta, config.b, round(fraction, 6))
            result, stats = self.memo.get(("snap",) + key, lambda: self._snap(fraction, config))
            stats = dict(stats)
            accuracy = self._accuracy_later(result, key) if self.accuracy.value else None
            self.plot_box.layout.display = "flex" if self.plots.value else "none"
            if self.plots.value:   # off: the panels are hidden, not left showing an old state
                step("panels")
                self._draw(result, key)
                redraw(self.panels)
            if accuracy is not None:
                step("evaluating on the test split")
                stats.update(self.memo.get(("acc",) + key, accuracy))
            self.result, self.stats = result, stats
            self.table.value = table_html(self._table(), height="320px")
        if note and self.error is None:
            self.show_message(note, "warning")

    def _draw(self, result, key):
        if "recorded" not in self.memo:
            recorded, fixed = self.round.mu, self.round.fixed
            self.memo.get("recorded", lambda: value_counts(torch.cat([recorded[n].flatten()[fixed[n].flatten()]
                                                                      for n in recorded])))

        def fixed_counts():   # value_counts(result.mu[result.fixed_mask]), read off the steps
            values, counts = fixed_value_counts(result, self.mu.dtype)
            return values.double().numpy(), counts.numpy()
        series = {"what-if": self.memo.get(("counts",) + key, fixed_counts),
                  "recorded": self.memo.get("recorded", None)}
        self.plot.show(Codebooks(series, "values of the fixed weights", self.round.index))
        zero = 2.0 ** -int(self.b.value) if self.base.zero_fix else None
        if self._arrays is None:
            self._arrays = RoundArrays(self.round.mu.keys(), self.mu, self.sigma, self.pre_fixed)
        view = self.memo.get(("view",) + key, lambda: whatif_view(
            self.round.mu.keys(), self.mu, self.sigma, self.pre_fixed, result, self.round.index, zero, self._arrays))
        view.title = (f"what-if: round {self.round.index} with δ {self.delta.value:g}, zero 2^-{self.b.value}, "
                      f"fraction {view.fraction:.3g}")
        self.bands.show(view)

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
