"""UncertaintyExplorer: which weights are uncertain, where they sit, and what became of one.

Pick a layer, optionally one output channel and one kernel tap, and a round: three live panels
show the selected weights' pre-snap sigma against their value, sigma by position in the tensor
(colour limits shared by all rounds of the layer) and one weight's trajectory over all rounds
(from :func:`~pwfn_viz.widgets.trajectory.weight_trajectory`). Hover a weight in sigma against mu
to name it; click it (or a cell of the position view) to follow it; drag a rectangle in either
view to outline the same weights in the other.

    >>> w = UncertaintyExplorer(run, layer="conv2.weight")     # doctest: +SKIP
    >>> w.channel.value = 3; w.tap.value = (1, 1); w.weight.value = 5   # doctest: +SKIP
    >>> w.trajectory.table                                      # doctest: +SKIP
    >>> w.save("conv2.svg")                                     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import html
import itertools
from types import SimpleNamespace

import ipywidgets as widgets
import numpy as np
import torch

from ._common import ALL, Explorer, layer_options, row, sigma_learning_html, table_html, unknown_layer
from ._data import clamped_sigma, fixed_rounds, hover_info, hover_text, selection_data, shared_limits
from ._interact import Hover, rectangle_selector
from ._link import positions_in, weights_at
from ._live import Coalescer, Memo, from_frontend, redraw
from ._panels import SigmaMuPanel
from ._panels_weights import PositionData, PositionPanel, TrajectoryPanel
from .trajectory import select_view, select_weights, weight_trajectory

__all__ = ["UncertaintyExplorer", "layer_sigma_limits"]


def layer_sigma_limits(run, name: str) -> tuple[float, float]:
    """(smallest, largest) clamped pre-snap sigma of tensor ``name`` over every round: one colour
    scale for all rounds, so rounds compare by colour."""
    lo, hi = np.inf, 0.0
    for rnd in run.rounds:
        s = clamped_sigma(rnd.pre_sigma[name].double().numpy())
        lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    return lo, max(hi, lo * 1.0001)


class UncertaintyExplorer(Explorer):
    """Layer / channel / kernel tap / round selectors and a weight picker over a run.

    Driven from Python: set ``layer.value`` (or :meth:`select_layer`), ``channel.value`` ("all" or
    an output channel), ``tap.value`` ("all" or a tuple), ``round_slider.value``,
    ``weight.value`` (position in the selection). Read ``selection_label.value``, the panels' data
    (``sigma_mu.data``, ``position.data``, ``trajectory_plot.data``), ``trajectory`` (the
    :class:`~pwfn_viz.widgets.trajectory.Trajectory`) and ``trajectory_table.value`` (HTML).
    ``round_slider``: a slider to use instead of the widget's own (the dashboard shares one).
    :meth:`highlight` outlines weights of the selection; ``on_select`` (None or a function of the
    weights, tensor name -> flat indices) hears of the rectangles dragged in the views, and
    ``linked_selection`` (such weights) stays outlined through every change (the dashboard's link).
    """

    css_class = "pwfn-uncertainty-explorer"

    def __init__(self, run, layer: str | None = None, round_index: int = -1, *, width: float = 5.0,
                 round_slider: widgets.IntSlider | None = None):
        super().__init__()
        self.width = width
        self.trajectory = None
        self.selected = np.zeros(0, dtype=np.int64)   # positions outlined by a rectangle selection
        self.linked_selection = {}   # tensor -> flat indices selected in a linked view: outlined whenever shown
        self.on_select = None
        self.memo = Memo()
        self._holding = False
        self.layer = widgets.Dropdown(description="layer", layout=widgets.Layout(width="340px"))
        self.channel = widgets.Dropdown(options=[("all", ALL)], value=ALL, description="out channel")
        self.tap = widgets.Dropdown(options=[("all", ALL)], value=ALL, description="kernel tap")
        self.round_slider = round_slider or widgets.IntSlider(value=0, min=0, max=0, description="round",
                                                              continuous_update=False)
        self.weight = widgets.IntSlider(value=0, min=0, max=0, description="weight", continuous_update=False)
        self.selection_label = widgets.Label()
        self.sigma_learning = widgets.HTML()   # has this layer's sigma learned by this round?
        self.weight_label = widgets.Label()
        self.weight_label.add_class("pwfn-weight-label")
        self.hover_label = widgets.HTML("<i>hover a weight in sigma against mu; click to follow it</i>")
        self.hover_label.add_class("pwfn-hover")
        self.trajectory_table = widgets.HTML(layout=widgets.Layout(width="420px", max_width="100%"))
        self.sigma_mu = self.position = self.trajectory_plot = None
        self._updater = Coalescer(self.update, idle=self.prefetch)
        own = [] if round_slider is not None else [self.round_slider]
        if not self._open_run(run):
            self._compose([self.layer, *own, self.channel, self.tap], self.selection_label)
            return
        self.sigma_mu = SigmaMuPanel(width, 3.9)
        self.position = PositionPanel(width, 3.9)
        self.trajectory_plot = TrajectoryPanel(width + 1.4, 3.4)
        self.panels = [self.sigma_mu, self.position, self.trajectory_plot]
        self._compose([self.layer, *own, self.channel, self.tap, self.weight], self.selection_label,
                      self.sigma_learning, self.hover_label, row(self.sigma_mu.canvas, self.position.canvas),
                      self.weight_label, row(self.trajectory_plot.canvas, self.trajectory_table))
        n = len(self.run.rounds)
        with self._hold():
            self.round_slider.max = n - 1
            self.round_slider.value = round_index % n
            self.layer.options = layer_options(self.run, allow_all=False)
            self.layer.value = next(iter(self.run.meta["tensors"]))
            self._reset_selectors()
        self.layer.observe(self._on_layer, names="value")
        for w in (self.channel, self.tap, self.weight) + (() if round_slider is not None else (self.round_slider,)):
            w.observe(self._changed, names="value")
        self.hover = Hover(self.sigma_mu, self.describe, self.hover_label, self.pick_position)
        self.position.canvas.mpl_connect("button_press_event", self._click_position)
        self._selectors = [rectangle_selector(self.sigma_mu, self._select_in_sigma_mu),
                           rectangle_selector(self.position, self._select_in_position)]
        self.update()
        if layer is not None:
            self.select_layer(layer)

    def _changed(self, change):
        if not self._holding:
            self._updater.request(deferred=from_frontend(change))

    # controls -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _hold(self):
        """Change several controls without an update per change."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def _disable(self):
        for w in (self.layer, self.channel, self.tap, self.round_slider, self.weight):
            w.disabled = True

    def _shape(self):
        return tuple(self.run.meta["tensors"][self.layer.value])

    def _reset_selectors(self):
        shape = self._shape()
        self.channel.options = [("all", ALL)] + [(str(c), c) for c in range(shape[0] if len(shape) > 1 else 0)]
        taps = list(itertools.product(*(range(s) for s in shape[2:]))) if len(shape) > 2 else []
        self.tap.options = [("all", ALL)] + [(",".join(map(str, t)), t) for t in taps]
        self.channel.value, self.tap.value = ALL, ALL
        self.channel.disabled, self.tap.disabled = len(shape) < 2, len(shape) < 3

    def _on_layer(self, change):
        with self._hold():
            self._reset_selectors()
        self._changed(change)

    def select_layer(self, name: str) -> bool:
        """Show layer ``name``; an unknown name leaves the view and shows a message."""
        if self.run is None:
            return False
        if name not in self.run.meta["tensors"]:
            self.error = KeyError(name)
            self.show_message(unknown_layer(self.run, name, allow_all=False))
            return False
        self.layer.value = name
        return True

    # views ----------------------------------------------------------------------------------
    @property
    def selected_channel(self) -> int | None:
        return None if self.channel.value == ALL else self.channel.value

    @property
    def selected_tap(self) -> tuple | None:
        return None if self.tap.value == ALL else self.tap.value

    def selection(self) -> torch.Tensor:
        """Flat indices (into the layer's tensor) of the selected weights."""
        return select_weights(self._shape(), self.selected_channel, self.selected_tap)

    # computing (cached) -----------------------------------------------------------------------
    def prepare(self, i: int) -> dict:
        """Everything the panels show for round ``i`` and the current selection and weight."""
        get, run, name = self.memo.get, self.run, self.layer.value
        channel, tap = self.selected_channel, self.selected_tap
        chosen = get(("chosen", name, channel, tap), self.selection)
        pick = min(self.weight.value, len(chosen) - 1)
        flat = int(chosen[pick])
        where = self._describe_selection(name)
        frame = get(("frame", name, channel, tap), lambda: shared_limits(run, name, chosen.numpy()))
        data = get(("sel", i, name, channel, tap), lambda: selection_data(run, i, name, chosen.numpy()))
        data.limits, data.title = frame, f"σ against value: {where}"   # Unicode: mathtext would parse each new title
        limits = get(("limits", name), lambda: layer_sigma_limits(run, name))
        def view():
            v = clamped_sigma(select_view(run.rounds[i].pre_sigma[name], channel, tap).double().numpy())
            return v.reshape(v.shape[0], -1) if v.ndim > 1 else v.reshape(-1)

        view = get(("view", i, name, channel, tap), view)
        traj = get(("traj", name, flat), lambda: weight_trajectory(run, name, flat))
        rnd = run.rounds[i]
        return {"round": i, "n": len(chosen), "pick": pick, "data": data, "trajectory": traj,
                "label": (f"{where}: {len(chosen)} weights, round {rnd.index} before its snap; "
                          f"median sigma {float(np.median(data.sigma)):.3g} (clamped)"),
                "learning": get(("learning", i, name), lambda: sigma_learning_html(run, i, name)),
                "table": get(("table", name, flat), lambda: table_html(traj.table, height="300px")),
                "position": PositionData(rnd.index, view, limits, self._dims(), f"σ by position: {where}", pick),
                "title": where}

    def prefetch(self) -> bool:
        """Compute the next (then the previous) round's data for the current selection if not
        cached yet; True if it computed one."""
        if self.run is None or not self.run.rounds:
            return False
        i, n = self.round_slider.value, len(self.run.rounds)
        key = (self.layer.value, self.selected_channel, self.selected_tap)
        for j in (i + 1, i - 1):
            if 0 <= j < n and ("sel", j) + key not in self.memo:
                self.prepare(j)
                return True
        return False

    def apply(self, state: dict) -> None:
        """Move every panel and label to ``state`` (no drawing: :func:`redraw` follows)."""
        with self._hold():   # a new selection: the picker's range follows
            self.weight.max = state["n"] - 1
            self.weight.value = state["pick"]
        self.trajectory = state["trajectory"]
        self.selection_label.value = state["label"]
        self.sigma_learning.value = state["learning"]
        self.sigma_mu.show(state["data"])
        self.sigma_mu.mark(state["pick"])
        self.position.show(state["position"])
        # a selection made here belongs to its view; one made in a linked view follows the weights
        self.selected = positions_in(state["data"], self.run.meta["tensors"], self.linked_selection)
        self.sigma_mu.highlight(self.selected)
        self.position.highlight(self.selected)
        self.trajectory_plot.show(SimpleNamespace(round_index=state["data"].round_index,
                                                  trajectory=state["trajectory"]))
        self.weight_label.value = state["trajectory"].describe()
        self.trajectory_table.value = state["table"]

    def update(self) -> None:
        """Redraw for the current controls (called by them)."""
        if self._holding or self.run is None or not self.run.rounds:
            return
        with self.busy() as step:
            step(f"round {self.round_slider.value}")
            self.apply(self.prepare(self.round_slider.value))
            redraw(self.panels)

    # hover, pick, select ----------------------------------------------------------------------
    def describe(self, position: int) -> dict:
        """What the hover label says about weight ``position`` of the selection."""
        return hover_info(self.run, self.sigma_mu.data, position,
                          self.memo.get(("fixed_rounds",), lambda: fixed_rounds(self.run)))

    def pick_position(self, position: int) -> None:
        """Follow weight ``position`` of the selection (the weight slider moves to it)."""
        self.weight.value = int(position)
        self.hover_label.value = "<b>picked:</b> " + html.escape(hover_text(self.describe(int(position))))

    def follow(self, name: str, flat: int) -> None:
        """Show weight ``flat`` of tensor ``name`` (its whole layer selected), with one update."""
        with self._hold():
            self.layer.value = name
            self._reset_selectors()
            self.weight.max = len(self.selection()) - 1
            self.weight.value = int(flat)
        self.update()

    def _click_position(self, event):
        if event.inaxes is not self.position.ax or event.button != 1 or self.hover._busy_tool():
            return
        cell = self.position.cell(event.xdata, event.ydata)
        if cell is not None:
            self.pick_position(cell)

    def _select_in_sigma_mu(self, x0, x1, y0, y1):
        self._selected(self.sigma_mu.inside(x0, x1, y0, y1))

    def _select_in_position(self, x0, x1, y0, y1):
        self._selected(self.position.cells_inside(x0, x1, y0, y1))

    def _selected(self, positions) -> None:
        self.highlight(positions)
        if self.on_select is not None:
            self.on_select(weights_at(self.sigma_mu.data, self.run.meta["tensors"], positions))

    def highlight(self, positions) -> None:
        """Outline the weights at ``positions`` (in the selection) in both views."""
        self.selected = np.asarray(positions, dtype=np.int64)
        self.sigma_mu.highlight(self.selected)
        self.position.highlight(self.selected)
        self.sigma_mu.touch()
        self.position.touch()
        self.hover_label.value = f"<b>selected:</b> {self.selected.size} weights (outlined in both views)"
        redraw([self.sigma_mu, self.position])

    def _dims(self) -> list[str]:
        """Names of the selection's dimensions (the selected channel and tap dropped)."""
        shape = self._shape()
        if len(shape) == 1:
            names = ["index"]
        else:
            taps = (["kernel row", "kernel column"] if len(shape) == 4
                    else [f"kernel dim {i}" for i in range(len(shape) - 2)])
            names = ["output channel", "input channel"] + taps
        if self.selected_channel is not None:
            names = names[1:]
        if self.selected_tap is not None:
            names = names[:len(names) - len(self.selected_tap)]
        return names

    def _describe_selection(self, name):
        channel, tap = self.selected_channel, self.selected_tap
        parts = [str(channel) if channel is not None else ":"]
        shape = self._shape()
        if len(shape) > 1:
            parts.append(":")
        if len(shape) > 2:
            parts += [str(t) for t in tap] if tap is not None else [":"] * (len(shape) - 2)
        return f"{name}[{', '.join(parts)}]"
