"""CompareExplorer: PWFN's final network against k-means weight sharing at any k, live.

The k-means side quantises the run's *starting* network (the one PWFN started from) with one
global codebook of ``k`` values and the chosen init, without fine-tuning (for speed); both sides
are measured exactly as :func:`pwfn_viz.analysis.compare` measures them (accuracy on the test split,
unique values, entropy, weight error overall and per layer, moves in units of sigma).

    >>> w = CompareExplorer(run)                        # doctest: +SKIP
    >>> w.k.value = 16; w.init.value = "linear"         # doctest: +SKIP
    >>> w.comparison.table                              # doctest: +SKIP

A run of your own model needs your architecture and metrics: ``CompareExplorer(run, model=MyNet(),
evaluate=my_eval)`` (the table then shows your metrics, the run's primary metric first).
"""
from __future__ import annotations

import copy
import warnings

import ipywidgets as widgets
import pandas as pd
import torch

from ..analysis.codebook_weights import CodebookWeights
from ..analysis.compare import (CLAMP_WARNING, COLUMNS, Comparison, columns_for, converted_weights, flatten_named,
                                learned_sigma, measure_method)
from ..baselines.kmeans import SortedValues, kmeans_1d, list_inits
from ._common import Explorer, as_run, held_batches, incomplete_message, row, table_html, test_loader
from ._live import Coalescer, Memo, from_frontend, redraw
from ._panels_codebook import Codebooks, LayerErrorPanel, ValueCountsPanel

__all__ = ["CompareExplorer", "KMeansAtK"]

TABLE_COLUMNS = ["method", "k", "top1", "top5", "unique", "entropy", "weight_error", "moved_gt_1sigma",
                 "moved_gt_3sigma"]
HELD_BATCHES_BYTES = 64 * 2**20   # test sets up to this size are kept in memory as batches


class KMeansAtK:
    """PWFN's last recorded round against k-means on the starting network at a chosen ``k``.

    Built once per run (the PWFN side is measured once); calling it with ``k`` and ``init``
    returns a :class:`~pwfn_viz.analysis.compare.Comparison` with two rows, ``<method>`` and
    ``kmeans@<k>``, measured with the same function :func:`pwfn_viz.analysis.compare` uses.
    ``model`` and ``evaluate`` (a run of your own model) are as in :func:`~pwfn_viz.analysis.compare.compare`.

    A call costs little more than evaluating one network, whatever ``k``: the starting weights are
    sorted once (:class:`~pwfn_viz.baselines.kmeans.SortedValues`), the unique counts and entropies
    come from the codebook (:class:`~pwfn_viz.analysis.codebook_weights.CodebookWeights`) and, with
    the built-in evaluation, one network takes every codebook in turn. The numbers are those of
    global :func:`~pwfn_viz.baselines.kmeans.kmeans_quantize` on the starting network, measured by
    :func:`~pwfn_viz.analysis.compare.measure_method`.
    """

    def __init__(self, run, loader=None, device="cpu", *, model=None, evaluate=None):
        if not run.rounds:
            raise ValueError(f"{run.path} has no completed round: there is no PWFN network to compare")
        run.require("CompareExplorer", model=model, evaluate=evaluate)
        self.run, self.device, self.model, self.evaluate = run, device, model, evaluate
        self.loader = None if evaluate is not None else held_batches(loader if loader is not None else test_loader(run), HELD_BATCHES_BYTES)
        self.names = list(run.meta["tensors"])
        self.start = converted_weights(self._plain(None), self.names)
        self.w_start = flatten_named(self.start, self.names)
        self.sigma = flatten_named(learned_sigma(run), self.names)
        self.method = run.config.get("method", "pwfn")
        row, layers, w = self._measure(self.method, 0, self._plain(-1))
        row["k"] = row["unique"]
        self.pwfn = (row, layers, w)
        self.pwfn_distinct = torch.unique(w, return_counts=True)
        self.sorted_start = SortedValues(self.w_start)     # sorted once, for every k and init
        self.k_max = self.sorted_start.n_distinct
        self.shapes, self.sizes = [t.shape for t in self.start.values()], [t.numel() for t in self.start.values()]
        dtypes = {t.dtype for t in self.start.values()}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else None   # mixed: measured from the tensors
        # one network takes every codebook in turn (the built-in evaluation leaves it as it was);
        # your own evaluate gets a fresh copy each time, as compare() gives it
        self._reused = self._plain(None).to(device) if evaluate is None else None
        keys = list(row)
        self.metrics = ["top1", "top5"] if evaluate is None else keys[3:keys.index("unique")]
        self.columns = COLUMNS if evaluate is None else columns_for(self.metrics)

    def _plain(self, round_index):
        return self.run.plain_model_at(round_index, model=None if self.model is None else copy.deepcopy(self.model))

    def _measure(self, method, k, model, codebook=None):
        return measure_method(method, k, False, model.to(self.device), self.names, self.w_start, self.sigma,
                              self.loader, self.device, evaluate_fn=self.evaluate,
                              primary=self.run.primary if self.evaluate is not None else None, codebook=codebook)

    def __call__(self, k: int, init: str = "kmeans++", seed: int = 0) -> Comparison:
        if init not in list_inits():
            raise ValueError(f"unknown k-means init {init!r}; choose one of {list_inits()}")
        if not 1 <= k <= self.k_max:
            raise ValueError(f"k={k} must be between 1 and {self.k_max} (the distinct starting values)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", CLAMP_WARNING, UserWarning)
            result = kmeans_1d(self.sorted_start, k, init=init, seed=seed)   # global kmeans_quantize's result
        if self.dtype is not None:
            codebook = CodebookWeights(result.centres, result.labels, self.dtype, self.sizes)
            quantized = codebook.tensors(self.shapes)
        else:
            codebook = None
            quantized = [result.centres[labels].view(shape) for labels, shape
                         in zip(result.labels.split(self.sizes), self.shapes)]
        model = self._reused if self._reused is not None else self._plain(None)
        with torch.no_grad():
            for p, values in zip(converted_weights(model, self.names).values(), quantized):
                p.copy_(values)
        method = f"kmeans@{k}"
        row, layers, w = self._measure(method, k, model, codebook)
        rows, all_layers = [self.pwfn[0], row], self.pwfn[1] + layers
        measured = self.evaluate is not None
        return Comparison(pd.DataFrame(rows, columns=self.columns), pd.DataFrame(all_layers),
                          {self.method: self.pwfn[2], method: w}, self.w_start, self.sigma,
                          self.pwfn[0]["entropy"], {}, self.run.path, self.run.primary if measured else "top1",
                          self.run.higher_is_better if measured else True,
                          {self.method: self.pwfn_distinct,
                           **({method: codebook.distinct()} if codebook is not None else {})})


class CompareExplorer(Explorer):
    """A k slider and an init selector; the table, codebooks and per-layer error follow.

    Driven from Python: set ``k.value`` / ``init.value``; read ``comparison`` (the
    :class:`~pwfn_viz.analysis.compare.Comparison`), ``table.value`` (HTML), ``codebooks`` and
    ``layer_error`` (live panels; their ``data`` is what they show). Comparisons are cached per
    (k, init). ``data`` (a DataBundle) skips rebuilding the dataset. A run
    of your own model needs ``model`` (an unconverted instance) and ``evaluate`` (your metrics).
    """

    css_class = "pwfn-compare-explorer"

    def __init__(self, run, k: int | None = None, init: str = "kmeans++", *, seed: int = 0, data=None,
                 device="cpu", width: float = 5.0, model=None, evaluate=None):
        super().__init__()
        self.width, self.seed, self.comparison, self.session = width, seed, None, None
        self.k = widgets.IntSlider(value=1, min=1, max=1, description="k", continuous_update=False)
        self.init = widgets.Dropdown(options=list_inits(), value="kmeans++", description="init")
        self.table = widgets.HTML()
        self.codebooks = ValueCountsPanel(width, 3.6)
        self.layer_error = LayerErrorPanel(width, 3.6)
        self.panels = [self.codebooks, self.layer_error]
        self.memo = Memo(32)
        self._updater = Coalescer(self.update)
        self._compose([self.k, self.init], self.table, row(self.codebooks.canvas, self.layer_error.canvas))
        try:
            self.run = as_run(run)
            self._set_notice(incomplete_message(self.run))
            if not self.run.rounds:
                raise ValueError(f"{self.run.path} has no completed round: nothing to compare")
            with self.busy(2) as step:
                step("measuring PWFN's network")
                self.run.require("CompareExplorer", model=model, evaluate=evaluate)
                loader = test_loader(self.run, data) if evaluate is None else None
                self.session = KMeansAtK(self.run, loader, device, model=model, evaluate=evaluate)
            if self.session is None:
                raise self.error
        except Exception as exc:
            self.error = exc
            self.show_message(f"{type(exc).__name__}: {exc}")
            self.k.disabled = self.init.disabled = True
            return
        if not self.run.complete:
            self._set_notice(incomplete_message(self.run) + " PWFN is its last recorded round.")
        pwfn_k = self.session.pwfn[0]["unique"]   # the slider spans a useful range around PWFN's budget
        self.k.max = min(self.session.k_max, max(256, 4 * pwfn_k, k or 0))
        self.k.value = max(1, min(k if k is not None else pwfn_k, self.k.max))
        if init in list_inits():
            self.init.value = init
        self.k.observe(self._changed, names="value")
        self.init.observe(self._changed, names="value")
        self.update()
        if init not in list_inits():   # after the first update, which clears messages
            self.show_message(f"unknown k-means init {init!r}; choose one of {list_inits()} (showing kmeans++)")

    def _changed(self, change):
        self._updater.request(deferred=from_frontend(change))

    def update(self) -> None:
        if self.session is None:
            return
        with self.busy() as step:
            k, init = self.k.value, self.init.value
            step(f"k-means with k={k}")
            self.comparison = self.memo.get((k, init), lambda: self.session(k, init, self.seed))
            methods = list(self.comparison.table["method"])
            shown = [c for c in TABLE_COLUMNS if c not in ("top1", "top5")]
            shown = shown[:2] + self.session.metrics + shown[2:]
            self.table.value = table_html(self.comparison.table[shown], height="120px")
            series = {}
            for m in methods:
                values, counts = self.comparison.value_counts(m)
                series[m] = (values.double().numpy(), counts.numpy())
            self.codebooks.show(Codebooks(series, f"codebooks: PWFN against k-means ({init}) at k={k}"))
            self.layer_error.show(self.comparison.layers)
            redraw(self.panels)
