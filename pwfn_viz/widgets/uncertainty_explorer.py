"""UncertaintyExplorer: which weights are uncertain, where they sit, and what became of one.

Pick a layer, optionally one output channel and one kernel tap, and a round: the selected
weights' pre-snap sigma is drawn against their value and against their position in the tensor.
Pick one weight of the selection to see its trajectory over all rounds (mu before and after each
snap with its sigma band, the value it was fixed to and when), from
:func:`~pwfn_viz.widgets.trajectory.weight_trajectory`.

    >>> w = UncertaintyExplorer(run, layer="conv2.weight")     # doctest: +SKIP
    >>> w.channel.value = 3; w.tap.value = (1, 1); w.weight.value = 5   # doctest: +SKIP
    >>> w.trajectory.table                                      # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import itertools

import ipywidgets as widgets
import torch

from ..analysis.tables import weight_status
from ._common import ALL, Explorer, figure, layer_options, png, sigma_learning_html, table_html, unknown_layer
from ._plots import plot_selection_position, plot_selection_scatter, plot_trajectory
from .trajectory import select_view, select_weights, weight_trajectory

__all__ = ["UncertaintyExplorer"]


class UncertaintyExplorer(Explorer):
    """Layer / channel / kernel tap / round selectors and a weight picker over a run.

    Driven from Python: set ``layer.value`` (or :meth:`select_layer`), ``channel.value`` ("all" or
    an output channel), ``tap.value`` ("all" or a tuple), ``round_slider.value``,
    ``weight.value`` (position in the selection). Read ``selection_label.value``,
    ``scatter.value`` / ``position.value`` / ``trajectory_plot.value`` (PNG bytes),
    ``trajectory`` (the :class:`~pwfn_viz.widgets.trajectory.Trajectory`) and
    ``trajectory_table.value`` (HTML).
    """

    css_class = "pwfn-uncertainty-explorer"

    def __init__(self, run, layer: str | None = None, round_index: int = -1, *, width: float = 5.0):
        super().__init__()
        self.width = width
        self.trajectory = None
        self._holding = False
        self.layer = widgets.Dropdown(description="layer", layout=widgets.Layout(width="340px"))
        self.channel = widgets.Dropdown(options=[("all", ALL)], value=ALL, description="out channel")
        self.tap = widgets.Dropdown(options=[("all", ALL)], value=ALL, description="kernel tap")
        self.round_slider = widgets.IntSlider(value=0, min=0, max=0, description="round", continuous_update=False)
        self.weight = widgets.IntSlider(value=0, min=0, max=0, description="weight", continuous_update=False)
        self.selection_label = widgets.Label()
        self.sigma_learning = widgets.HTML()   # has this layer's sigma learned by this round?
        self.weight_label = widgets.Label()
        self.scatter = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.position = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.trajectory_plot = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.trajectory_table = widgets.HTML()
        self._compose(widgets.HBox([self.layer, self.round_slider]), widgets.HBox([self.channel, self.tap]),
                      self.selection_label, self.sigma_learning, widgets.HBox([self.scatter, self.position]),
                      widgets.HBox([self.weight, self.weight_label]),
                      widgets.HBox([self.trajectory_plot, self.trajectory_table]))
        if not self._open_run(run):
            return
        n = len(self.run.rounds)
        with self._hold():
            self.round_slider.max = n - 1
            self.round_slider.value = round_index % n
            self.layer.options = layer_options(self.run, allow_all=False)
            self.layer.value = next(iter(self.run.meta["tensors"]))
            self._reset_selectors()
        self.layer.observe(self._on_layer, names="value")
        for w in (self.channel, self.tap, self.round_slider):
            w.observe(lambda _: self.update(), names="value")
        self.weight.observe(lambda _: self.update(trajectory_only=True), names="value")
        self.update()
        if layer is not None:
            self.select_layer(layer)

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

    def _on_layer(self, _):
        with self._hold():
            self._reset_selectors()
        self.update()

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

    def update(self, trajectory_only: bool = False) -> None:
        """Redraw for the current controls (called by them)."""
        if self._holding or self.run is None or not self.run.rounds:
            return
        name, rnd = self.layer.value, self.run.rounds[self.round_slider.value]
        with self.busy(2 if trajectory_only else 3) as step:
            chosen = self.selection()
            if not trajectory_only:
                with self._hold():   # a new selection: the picker's range follows
                    self.weight.max = len(chosen) - 1
                    self.weight.value = min(self.weight.value, self.weight.max)
            pick = self.weight.value
            step("trajectory")
            self.trajectory = weight_trajectory(self.run, name, int(chosen[pick]))
            step("sigma against value and position")
            self.sigma_learning.value = sigma_learning_html(self.run, self.round_slider.value, name)
            self._draw_selection(rnd, name, chosen, pick)
            self.weight_label.value = self.trajectory.describe()
            fig, ax = figure(self.width, 3.6)
            plot_trajectory(self.trajectory, ax)
            self.trajectory_plot.value = png(fig)
            self.trajectory_table.value = table_html(self.trajectory.table, height="300px")

    def _draw_selection(self, rnd, name, chosen, pick):
        where = self._describe_selection(name)
        self.selection_label.value = (f"{where}: {len(chosen)} weights, round {rnd.index} before its snap; "
                                      f"median sigma {rnd.pre_sigma[name].flatten()[chosen].median().item():.3g}")
        mu = rnd.pre_mu[name].flatten()[chosen].double().numpy()
        sigma = rnd.pre_sigma[name].flatten()[chosen].double().numpy()
        status = weight_status(rnd, name)[chosen.numpy()]
        fig, ax = figure(self.width, 3.6)
        plot_selection_scatter(mu, sigma, status, ax, pick=pick, title=f"sigma against value: {where}")
        self.scatter.value = png(fig)
        view = select_view(rnd.pre_sigma[name], self.selected_channel, self.selected_tap)
        fig, ax = figure(self.width, 3.6)
        plot_selection_position(view.double().numpy(), ax, pick=pick, title=f"sigma by position: {where}",
                                dims=self._dims())
        self.position.value = png(fig)

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
