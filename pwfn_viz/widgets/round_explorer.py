"""RoundExplorer: step through the rounds of a run, one layer or the whole network.

A round slider and a layer selector drive three live panels (ipympl canvases with zoom and pan):
sigma against mu before the round's snap, the run's timeline with the round marked, and the
greedy steps of the round (plot and table). The label above them reads "round i: x% fixed ...",
the line below it says whether the sigma shown has learned or is still its initialisation.

Hovering a weight in sigma against mu names it (tensor, index, mu, sigma, centre, the round that
fixed it) in ``hover_label`` and shows its centre's band; a click picks it (``pick``), and the
pick follows the weight through the rounds. A rectangle dragged over it selects weights
(``selection``: tensor name -> flat indices), outlined in every round until the next selection.
Every round's data is computed once (``memo``); a burst of slider moves in the browser becomes one
update, for the last value.

    >>> w = RoundExplorer(pwfn_viz.load_run("runs/digits"))    # doctest: +SKIP
    >>> w.round_slider.value = 3          # the label, panels and table follow  # doctest: +SKIP
    >>> w.select_layer("conv2.weight")                          # doctest: +SKIP
    >>> w.save("round3.pdf")                                    # doctest: +SKIP
"""
from __future__ import annotations

import html
from types import SimpleNamespace

import ipywidgets as widgets
import numpy as np

from ._common import ALL, Explorer, layer_options, row, sigma_learning_html, table_html, unknown_layer
from ._data import (fixed_rounds, hover_info, hover_text, position_of, shared_limits, sigma_mu_data, steps_data,
                    steps_frame, where)
from ._interact import Hover, rectangle_selector
from ._link import positions_in, selection_text, weights_at
from ._live import Coalescer, Memo, from_frontend, redraw
from ._panels import SigmaMuPanel, StepsPanel, TimelinePanel

__all__ = ["RoundExplorer", "round_label"]

STEP_COLUMNS = ["step", "pass_index", "P", "delta", "centre", "n_fit", "n_taken", "mu_mean", "mu_std",
                "sigma_mean"]


def round_label(run, index: int, layer: str | None = None) -> str:
    """'round i: x% fixed' plus the round's accuracy and codebook (and the layer's share fixed).

    x is the share of all converted weights fixed after the snap (``n_fixed / n_converted``)."""
    rnd = run.rounds[index]
    m = rnd.metrics
    total = run.meta.get("n_converted") or sum(t.numel() for t in rnd.fixed.values())
    p = run.primary
    fmt = ".2f" if p in ("top1", "top5") else ".4g"
    text = (f"round {rnd.index}: {100 * m['n_fixed'] / total:.1f}% fixed | {run.primary_label} "
            f"{m[f'{p}_before']:{fmt}} -> {m[f'{p}_after']:{fmt}} | {m['unique']} unique values | {m['entropy']:.2f} bits")
    if layer is not None:
        share = rnd.fixed[layer].float().mean().item()
        text += f" | {layer}: {100 * share:.1f}% fixed"
    return text


class RoundExplorer(Explorer):
    """Round slider + layer selector over a run (a :class:`~pwfn_viz.record.rundir.Run` or its directory).

    Driven from Python: set ``round_slider.value`` or ``layer.value`` (a tensor name or "all"; or
    call :meth:`select_layer`, which also takes None for all layers), or :meth:`pick_weight`; read
    ``round_label.value``, ``hover_label.value``, the panels' data (``sigma_mu.data``,
    ``steps.data``) and ``steps_table.value`` (HTML). Problems show in ``message``.
    ``round_slider``: a slider to use instead of the widget's own (the dashboard shares one).
    :meth:`select_weights` outlines a set of weights; ``on_select`` (None or a function of that
    set) hears of the selections dragged in the view (the dashboard links them to its other views).
    """

    css_class = "pwfn-round-explorer"

    def __init__(self, run, round_index: int = 0, layer: str | None = None, *, width: float = 5.0,
                 round_slider: widgets.IntSlider | None = None):
        super().__init__()
        self.width = width
        self.picked = None          # (tensor, flat index) of the weight followed through the rounds
        self.selection = {}         # tensor -> flat indices: the weights outlined in every round
        self.on_select = None
        self.memo = Memo()
        self.round_slider = round_slider or widgets.IntSlider(value=0, min=0, max=0, description="round",
                                                              continuous_update=False)
        self.layer = widgets.Dropdown(options=[("all layers", ALL)], value=ALL, description="layer",
                                      layout=widgets.Layout(width="340px"))
        self.round_label = widgets.Label(layout=widgets.Layout(width="100%"))
        self.round_label.add_class("pwfn-round-label")
        self.sigma_learning = widgets.HTML()   # has sigma learned (this round, this layer)?
        self.hover_label = widgets.HTML("<i>hover a weight in sigma against mu; click to follow it</i>")
        self.hover_label.add_class("pwfn-hover")
        self.steps_table = widgets.HTML(layout=widgets.Layout(width="480px", max_width="100%"))
        self.sigma_mu = self.timeline = self.steps = None
        self._updater = Coalescer(self.update, idle=self.prefetch)
        controls = [] if round_slider is not None else [self.round_slider]
        if not self._open_run(run):
            self._compose(controls + [self.layer], self.round_label)
            return
        self.sigma_mu = SigmaMuPanel(width, 4.3)
        self.timeline = TimelinePanel(width, 4.3, run=self.run)
        self.steps = StepsPanel(width, 4.8)
        self.panels = [self.sigma_mu, self.timeline, self.steps]
        self._compose(controls + [self.layer], self.round_label, self.sigma_learning, self.hover_label,
                      row(self.sigma_mu.canvas, self.timeline.canvas), row(self.steps.canvas, self.steps_table))
        n = len(self.run.rounds)
        self.round_slider.max = n - 1
        self.round_slider.value = round_index % n
        self.layer.options = layer_options(self.run)
        if round_slider is None:
            self.round_slider.observe(self._changed, names="value")
        self.layer.observe(self._changed, names="value")
        self.hover = Hover(self.sigma_mu, self.describe, self.hover_label, self.pick_position)
        self._selector = rectangle_selector(self.sigma_mu, self._select_in_sigma_mu)
        self.update()
        if layer is not None:
            self.select_layer(layer)

    def _disable(self):
        self.round_slider.disabled = self.layer.disabled = True

    def _changed(self, change):
        self._updater.request(deferred=from_frontend(change))

    def select_layer(self, name: str | None) -> bool:
        """Show ``name`` (None: all layers); an unknown name leaves the view and shows a message."""
        if self.run is None:
            return False
        if name not in (None, ALL) and name not in self.run.meta["tensors"]:
            self.error = KeyError(name)
            self.show_message(unknown_layer(self.run, name))
            return False
        self.layer.value = ALL if name is None else name
        return True

    @property
    def selected_layer(self) -> str | None:
        """The layer shown (None: all layers)."""
        return None if self.layer.value == ALL else self.layer.value

    # computing (cached per round and layer) ---------------------------------------------------
    def prepare(self, i: int, layer: str | None) -> dict:
        """Everything one round and layer shows, from the cache or computed now."""
        get = self.memo.get
        run = self.run

        def table():
            steps = run.rounds[i].steps
            cols = [c for c in STEP_COLUMNS if c in steps.columns]
            return (table_html(steps[cols], max_rows=1000, height="430px") if len(steps)
                    else "<i>no greedy steps recorded for this round</i>")

        return {"label": get(("label", i, layer), lambda: round_label(run, i, layer)),
                "learning": get(("learning", i, layer), lambda: sigma_learning_html(run, i, layer)),
                "sigma_mu": get(("sigma_mu", i, layer), lambda: self._with_limits(sigma_mu_data(run, i, layer))),
                "steps": get(("steps", i), lambda: steps_data(run, i, get(("steps_frame",), lambda: steps_frame(run)))),
                "table": get(("table", i), table),
                "round": i}

    def prefetch(self) -> bool:
        """Compute the next round's (then the previous round's) data if not cached yet, so that
        stepping (or playing) through the rounds finds it ready; True if it computed one."""
        if self.run is None:
            return False
        i, layer, n = self.round_slider.value, self.selected_layer, len(self.run.rounds)
        for j in (i + 1, i - 1):
            if 0 <= j < n and ("sigma_mu", j, layer) not in self.memo:
                self.prepare(j, layer)
                return True
        return False

    def _with_limits(self, data):
        """One frame for every round of the layer (see :func:`~pwfn_viz.widgets._data.shared_limits`)."""
        data.limits = self.memo.get(("limits", data.layer), lambda: shared_limits(self.run, data.layer))
        return data

    def apply(self, state: dict) -> None:
        """Move every panel and label to ``state`` (no drawing: :func:`redraw` follows)."""
        self.round_label.value = state["label"]
        self.sigma_learning.value = state["learning"]
        self.sigma_mu.show(state["sigma_mu"])
        rnd = self.run.rounds[state["round"]]
        self.timeline.show(SimpleNamespace(round_index=rnd.index, fraction=rnd.fraction))
        self.steps.show(state["steps"])
        self.steps_table.value = state["table"]
        self._mark_pick()
        self.sigma_mu.highlight(positions_in(self.sigma_mu.data, self.run.meta["tensors"], self.selection))

    def update(self) -> None:
        """Redraw for the current round and layer (called by the controls)."""
        if self.run is None or not self.run.rounds:
            return
        with self.busy() as step:
            step(f"round {self.round_slider.value}")
            self.apply(self.prepare(self.round_slider.value, self.selected_layer))
            redraw(self.panels)

    # hover and pick ---------------------------------------------------------------------------
    def _fixed_rounds(self):
        return self.memo.get(("fixed_rounds",), lambda: fixed_rounds(self.run))

    def describe(self, position: int) -> dict:
        """What the hover label says about weight ``position`` of the sigma-against-mu view."""
        return hover_info(self.run, self.sigma_mu.data, position, self._fixed_rounds())

    def pick_position(self, position: int) -> None:
        """Pick weight ``position`` of the sigma-against-mu view and follow it through the rounds."""
        name, _, flat = where(self.sigma_mu.data, self.run.meta["tensors"], int(position))
        self.pick_weight(name, flat)

    def pick_weight(self, name: str, flat: int) -> None:
        """Follow weight ``flat`` of tensor ``name``: ringed in every round, named in ``hover_label``."""
        self.picked = (name, int(flat))
        self._mark_pick()
        redraw([self.sigma_mu])

    def _mark_pick(self):
        d = self.sigma_mu.data
        position = None if self.picked is None or d is None else position_of(d, self.run.meta["tensors"], *self.picked)
        self.sigma_mu.mark(position)
        if position is None:
            return
        self.sigma_mu.touch()
        self.hover_label.value = "<b>picked:</b> " + html.escape(hover_text(self.describe(position)))

    # selection ------------------------------------------------------------------------------
    def _select_in_sigma_mu(self, x0, x1, y0, y1):
        weights = weights_at(self.sigma_mu.data, self.run.meta["tensors"], self.sigma_mu.inside(x0, x1, y0, y1))
        self.select_weights(weights)
        if self.on_select is not None:
            self.on_select(weights)

    def select_weights(self, weights: dict) -> None:
        """Outline ``weights`` (tensor name -> flat indices; {} clears) in this round and the next."""
        self.selection = {name: np.asarray(flat, dtype=np.int64) for name, flat in weights.items() if len(flat)}
        shown = positions_in(self.sigma_mu.data, self.run.meta["tensors"], self.selection)
        self.sigma_mu.highlight(shown)
        self.sigma_mu.touch()
        self.hover_label.value = f"<b>selected:</b> {html.escape(selection_text(self.selection, shown.size))}"
        redraw([self.sigma_mu])
