"""The dashboard (every round view of a run under one round slider with a Play button) and
:func:`side_by_side` (two runs under one slider: PWFN against WFN, two seeds, two deltas).

``run.dashboard()`` opens the first: the record layer cannot import the widgets (they sit above
it), so ``pwfn_viz/__init__.py`` gives :class:`~pwfn_viz.record.rundir.Run` a hook that looks the
view up in :data:`VIEWS` (see docs/architecture.md).

    >>> run.dashboard()                        # doctest: +SKIP
    >>> side_by_side(pwfn_run, wfn_run)        # doctest: +SKIP
"""
from __future__ import annotations

from types import SimpleNamespace

import ipywidgets as widgets

from ..registry import Registry
from ._common import Explorer, as_run, row
from ._data import fixed_rounds, hover_info, sigma_mu_data
from ._interact import Hover
from ._link import positions_in
from ._live import Coalescer, Memo, from_frontend, redraw
from ._panels import SigmaMuPanel, TimelinePanel
from .round_explorer import RoundExplorer, round_label
from .uncertainty_explorer import UncertaintyExplorer

__all__ = ["Dashboard", "SideBySide", "side_by_side", "VIEWS", "round_controls"]

VIEWS = Registry("view", hint="views come from pwfn_viz.widgets (ipywidgets and ipympl)")


def round_controls(n_rounds: int, value: int = 0, interval_ms: int = 1500):
    """A round slider and a Play button linked in the browser (``jslink``: playing needs no kernel
    round trip; the slider's changes then reach the kernel, coalesced)."""
    slider = widgets.IntSlider(value=value, min=0, max=max(0, n_rounds - 1), description="round",
                               continuous_update=False)
    play = widgets.Play(value=value, min=0, max=max(0, n_rounds - 1), step=1, interval=interval_ms,
                        description="play the rounds")
    play.add_class("pwfn-play")
    widgets.jslink((play, "value"), (slider, "value"))
    return slider, play


@VIEWS.register("dashboard")
class Dashboard(Explorer):
    """One round slider (with Play) drives the round views (sigma against mu, timeline, greedy
    steps) and the weight views (one layer's sigma by position, a weight's trajectory): every
    panel is computed first, then all change together. A weight clicked in the round view is
    followed in the weight views too. Weights selected with a rectangle in any sigma-against-mu or
    position view are outlined in the others, and stay outlined as the rounds, layers, channels and
    taps change (the weight views switch to the layer holding most of them when theirs holds none).
    The rows wrap in a narrow window.

    ``rounds`` and ``weights`` are the :class:`RoundExplorer` and :class:`UncertaintyExplorer`
    inside (their layer and weight controls stay theirs)."""

    css_class = "pwfn-dashboard"

    def __init__(self, run, round_index: int = 0, *, width: float = 5.0, interval_ms: int = 1500):
        super().__init__()
        self.run = as_run(run)
        n = len(self.run.rounds)
        self.round_slider, self.play = round_controls(n, round_index % max(n, 1), interval_ms)
        self.rounds = RoundExplorer(self.run, round_index, width=width, round_slider=self.round_slider)
        self.weights = UncertaintyExplorer(self.run, round_index=round_index, width=width,
                                           round_slider=self.round_slider)
        self.panels = self.rounds.panels + self.weights.panels
        self._updater = Coalescer(self.update, idle=lambda: self.rounds.prefetch() or self.weights.prefetch())
        self._compose([self.play, self.round_slider], self.rounds, self.weights)
        if not self.run.rounds:
            self.round_slider.disabled = self.play.disabled = True
            return
        self.round_slider.observe(lambda c: self._updater.request(deferred=from_frontend(c)), names="value")
        self.rounds.pick_weight = self._pick_both(self.rounds.pick_weight)
        self.rounds.on_select = self._selected_in_rounds
        self.weights.on_select = self._selected_in_weights

    def _selected_in_rounds(self, weights: dict) -> None:
        """A rectangle in the round view: the same weights outlined in the weight views."""
        self.weights.linked_selection = weights
        if weights and self.weights.layer.value not in weights:
            layer = max(weights, key=lambda name: len(weights[name]))
            self.weights.follow(layer, int(weights[layer][0]))
        self.weights.highlight(positions_in(self.weights.sigma_mu.data, self.run.meta["tensors"], weights))

    def _selected_in_weights(self, weights: dict) -> None:
        """A rectangle in a weight view (outlined there already): kept, and outlined in the round view."""
        self.weights.linked_selection = weights
        self.rounds.select_weights(weights)

    def _pick_both(self, pick):
        def both(name, flat):
            pick(name, flat)
            self.weights.follow(name, flat)
        return both

    def update(self) -> None:
        """Move every panel to the slider's round: compute all, then change all, then draw."""
        if not self.run.rounds:
            return
        i = self.round_slider.value
        with self.busy() as step:
            step(f"round {i}")
            first = self.rounds.prepare(i, self.rounds.selected_layer)
            second = self.weights.prepare(i)
            self.rounds.apply(first)
            self.weights.apply(second)
            redraw(self.panels)


@VIEWS.register("side_by_side")
class SideBySide(Explorer):
    """Two runs under one round slider (with Play): for each, the round label, sigma against mu
    (the same axis limits for both, so the clouds compare) and its timeline. Rounds beyond the
    shorter run are not offered."""

    css_class = "pwfn-side-by-side"

    def __init__(self, run_a, run_b, round_index: int = 0, *, width: float = 5.0, names=None):
        super().__init__()
        self.runs = [as_run(run_a), as_run(run_b)]
        self.run = self.runs[0]
        self.names = list(names) if names else [self._name(r) for r in self.runs]
        n = min(len(r.rounds) for r in self.runs)
        self.round_slider, self.play = round_controls(n, round_index % max(n, 1))
        self.memo = Memo()
        self.labels = [widgets.HTML() for _ in self.runs]
        self.hover_label = widgets.HTML("<i>hover a weight</i>")
        self.hover_label.add_class("pwfn-hover")
        self.sigma_mu = [SigmaMuPanel(width, 3.9) for _ in self.runs]
        self.timelines = [TimelinePanel(width, 3.4, run=r) for r in self.runs]
        self.panels = [*self.sigma_mu, *self.timelines]
        columns = [widgets.VBox([label, s.canvas, t.canvas], layout=widgets.Layout(flex="0 1 auto"))
                   for label, s, t in zip(self.labels, self.sigma_mu, self.timelines)]
        self._compose([self.play, self.round_slider], self.hover_label, row(*columns))
        if n == 0:
            self.round_slider.disabled = self.play.disabled = True
            return
        self._updater = Coalescer(self.update)
        self.round_slider.observe(lambda c: self._updater.request(deferred=from_frontend(c)), names="value")
        self.hovers = [Hover(p, self._describer(k), self.hover_label) for k, p in enumerate(self.sigma_mu)]
        self.update()

    @staticmethod
    def _name(run) -> str:
        cfg = run.config
        delta = cfg.get("cluster", {}).get("delta")
        return f"{run.path.name}: {cfg.get('method', 'pwfn')}, seed {cfg.get('seed', 0)}, delta {delta}"

    def _describer(self, k):
        def describe(position):
            run = self.runs[k]
            return hover_info(run, self.sigma_mu[k].data, position,
                              self.memo.get(("fixed_rounds", k), lambda: fixed_rounds(run)))
        return describe

    def update(self) -> None:
        i = self.round_slider.value
        with self.busy() as step:
            step(f"round {i}")
            data = [self.memo.get(("sm", k, i), lambda r=r: sigma_mu_data(r, i)) for k, r in enumerate(self.runs)]
            labels = [self.memo.get(("label", k, i), lambda r=r: round_label(r, i)) for k, r in enumerate(self.runs)]
            for k, (d, label) in enumerate(zip(data, labels)):
                self.labels[k].value = f"<b>{self.names[k]}</b><br>{label}"
                self.sigma_mu[k].show(d)
                rnd = self.runs[k].rounds[i]
                self.timelines[k].show(SimpleNamespace(round_index=rnd.index, fraction=rnd.fraction))
            # one scale for both: the union of their ranges
            xs = [p.ax.get_xlim() for p in self.sigma_mu]
            ys = [p.ax.get_ylim() for p in self.sigma_mu]
            for p in self.sigma_mu:
                p.ax.set_xlim(min(x[0] for x in xs), max(x[1] for x in xs))
                p.ax.set_ylim(0, max(y[1] for y in ys))
                p.top = max(y[1] for y in ys)
            redraw(self.panels)


def side_by_side(run_a, run_b, round_index: int = 0, **options) -> SideBySide:
    """Two runs side by side under one round slider (PWFN against WFN, two seeds, two deltas).

    >>> side_by_side(pwfn_viz.load_run("runs/pwfn"), pwfn_viz.load_run("runs/wfn"))   # doctest: +SKIP
    """
    return SideBySide(run_a, run_b, round_index, **options)
