"""Selections linked across views: a rectangle over one view outlines the same weights in the
others (checked against the stored tensors, weight by weight), and the selection survives a round
change."""
from __future__ import annotations

import numpy as np
import pytest

from pwfn_viz.widgets import RoundExplorer
from pwfn_viz.widgets._data import clamped_sigma, position_of, selection_data, sigma_mu_data, where
from pwfn_viz.widgets._link import positions_in, selection_text, weights_at

@pytest.fixture(scope="module")
def run(view_run):   # tests/conftest.py: a small digits run
    return view_run


def _inside(run, i, x0, x1, y0, y1) -> dict:
    """Brute force: every weight of round ``i`` whose pre-snap mu and clamped sigma lie in the box."""
    rnd, found = run.rounds[i], {}
    for name in run.meta["tensors"]:
        mu = rnd.pre_mu[name].flatten().double().numpy()
        sigma = clamped_sigma(rnd.pre_sigma[name].flatten().double().numpy())
        hit = np.flatnonzero((mu >= x0) & (mu <= x1) & (sigma >= y0) & (sigma <= y1))
        if hit.size:
            found[name] = hit
    return found


def _as_sets(weights: dict) -> dict:
    return {n: set(v.tolist()) for n, v in weights.items()}


def test_weights_and_positions_agree_with_the_one_weight_lookups(run):
    shapes = run.meta["tensors"]
    whole = sigma_mu_data(run, 0)
    rng = np.random.default_rng(0)
    positions = np.sort(rng.choice(whole.mu.size, 300, replace=False))
    weights = weights_at(whole, shapes, positions)
    expected = {}
    for p in positions:
        name, _, flat = where(whole, shapes, int(p))
        expected.setdefault(name, set()).add(flat)
    assert _as_sets(weights) == expected
    assert positions_in(whole, shapes, weights).tolist() == positions.tolist()
    layer = "conv1.weight"
    chosen = np.arange(3, shapes[layer][0] * 9 * shapes[layer][1], 7)       # a strided selection in one layer
    part = selection_data(run, 0, layer, chosen)
    shown = positions_in(part, shapes, weights)
    assert shown.tolist() == sorted(q for q in (position_of(part, shapes, layer, f) for f in expected.get(layer, ()))
                                    if q is not None)
    assert _as_sets(weights_at(part, shapes, shown)) == ({layer: {int(chosen[q]) for q in shown}} if shown.size else {})
    assert selection_text({}) == "no weight selected"
    assert selection_text({"a": np.arange(3), "b": np.arange(2)}, 2) == \
        "5 weights selected (a: 3, b: 2); 2 of them in this view"


def test_round_view_selection_is_kept_across_rounds(run):
    w = RoundExplorer(run, round_index=0)
    d = w.sigma_mu.data
    box = (float(np.quantile(d.mu, 0.2)), float(np.quantile(d.mu, 0.3)), 0.0, float(d.sigma.max()))
    w._select_in_sigma_mu(*box)
    assert _as_sets(w.selection) == _as_sets(_inside(run, 0, *box))
    assert "weights selected" in w.hover_label.value
    w.round_slider.value = 1                                 # the same weights, where they are in round 1
    d1, shapes = w.sigma_mu.data, run.meta["tensors"]
    outlined = w.sigma_mu.selected.get_offsets()
    shown = positions_in(d1, shapes, w.selection)
    assert len(outlined) == sum(len(v) for v in w.selection.values()) == shown.size
    np.testing.assert_array_equal(outlined, np.column_stack([d1.mu[shown], d1.sigma[shown]]))


def test_dashboard_links_the_round_view_and_the_weight_views_both_ways(run):
    dash = run.dashboard()
    shapes = run.meta["tensors"]
    d = dash.rounds.sigma_mu.data
    box = (float(np.quantile(d.mu, 0.4)), float(np.quantile(d.mu, 0.6)), 0.0, float(d.sigma.max()))
    dash.rounds._select_in_sigma_mu(*box)
    expected = _inside(run, 0, *box)
    layer = dash.weights.layer.value
    assert layer in expected                                  # the weight views show a layer holding some
    flat_outlined = dash.weights.sigma_mu.data.flat_index[dash.weights.selected]
    assert set(flat_outlined.tolist()) == set(expected[layer].tolist())
    assert len(dash.weights.position.marks.get_xdata()) == expected[layer].size
    dash.round_slider.value = 1                               # still outlined, in both, at round 1
    assert set(dash.weights.sigma_mu.data.flat_index[dash.weights.selected].tolist()) == set(expected[layer].tolist())
    assert len(dash.rounds.sigma_mu.selected.get_offsets()) == sum(v.size for v in expected.values())
    per_channel = int(np.prod(shapes[layer][1:]))
    dash.weights.channel.value = int(expected[layer][0]) // per_channel   # the weight views' own controls keep it too
    in_channel = dash.weights.sigma_mu.data.flat_index        # the weights of that output channel
    assert set(in_channel[dash.weights.selected].tolist()) == set(expected[layer].tolist()) & set(in_channel.tolist())
    assert 0 < len(dash.weights.position.marks.get_xdata()) == dash.weights.selected.size
    dash.weights.channel.value = dash.weights.channel.options[0][1]   # all channels again
    # and back: the first three cells of the position view's first row, outlined in the round view
    dash.weights._select_in_position(-0.5, 2.4, -0.5, 0.4)
    chosen = dash.weights.sigma_mu.data.flat_index[[0, 1, 2]]
    assert _as_sets(dash.rounds.selection) == {layer: set(chosen.tolist())}
    d1 = dash.rounds.sigma_mu.data
    shown = [position_of(d1, shapes, layer, int(f)) for f in chosen]
    np.testing.assert_array_equal(dash.rounds.sigma_mu.selected.get_offsets(),
                                  np.column_stack([d1.mu[shown], d1.sigma[shown]]))


def test_dashboard_switches_the_weight_views_to_the_selected_layer(run):
    dash = run.dashboard()
    other = [n for n in run.meta["tensors"] if n != dash.weights.layer.value][-1]
    dash.rounds.select_layer(other)
    d = dash.rounds.sigma_mu.data
    dash.rounds._select_in_sigma_mu(float(d.mu.min()) - 1, float(d.mu.max()) + 1, 0.0, float(d.sigma.max()) + 1)
    assert dash.weights.layer.value == other
    assert dash.weights.selected.size == int(np.prod(run.meta["tensors"][other]))


def test_module_doctests():
    import doctest

    from pwfn_viz.widgets import _link
    assert doctest.testmod(_link).failed == 0


def test_saving_keeps_the_zoom_the_pick_and_the_selection(run, tmp_path):
    from matplotlib.figure import Figure
    w = RoundExplorer(run, round_index=1)
    d = w.sigma_mu.data
    box = (float(np.quantile(d.mu, 0.45)), float(np.quantile(d.mu, 0.55)), 0.0, float(d.sigma.max()))
    w._select_in_sigma_mu(*box)
    w.pick_position(int(np.argmax(d.sigma)))
    w.sigma_mu.ax.set_xlim(box[0], box[1])                   # the reader zoomed in
    copy = w.sigma_mu.copy_onto(Figure())
    assert copy.ax.get_xlim() == w.sigma_mu.ax.get_xlim() and copy.ax.get_ylim() == w.sigma_mu.ax.get_ylim()
    for name in ("selected", "picked"):
        np.testing.assert_array_equal(getattr(copy, name).get_offsets(), getattr(w.sigma_mu, name).get_offsets())
        assert len(getattr(copy, name).get_offsets()) > 0
    assert copy.band.get_visible() == w.sigma_mu.band.get_visible()
    np.testing.assert_array_equal(copy.band.get_xy(), w.sigma_mu.band.get_xy())
    assert w.save(tmp_path / "view.png").endswith("view.png")
