"""RoundExplorer: step through the rounds of a run, one layer or the whole network.

A round slider and a layer selector drive linked views: sigma against mu before the round's snap
(with the centres chosen and the band each accepts), the run's timeline with the round marked,
and the greedy steps of the round (plot and table). The label above them reads "round i: x% fixed ...",
and the line below it says whether the sigma shown has learned or is still its initialisation.

    >>> w = RoundExplorer(pwfn_viz.load_run("runs/digits"))    # doctest: +SKIP
    >>> w.round_slider.value = 3          # the label, plots and table follow  # doctest: +SKIP
    >>> w.select_layer("conv2.weight")                          # doctest: +SKIP
"""
from __future__ import annotations

import ipywidgets as widgets

from ..constants import ZERO_BAND_EXPONENT
from ..viz.plots import plot_greedy_steps, plot_timeline
from ..viz.uncertainty import plot_sigma_vs_mu
from ._common import ALL, Explorer, figure, layer_options, png, sigma_learning_html, table_html, unknown_layer

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
    call :meth:`select_layer`, which also takes None for all layers); read ``round_label.value``,
    ``scatter.value`` / ``timeline.value`` / ``steps_plot.value`` (PNG bytes) and
    ``steps_table.value`` (HTML). Problems show in ``message``.
    """

    css_class = "pwfn-round-explorer"

    def __init__(self, run, round_index: int = 0, layer: str | None = None, *, width: float = 5.6):
        super().__init__()
        self.width = width
        self.round_slider = widgets.IntSlider(value=0, min=0, max=0, description="round",
                                              continuous_update=False)
        self.layer = widgets.Dropdown(options=[("all layers", ALL)], value=ALL, description="layer",
                                      layout=widgets.Layout(width="340px"))
        self.round_label = widgets.Label(layout=widgets.Layout(width="100%"))
        self.round_label.add_class("pwfn-round-label")
        self.sigma_learning = widgets.HTML()   # has sigma learned (this round, this layer)?
        self.scatter = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.timeline = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.steps_plot = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.steps_table = widgets.HTML(layout=widgets.Layout(min_width="480px"))
        self._compose(widgets.HBox([self.round_slider, self.layer]), self.round_label, self.sigma_learning,
                      widgets.HBox([self.scatter, self.timeline]),
                      widgets.HTML("<b>greedy steps of this round</b> (centres in the order chosen)"),
                      widgets.HBox([self.steps_plot, self.steps_table]))
        if not self._open_run(run):
            return
        n = len(self.run.rounds)
        self.round_slider.max = n - 1
        self.round_slider.value = round_index % n
        self.layer.options = layer_options(self.run)
        self.round_slider.observe(lambda _: self.update(), names="value")
        self.layer.observe(lambda _: self.update(round_changed=False), names="value")
        self.update()
        if layer is not None:
            self.select_layer(layer)

    def _disable(self):
        self.round_slider.disabled = self.layer.disabled = True

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

    def update(self, round_changed: bool = True) -> None:
        """Redraw for the current round and layer (called by the controls)."""
        if self.run is None or not self.run.rounds:
            return
        i, layer = self.round_slider.value, self.selected_layer
        with self.busy(3 if round_changed else 1) as step:
            step("sigma against mu")
            self.round_label.value = round_label(self.run, i, layer)
            self.sigma_learning.value = sigma_learning_html(self.run, i, layer)
            fig, ax = figure(self.width, 4.0)
            cluster = self.run.config.get("cluster", {})
            zero_band = 2.0 ** -cluster.get("b", ZERO_BAND_EXPONENT) if cluster.get("zero_fix", True) else None
            plot_sigma_vs_mu(self.run, i, ax=ax, layer=layer, zero_band=zero_band)
            self.scatter.value = png(fig)
            if round_changed:
                step("timeline")
                self.timeline.value = png(self._timeline(i))
                step("greedy steps")
                steps = self.run.rounds[i].steps
                cols = [c for c in STEP_COLUMNS if c in steps.columns]
                self.steps_table.value = (table_html(steps[cols], max_rows=1000, height="430px") if len(steps)
                                          else "<i>no greedy steps recorded for this round</i>")
                if len(steps):
                    fig, axes = figure(self.width, 5.0, nrows=3, sharex=True, height_ratios=(1.2, 1, 0.8))
                    plot_greedy_steps(self.run, i, ax=axes)
                    self.steps_plot.value = png(fig)

    def _timeline(self, i: int):
        fig, ax = figure(self.width, 4.0)
        plot_timeline(self.run, ax=ax)
        x = 100 * self.run.rounds[i].fraction
        ax.axvline(x, color="black", lw=1.2, alpha=0.6, zorder=0)
        ax.annotate(f"round {i}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize="small")
        return fig
