"""UncertaintyExplorer on live canvases (rendered and sent as with a browser attached) while its
layer, channel and tap change: the panels show exactly what a widget built for the selection
shows, every label stays inside its figure under the kept layout, and the pixels a panel keeps
between drawings give the picture a full drawing gives."""
from __future__ import annotations

import numpy as np
import pytest

from pwfn_viz.viz.style import SYMBOL
from pwfn_viz.widgets import UncertaintyExplorer
from pwfn_viz.widgets._draw_cache import label_overflow
from pwfn_viz.widgets._live import Panel

@pytest.fixture(scope="module")
def run(view_run):   # tests/conftest.py: a small digits run
    return view_run


def _live(widget) -> UncertaintyExplorer:
    """Render every panel as the browser's first request does; later updates render and send."""
    for panel in widget.panels:
        panel.canvas.syncing_data_url = False   # what ipympl sets once the frontend is there
        panel.canvas.draw()
    return widget


def _steps(run):
    """Selections in the order a user may make them: (control, value) pairs."""
    shapes = run.meta["tensors"]
    conv = [n for n, s in shapes.items() if len(s) == 4]
    bias = [n for n, s in shapes.items() if len(s) == 1]
    dense = [n for n, s in shapes.items() if len(s) == 2]
    return [("channel", 0), ("channel", 2), ("tap", (0, 0)), ("tap", (1, 1)), ("weight", 3),
            ("layer", bias[0]), ("layer", conv[1]), ("channel", 5), ("tap", (2, 2)), ("channel", 1),
            ("layer", dense[0]), ("channel", 3), ("layer", conv[-1]), ("tap", (1, 0))]


def _walk(run):
    """A live widget moved through :func:`_steps`, yielded after each update."""
    w = _live(UncertaintyExplorer(run))
    for control, value in _steps(run):
        getattr(w, control).value = value
        assert w.error is None
        yield w


def _shown(w) -> dict:
    """What the three panels show: data, limits, scales, labels and titles."""
    s, p, t = w.sigma_mu, w.position, w.trajectory_plot
    points = np.concatenate([np.column_stack(line.get_data()) for line in s.points.values()])
    cbar = p.colorbar
    return {
        "sigma_mu points": points[np.lexsort(points.T[::-1])],
        "sigma_mu frame": (s.ax.get_xlim(), s.ax.get_ylim(), s.ax.get_xlabel(), s.ax.get_ylabel(),
                           s.title.get_text()),
        "position image": np.asarray(p.image.get_array()) if p.image.get_visible() else None,
        "position line": np.column_stack(p.line.get_data()) if p.line.get_visible() else None,
        "position pick": np.column_stack(p.pick_mark.get_data()),
        "position frame": (p.image.get_extent() if p.image.get_visible() else None, p.ax.get_xlim(), p.ax.get_ylim(),
                           p.ax.get_yscale(), p.ax.get_xlabel(), p.ax.get_ylabel(), p.title.get_text()),
        "colour bar": (cbar.ax.get_visible(), p.image.norm.vmin, p.image.norm.vmax, cbar.norm.vmin, cbar.norm.vmax,
                       cbar.ax.get_ylim(), cbar.ax.get_ylabel()) if p.image.get_visible() else cbar.ax.get_visible(),
        "trajectory": (np.column_stack(t.path.get_data()), np.asarray(t.band.get_paths()[0].vertices),
                       t.ax.get_xlim(), t.ax.get_ylim(), list(t.ax.get_xticks()), t.ax.get_ylabel(),
                       t.title.get_text(), t.fixed.get_visible()),
        "labels": (w.selection_label.value, w.weight_label.value, w.weight.value, w.weight.max),
    }


def _fresh(run, w) -> UncertaintyExplorer:
    """A widget built for the selection ``w`` shows (the reference: nothing carried over)."""
    fresh = UncertaintyExplorer(run, layer=w.layer.value)
    fresh.channel.value, fresh.tap.value, fresh.weight.value = w.channel.value, w.tap.value, w.weight.value
    return fresh


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert _plain(a[key]) == _plain(b[key]), key


def _plain(value):
    """Arrays and tuples as nested lists of floats/strings, so == compares every element."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else value.item()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def test_a_selection_change_shows_what_a_fresh_widget_shows(run):
    seen_layers = set()
    for w in _walk(run):
        _assert_same(_shown(w), _shown(_fresh(run, w)))
        seen_layers.add(w.layer.value)
    assert len(seen_layers) == 5   # the walk crossed layers (the colour bar's limits changed)


def test_axis_labels_use_the_symbols(run):
    w = UncertaintyExplorer(run)
    p, t = w.position, w.trajectory_plot
    assert p.colorbar.ax.get_ylabel() == f"{SYMBOL['sigma']} (clamped)"
    assert t.ax.get_ylabel() == SYMBOL["mu"]
    assert r"$\mu \pm \sigma$" in [text.get_text() for text in t.ax.get_legend().get_texts()]
    w.select_layer(next(n for n, s in run.meta["tensors"].items() if len(s) == 1))
    assert p.ax.get_ylabel() == f"{SYMBOL['sigma']} (clamped)"   # the 1-D view's axis
    assert "median sigma" in w.selection_label.value             # an HTML label: words, not mathtext


def _inside(fig, slack_px: float = 0.5) -> bool:
    """Every text of ``fig`` as drawn (matplotlib's tight box: tick labels, axis labels,
    titles, legends) lies inside the figure."""
    box = fig.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans)
    return box.x0 >= -slack_px and box.y0 >= -slack_px and box.x1 <= fig.bbox.width + slack_px \
        and box.y1 <= fig.bbox.height + slack_px


def test_the_kept_layout_cuts_no_label_off(run):
    for w in _walk(run):
        for panel in w.panels:
            assert _inside(panel.fig), (panel.label, w.layer.value, w.channel.value, w.tap.value)


class _Ramp(Panel):
    """A line from 0 to ``top`` with tick labels that widen with it."""
    label = "ramp"

    def build(self):
        self.ax = self.fig.subplots()
        self.ax.set_ylabel("value")
        self.ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:,.4f}")
        self.line, = self.ax.plot([], [])

    def update(self, top):
        self.line.set_data([0, 1], [0, top])
        self.ax.set_ylim(0, top)
        return True


@pytest.mark.parametrize("relayout", [True, False])
def test_a_label_cut_off_by_the_kept_layout_gets_room(relayout):
    panel = _Ramp(4, 3)
    panel.relayout = relayout
    panel.canvas.syncing_data_url = False
    panel.show(1.0)
    panel.canvas.draw()          # constrained layout runs once, then it is kept
    assert _inside(panel.fig)
    first = panel.ax.get_position().bounds
    panel.show(1e6)              # tick labels six digits wider
    panel.canvas.draw()
    if relayout:                 # the axes moved over and every label is inside again
        assert panel.ax.get_position().x0 > first[0] and _inside(panel.fig)
        assert max(label_overflow(panel.fig, panel.canvas.get_renderer())) == 0
    else:                        # the control: the kept layout alone cuts the axis label off
        assert panel.ax.get_position().bounds == first and not _inside(panel.fig)
        assert label_overflow(panel.fig, panel.canvas.get_renderer())[0] > 0


def test_kept_pixels_equal_a_full_drawing(run):
    for w in _walk(run):
        for panel in w.panels:
            kept = np.asarray(panel.canvas.get_renderer().buffer_rgba()).copy()
            for cache in panel.pixel_caches:
                cache.forget()
            panel.canvas.draw()   # every artist drawn in full
            full = np.asarray(panel.canvas.get_renderer().buffer_rgba())
            assert np.array_equal(kept, full), (panel.label, w.layer.value, w.channel.value, w.tap.value)
    hits = {panel.label: sum(c.hits for c in panel.pixel_caches) for panel in w.panels}
    assert min(hits.values()) >= 3, hits   # kept pixels were used in every panel


def test_every_widgets_kept_layout_cuts_no_label_off(run):
    """The layout is kept after the first drawing in every widget: the codebook, layer-error and
    round panels change their ticks with k, delta or the layer, and still cut nothing off."""
    from pwfn_viz.widgets import CompareExplorer, RoundExplorer, WhatIf
    compare, whatif, rounds = CompareExplorer(run), WhatIf(run, accuracy=False), RoundExplorer(run)
    for w in (compare, whatif, rounds):
        _live(w)
    steps = [(compare.k, v) for v in (1, 2, 5, compare.k.max)] + [(compare.init, "linear")] + \
            [(whatif.delta, v) for v in (0.125, 8.0)] + [(whatif.b, v) for v in (1, 16)] + \
            [(whatif.fraction, v) for v in (0.6, 1.0)] + [(rounds.layer, v) for v in list(run.meta["tensors"])[:4]]
    for control, value in steps:
        control.value = value
        for w in (compare, whatif, rounds):
            for panel in w.panels:
                panel.canvas.draw()
                assert _inside(panel.fig), (type(w).__name__, panel.label, control.description, value)
