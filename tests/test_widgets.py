"""The widgets, driven from Python on a small run record: a control changes, the outputs follow,
and their numbers equal direct calls of the package functions (and the stored round tensors)."""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import shutil

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure
import pytest
import torch
from safetensors.torch import load_file

import pwfn_viz
from pwfn_viz.core.bayes import load_flat_state
from pwfn_viz.core.clustering import ClusterConfig, cluster_round
from pwfn_viz.data.datasets import make_loader
from pwfn_viz.baselines.kmeans import kmeans_quantize, list_inits
from pwfn_viz.constants import SAMPLING_SIGMA_FLOOR
from pwfn_viz.core.metrics import codebook_stats, evaluate
from pwfn_viz.widgets import (CompareExplorer, Dashboard, RoundExplorer, UncertaintyExplorer, WhatIf, select_view,
                              select_weights, side_by_side, weight_trajectory)
from pwfn_viz.widgets._data import (count_scale, fixed_rounds, hover_info, locate, shared_limits, sigma_mu_data,
                                    step_of_weight)
from pwfn_viz.widgets._live import Coalescer, Memo
from pwfn_viz.widgets._panels import MAX_POINTS
from pwfn_viz.widgets.whatif import clamp_fraction

@pytest.fixture(scope="module")
def run_dir(view_run_dir):   # tests/conftest.py: a small digits run
    return view_run_dir


@pytest.fixture(scope="module")
def run(view_run):
    return view_run


@pytest.fixture(scope="module")
def digits():
    return pwfn_viz.create_dataset("digits")


def _interrupted(run_dir, tmp_path, rounds_kept: int):
    """A copy of the run as a crash leaves it: run.json (the commit point) lists ``rounds_kept``
    rounds and says "running"; later round files are gone."""
    out = tmp_path / f"interrupted{rounds_kept}"
    shutil.copytree(run_dir, out)
    meta = json.loads((out / "run.json").read_text())
    meta["rounds"], meta["status"] = meta["rounds"][:rounds_kept], "running"
    (out / "run.json").write_text(json.dumps(meta))
    for r in range(rounds_kept, 2):
        (out / f"round_{r:02d}.safetensors").unlink()
    return out


def _png_shape(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(data), format="png").shape


def _picture(panel) -> bytes:
    """The panel as drawn now (its data onto a fresh figure, as ``save`` does), PNG bytes."""
    fig = Figure(figsize=(panel.width, panel.height), dpi=72)
    panel.copy_onto(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _n_rows(html: str) -> int:
    return html.split("<tbody>")[1].count("<tr")


def _points(panel) -> np.ndarray:
    """(mu, sigma) of every weight drawn as a point in a SigmaMuPanel, sorted."""
    xy = np.concatenate([np.column_stack(line.get_data()) for line in panel.points.values()])
    return xy[np.lexsort(xy.T[::-1])]


def _pre(stored, names, key):
    return np.concatenate([stored[f"{key}/{n}"].double().flatten().numpy() for n in names])


# ----------------------------------------------------------------------------- RoundExplorer

def test_round_explorer_slider_moves_every_panel_to_the_round(run, run_dir):
    w = RoundExplorer(run)
    masks = [load_file(str(run_dir / f"round_{r:02d}.safetensors")) for r in (0, 1)]
    fixed = [sum(int(v.sum()) for k, v in m.items() if k.startswith("fixed/")) for m in masks]
    n_weights = sum(v.numel() for k, v in masks[0].items() if k.startswith("fixed/"))
    assert w.round_label.value.startswith(f"round 0: {100 * fixed[0] / n_weights:.1f}% fixed")
    assert [p.round_shown for p in w.panels] == [0, 0, 0]
    before = [_picture(p) for p in w.panels]
    assert _png_shape(before[0])[0] > 100
    assert _n_rows(w.steps_table.value) == len(run.rounds[0].steps) == run.rounds[0].metrics["n_steps"]

    w.round_slider.value = 1
    assert w.round_label.value.startswith(f"round 1: {100 * fixed[1] / n_weights:.1f}% fixed")
    assert "100.0% fixed" in w.round_label.value
    assert [p.round_shown for p in w.panels] == [1, 1, 1]     # every panel switched, together
    names = list(run.meta["tensors"])
    mu, sigma = _pre(masks[1], names, "pre/mu"), _pre(masks[1], names, "pre/sigma")
    expected = set(zip(mu, np.maximum(sigma, SAMPLING_SIGMA_FLOOR)))      # the clamped sigma
    drawn = _points(w.sigma_mu)
    counts = w.sigma_mu.data.counts            # up to MAX_POINTS of each status drawn, every one from the round
    assert sum(counts) == len(mu) and len(drawn) == sum(min(c, MAX_POINTS) for c in counts)
    assert all((a, b) in expected for a, b in drawn)
    assert w.timeline.marker.get_xdata()[0] == 100 * run.rounds[1].fraction
    assert w.steps.data.steps.equals(run.rounds[1].steps)
    assert _n_rows(w.steps_table.value) == len(run.rounds[1].steps) == run.rounds[1].metrics["n_steps"]
    assert all(_picture(p) != b for p, b in zip(w.panels, before))
    assert w.error is None and w.message_text == ""

    w.round_slider.value = 0   # back: the same pictures again (deterministic rendering)
    assert [_picture(p) for p in w.panels] == before


def test_round_explorer_layer_selector(run, run_dir):
    w = RoundExplorer(run, round_index=0)
    scatter, timeline = _picture(w.sigma_mu), _picture(w.timeline)
    assert w.select_layer("conv2.weight")
    stored = load_file(str(run_dir / "round_00.safetensors"))
    fixed = stored["fixed/conv2.weight"].float().mean().item()
    assert w.round_label.value.endswith(f"conv2.weight: {100 * fixed:.1f}% fixed")
    assert w.sigma_mu.data.names == ["conv2.weight"] and w.sigma_mu.data.mu.size == 32 * 16 * 9
    assert _picture(w.sigma_mu) != scatter and _picture(w.timeline) == timeline   # the timeline is per run

    assert not w.select_layer("conv9.weight")
    assert "layer 'conv9.weight' does not exist" in w.message_text and "conv2.weight" in w.message_text
    assert w.layer.value == "conv2.weight"                                 # the view stays
    assert w.select_layer(None) and w.layer.value == "all"                 # a good choice clears it
    assert w.message_text == ""
    assert "does not exist" in RoundExplorer(run, layer="nope").message_text


def test_round_explorer_bad_inputs(run_dir, tmp_path):
    w = RoundExplorer(tmp_path / "nothing-here")
    assert "is not a pwfn_viz run directory" in w.message_text and w.round_slider.disabled
    w = RoundExplorer(str(_interrupted(run_dir, tmp_path, 1)))
    assert "incomplete run: 1 of 2 rounds recorded" in w.message_text and "--resume" in w.message_text
    assert w.round_slider.max == 0 and w.round_label.value.startswith("round 0: 50.0% fixed")
    assert _png_shape(_picture(w.sigma_mu))[0] > 100
    w = RoundExplorer(_interrupted(run_dir, tmp_path, 0))
    assert "0 of 2 rounds recorded (no round yet" in w.message_text and w.round_slider.disabled
    assert w.sigma_mu is None and w.panels == []


# ----------------------------------------------------------------------------- trajectories and selections

def test_select_weights_against_brute_force():
    shape = (4, 3, 2, 3)
    flat = np.arange(np.prod(shape)).reshape(shape)
    taps = [None] + list(itertools.product(range(2), range(3)))
    for channel, tap in itertools.product([None, 0, 2, 3], taps):
        expected = [int(flat[i]) for i in np.ndindex(*shape)
                    if (channel is None or i[0] == channel) and (tap is None or i[2:] == tap)]
        got = select_weights(shape, channel, tap)
        assert got.tolist() == expected
        t = torch.randn(shape)
        assert torch.equal(select_view(t, channel, tap).flatten(), t.flatten()[got])
    assert select_weights((5,), 2).tolist() == [2]
    assert select_weights((2, 3), None, None).tolist() == list(range(6))
    with pytest.raises(ValueError, match="channel 4 out of range"):
        select_weights(shape, 4)
    with pytest.raises(ValueError, match="kernel taps are none"):
        select_weights((3, 2), None, (0, 0))
    with pytest.raises(ValueError, match="out of range for kernel shape"):
        select_weights(shape, None, (2, 0))


def test_weight_trajectory_matches_stored_rounds(run, run_dir):
    stored = [load_file(str(run_dir / f"round_{r:02d}.safetensors")) for r in range(2)]
    start = load_file(str(run_dir / "start.safetensors"))
    rng = np.random.default_rng(0)
    for name, shape in run.meta["tensors"].items():
        for i in rng.choice(int(np.prod(shape)), size=3, replace=False):
            traj = weight_trajectory(run, name, int(i))
            assert traj.index == tuple(int(v) for v in np.unravel_index(int(i), shape))
            assert weight_trajectory(run, name, traj.index).table.equals(traj.table)
            assert traj.start_mu == start[f"mu/{name}"].flatten()[i].item()
            assert traj.start_sigma == start[f"sigma/{name}"].flatten()[i].item()
            first = None
            for r, row in traj.table.iterrows():
                s = stored[r]
                for col, key in (("pre_mu", "pre/mu/"), ("pre_sigma", "pre/sigma/"), ("mu", "mu/"),
                                 ("sigma", "sigma/")):
                    assert row[col] == s[key + name].flatten()[i].item()
                assert row["pre_fixed"] == bool(s["pre/fixed/" + name].flatten()[i])
                assert row["fixed"] == bool(s["fixed/" + name].flatten()[i])
                if row["fixed"] and first is None:
                    first = r
            assert traj.fixed_round == first == (0 if traj.table["fixed"].iloc[0] else 1)   # all fixed by the end
            value = stored[first]["mu/" + name].flatten()[i].item()
            assert traj.fixed_value == value
            assert value in set(run.rounds[first].steps["centre"])        # it sits on a chosen centre
    with pytest.raises(ValueError, match="does not exist"):
        weight_trajectory(run, "nope", 0)
    with pytest.raises(IndexError, match="out of range"):
        weight_trajectory(run, "conv1.bias", 16)


# ----------------------------------------------------------------------------- UncertaintyExplorer

def test_uncertainty_explorer_selection_and_trajectory(run):
    w = UncertaintyExplorer(run, layer="conv2.weight")
    assert w.layer.value == "conv2.weight" and w.weight.max == 32 * 16 * 9 - 1
    assert w.selection_label.value.startswith("conv2.weight[:, :, :, :]: 4608 weights, round 1")
    scatter, position, traj_png = (_picture(p) for p in w.panels)

    w.channel.value = 3
    w.tap.value = (1, 1)
    assert w.selection_label.value.startswith("conv2.weight[3, :, 1, 1]: 16 weights")
    assert w.weight.max == 15
    assert _picture(w.sigma_mu) != scatter and _picture(w.position) != position
    assert w.position.data.grid.shape == (16,)                         # in channels at one tap: 1-D
    w.weight.value = 5
    assert w.trajectory.name == "conv2.weight" and w.trajectory.index == (3, 5, 1, 1)
    expected = weight_trajectory(run, "conv2.weight", (3, 5, 1, 1))
    assert w.trajectory.table.equals(expected.table) and _picture(w.trajectory_plot) != traj_png
    assert w.weight_label.value == expected.describe()

    scatter = _picture(w.sigma_mu)
    w.round_slider.value = 0
    assert "round 0" in w.selection_label.value and _picture(w.sigma_mu) != scatter
    assert [p.round_shown for p in w.panels] == [0, 0, 0]

    w.layer.value = "conv1.bias"           # a bias: no channels or taps to pick
    assert w.channel.disabled and w.tap.disabled and w.weight.max == 15
    assert not w.select_layer("conv7.weight")
    assert "layer 'conv7.weight' does not exist" in w.message_text and w.layer.value == "conv1.bias"
    assert w.error is not None


def test_uncertainty_explorer_bad_inputs(run_dir, tmp_path):
    w = UncertaintyExplorer(_interrupted(run_dir, tmp_path, 1), layer="fc.weight")
    assert "incomplete run" in w.message_text and w.round_slider.max == 0
    assert list(w.trajectory.table["round"]) == [0]
    w = UncertaintyExplorer(run_dir, layer="nope")
    assert "layer 'nope' does not exist" in w.message_text
    assert "not a pwfn_viz run directory" in UncertaintyExplorer(tmp_path).message_text


# ----------------------------------------------------------------------------- CompareExplorer

def _kmeans_reference(run, k, init, digits):
    names = list(run.meta["tensors"])
    model = run.plain_model_at(None)
    params = dict(model.named_parameters())
    start = {n: params[n].detach().clone() for n in names}
    q = kmeans_quantize(start, k, scope="global", init=init, seed=0).quantized
    with torch.no_grad():
        for n in names:
            params[n].copy_(q[n])
    values = torch.cat([q[n].flatten() for n in names])
    return evaluate(model, make_loader(digits.test, 97)), codebook_stats(values)


def test_compare_explorer_numbers_follow_k_and_init(run, digits):
    w = CompareExplorer(run, data=digits)
    table = w.comparison.table.set_index("method")
    final = run.rounds[-1].metrics
    assert w.k.value == final["unique"]
    assert table.loc["pwfn", "top1"] == final["top1_after"] and table.loc["pwfn", "unique"] == final["unique"]
    html, books, errors = w.table.value, _picture(w.codebooks), _picture(w.layer_error)

    w.k.value = 6
    row = w.comparison.table.set_index("method").loc["kmeans@6"]
    acc, stats = _kmeans_reference(run, 6, "kmeans++", digits)
    assert row["top1"] == acc["top1"] and row["unique"] == stats["unique"] == 6
    assert row["entropy"] == pytest.approx(stats["entropy"], abs=1e-12)
    assert w.table.value != html and _picture(w.codebooks) != books and _picture(w.layer_error) != errors
    values, counts = w.codebooks.data.series["kmeans@6"]
    assert len(values) == 6 and counts.sum() == run.meta["n_converted"]
    assert set(w.comparison.layers["method"]) == {"pwfn", "kmeans@6"}

    books = _picture(w.codebooks)
    w.init.value = "linear"
    row = w.comparison.table.set_index("method").loc["kmeans@6"]
    acc, stats = _kmeans_reference(run, 6, "linear", digits)
    assert row["top1"] == acc["top1"] and row["entropy"] == pytest.approx(stats["entropy"], abs=1e-12)
    assert _picture(w.codebooks) != books
    assert set(w.init.options) == set(list_inits())


def test_compare_explorer_bad_inputs(run_dir, tmp_path, digits):
    w = CompareExplorer(_interrupted(run_dir, tmp_path, 1), data=digits)
    assert "incomplete run" in w.message_text and "last recorded round" in w.message_text
    assert w.comparison.table.set_index("method").loc["pwfn", "unique"] == \
        pwfn_viz.load_run(run_dir).rounds[0].metrics["unique"]
    w = CompareExplorer(_interrupted(run_dir, tmp_path, 0), data=digits)
    assert "nothing to compare" in w.message_text and w.k.disabled
    w = CompareExplorer(run_dir, init="median", data=digits)
    assert "unknown k-means init 'median'" in w.message_text and w.init.value == "kmeans++"


# ----------------------------------------------------------------------------- WhatIf

def test_whatif_defaults_reproduce_the_recorded_round(run, digits):
    for r in (0, 1):
        w = WhatIf(run, round_index=r, data=digits)
        m = run.rounds[r].metrics
        for key in ("n_fixed", "unique", "unique_nonzero", "n_centres", "n_steps"):
            assert w.stats[key] == m[key], key
        assert w.stats["entropy"] == pytest.approx(m["entropy"], abs=1e-12)
        assert w.stats["top1"] == m["top1_after"]


def test_whatif_numbers_equal_direct_calls(run, digits):
    w = WhatIf(run, round_index=-1, data=digits)
    table, plot, bands = w.table.value, _picture(w.plot), _picture(w.bands)
    w.set(delta=2.0, b=5, fraction=0.7)
    mu, sigma, _ = run.rounds[-1].flat("pre")
    config = ClusterConfig(**{**run.config["cluster"], "delta": 2.0, "b": 5})
    result = cluster_round(mu, sigma, 0.7, config=config, round_index=1)
    stats = codebook_stats(result.mu)
    for key in stats:
        assert w.stats[key] == stats[key], key
    assert w.stats["n_fixed"] == int(result.fixed_mask.sum()) == 10737   # ceil(0.7 * 15338)
    assert torch.equal(w.result.mu, result.mu)
    model = run.model_at(1)
    load_flat_state(model, result.mu, result.sigma, result.fixed_mask)
    assert w.stats["top1"] == evaluate(model, make_loader(digits.test, 64))["top1"]
    assert w.table.value != table and _picture(w.plot) != plot and _picture(w.bands) != bands

    w.delta.value = 0.5                        # one slider: one update with that value
    direct = codebook_stats(cluster_round(mu, sigma, 0.7, config=ClusterConfig(
        **{**run.config["cluster"], "delta": 0.5, "b": 5})).mu)
    assert w.stats["unique"] == direct["unique"] and w.stats["entropy"] == direct["entropy"]
    w.accuracy.value = False
    assert "top1" not in w.stats and w.error is None
    shown = w.bands.data
    w.plots.value = False                      # no drawing: the numbers still follow, the panels hide
    assert w.plot_box.layout.display == "none"
    w.fraction.value = 0.9
    assert w.stats["n_fixed"] == 13805 and w.bands.data is shown   # ceil(0.9 * 15338)
    w.plots.value = True                       # back: drawn for the current settings
    assert w.plot_box.layout.display == "flex" and w.bands.data.counts[2] == 15338 - 13805


def test_whatif_bad_inputs(run_dir, tmp_path, digits):
    w = WhatIf(_interrupted(run_dir, tmp_path, 1), data=digits)
    assert "incomplete run" in w.message_text
    assert "re-clustering the pre-snap mu and sigma of round 0" in w.round_label.value
    assert w.stats["unique"] == pwfn_viz.load_run(run_dir).rounds[0].metrics["unique"]
    w = WhatIf(_interrupted(run_dir, tmp_path, 0))
    assert "nothing to re-cluster" in w.message_text and w.delta.disabled
    assert "round 5 not recorded" in WhatIf(run_dir, round_index=5).message_text


# ----------------------------------------------------------------------------- live views: cache, coalescing

def test_memo_computes_each_key_once():
    memo, calls = Memo(size=2), []
    compute = lambda v: lambda: calls.append(v) or v  # noqa: E731
    assert memo.get("a", compute(1)) == 1 and memo.get("a", compute(9)) == 1
    memo.get("b", compute(2)), memo.get("c", compute(3))     # "a" is the oldest: dropped
    assert memo.get("a", compute(4)) == 4 and calls == [1, 2, 3, 4] and memo.hits == 1


def test_round_explorer_caches_rounds_and_layers(run):
    w = RoundExplorer(run)
    w.round_slider.value = 1
    data, misses = w.sigma_mu.data, w.memo.misses
    w.round_slider.value = 0
    w.round_slider.value = 1                   # back to a round shown before: nothing recomputed
    assert w.memo.misses == misses and w.sigma_mu.data is data
    w.select_layer("fc.weight")
    assert w.memo.misses > misses
    misses = w.memo.misses
    w.select_layer(None)
    w.select_layer("fc.weight")
    assert w.memo.misses == misses


def test_coalescer_runs_once_for_a_burst_with_the_latest_value():
    state, seen = {"v": 0}, []

    async def burst():
        c = Coalescer(lambda: seen.append(state["v"]), delay=0.01)
        for v in range(1, 6):                  # five changes before the kernel gets to run the update
            state["v"] = v
            c.request(deferred=True)
        assert c.pending and seen == []
        await asyncio.sleep(0.05)
        return c

    c = asyncio.run(burst())
    assert seen == [5] and (c.requests, c.runs) == (5, 1)
    c.request()                                # from Python (no event loop): at once
    assert seen == [5, 5] and not c.pending


def test_frontend_slider_moves_are_coalesced_in_a_widget(run):
    w = RoundExplorer(run)
    updates = w.updates

    async def frontend():
        for v in (1, 0, 1):                    # as three browser messages: ipywidgets' set_state
            w.round_slider.set_state({"value": v})
        assert w.updates == updates            # deferred: nothing drawn yet
        await asyncio.sleep(0.2)

    asyncio.run(frontend())
    assert w.updates == updates + 1 and [p.round_shown for p in w.panels] == [1, 1, 1]
    assert w.round_label.value.startswith("round 1:")


def test_idle_kernel_prepares_the_next_round(run):
    w = RoundExplorer(run)
    assert ("sigma_mu", 1, None) not in w.memo

    async def frontend():
        w._updater.request(deferred=True)      # an update asked for by the browser
        await asyncio.sleep(0.1)
        assert ("sigma_mu", 1, None) not in w.memo   # not while the user may still be moving
        await asyncio.sleep(0.6)

    asyncio.run(frontend())
    assert ("sigma_mu", 1, None) in w.memo and w.round_slider.value == 0


# ----------------------------------------------------------------------------- hover, pick, select

def test_hover_info_against_the_stored_tensors(run, run_dir):
    stored = [load_file(str(run_dir / f"round_{r:02d}.safetensors")) for r in (0, 1)]
    names, shapes = list(run.meta["tensors"]), run.meta["tensors"]
    first = fixed_rounds(run)
    for r in (0, 1):
        data = sigma_mu_data(run, r, None)
        for position in (0, 150, 4000, 15337):
            # by hand: walk the tensors in network order
            offset = 0
            for n in names:
                size = int(np.prod(shapes[n]))
                if position < offset + size:
                    break
                offset += size
            flat = position - offset
            info = hover_info(run, data, position)
            assert info["tensor"] == n and info["index"] == tuple(np.unravel_index(flat, shapes[n]))
            assert locate(names, shapes, position) == (n, info["index"], flat)
            s = stored[r]
            assert info["mu"] == s[f"pre/mu/{n}"].flatten()[flat].item()
            assert info["sigma"] == max(s[f"pre/sigma/{n}"].flatten()[flat].item(), 2.0 ** -30)
            is_fixed = bool(s[f"fixed/{n}"].flatten()[flat])
            assert info["centre"] == (s[f"mu/{n}"].flatten()[flat].item() if is_fixed else None)
            rounds_fixed = [k for k in (0, 1) if bool(stored[k][f"fixed/{n}"].flatten()[flat])]
            assert info["fixed_round"] == (rounds_fixed[0] if rounds_fixed else None)
            assert int(first[n].flatten()[flat]) == (rounds_fixed[0] if rounds_fixed else -1)
            step = step_of_weight(data, position)
            if step is not None:
                assert data.centres[step] == info["centre"]


def test_hover_and_click_through_matplotlib_events(run):
    from matplotlib.backend_bases import MouseEvent
    w = RoundExplorer(run, round_index=1)
    panel = w.sigma_mu
    panel.fig.canvas.draw()                    # positions on screen need a drawn figure
    i = int(panel.drawn[np.argmax(panel.data.sigma[panel.drawn])])   # the top of the cloud: alone
    x, y = panel.ax.transData.transform((panel.data.mu[i], panel.data.sigma[i]))
    MouseEvent("motion_notify_event", panel.canvas, x, y)._process()
    info = w.describe(i)
    assert f"{info['tensor']}[{', '.join(map(str, info['index']))}]" in w.hover_label.value
    assert panel.hovered.get_offsets().tolist() == [[panel.data.mu[i], panel.data.sigma[i]]]
    MouseEvent("button_press_event", panel.canvas, x, y, button=1)._process()
    assert w.picked == (info["tensor"], locate(panel.data.names, run.meta["tensors"], i)[2])
    assert "picked" in w.hover_label.value
    w.round_slider.value = 0                   # the pick follows the weight to another round
    assert panel.picked.get_offsets().tolist() == [[panel.data.mu[i], panel.data.sigma[i]]]


def test_selection_outlines_the_same_weights_in_both_views(run):
    w = UncertaintyExplorer(run, layer="conv1.weight")
    d = w.sigma_mu.data
    inside = w.sigma_mu.inside(float(d.mu.min()), float(np.median(d.mu)), 0, float(d.sigma.max()))
    w._select_in_sigma_mu(float(d.mu.min()), float(np.median(d.mu)), 0, float(d.sigma.max()))
    assert inside.size > 0 and np.array_equal(w.selected, inside)
    assert len(w.position.marks.get_xdata()) == inside.size           # outlined in the position view
    w._select_in_position(-0.5, 2.4, -0.5, 0.4)                       # the first three cells of row 0
    assert w.selected.tolist() == [0, 1, 2]
    assert w.sigma_mu.selected.get_offsets().tolist() == [[d.mu[k], d.sigma[k]] for k in (0, 1, 2)]


# ----------------------------------------------------------------------------- honest scales

def test_scales_follow_the_values():
    assert count_scale([1, 2, 2, 1]) == "linear" and count_scale([1, 5000]) == "log"
    assert count_scale([150, 200]) == "linear"


def test_limits_are_shared_by_the_rounds(run):
    (x0, x1), (y0, y1) = shared_limits(run, None)
    for r in (0, 1):
        d = sigma_mu_data(run, r)
        assert x0 < d.mu.min() and d.mu.max() < x1 and y0 == 0 and d.sigma.max() < y1
        assert d.sigma.min() >= SAMPLING_SIGMA_FLOOR                  # the clamped sigma
    w = RoundExplorer(run)
    frame = (w.sigma_mu.ax.get_xlim(), w.sigma_mu.ax.get_ylim())
    w.round_slider.value = 1
    assert (w.sigma_mu.ax.get_xlim(), w.sigma_mu.ax.get_ylim()) == frame
    w = UncertaintyExplorer(run, layer="conv2.weight")
    norm = w.position.image.norm
    w.round_slider.value = 0
    assert (w.position.image.norm.vmin, w.position.image.norm.vmax) == (norm.vmin, norm.vmax)


# ----------------------------------------------------------------------------- WhatIf's fixes

def test_whatif_refuses_to_free_weights_and_draws_at_display_size(run, digits):
    w = WhatIf(run, round_index=-1, data=digits, accuracy=False)
    assert w.already == 0.5
    w.fraction.value = 0.2                     # below the half fixed before round 1
    already = sum(int(v.sum()) for v in run.rounds[-1].pre_fixed.values())
    assert w.stats["n_fixed"] == already                 # clamped to the round's start: nothing freed
    assert "below the 0.5 fixed before this round" in w.message_text and "never freed" in w.message_text
    assert clamp_fraction(0.7, 0.5) == (0.7, "")
    for panel in w.panels:                     # an ipympl canvas shows the figure at its pixel size
        assert panel.canvas.resizable is False and panel.canvas.layout.width is None
        assert tuple(panel.fig.get_size_inches()) == (panel.width, panel.height)


# ----------------------------------------------------------------------------- save, dashboard

@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_every_widget_saves_its_view(run, digits, tmp_path, suffix, magic):
    for w in (RoundExplorer(run), UncertaintyExplorer(run), WhatIf(run, data=digits, accuracy=False),
              CompareExplorer(run, data=digits), Dashboard(run), side_by_side(run, run)):
        path = tmp_path / f"{type(w).__name__}{suffix}"
        assert w.save(path) == str(path)
        assert path.read_bytes().startswith(magic), type(w).__name__
    with pytest.raises(ValueError, match="pdf, .svg or .png"):
        w.save(tmp_path / "view.jpg")


def test_dashboard_one_slider_drives_every_panel(run):
    d = run.dashboard()
    assert isinstance(d, Dashboard) and d.play.max == d.round_slider.max == 1
    d.round_slider.value = 1
    assert [p.round_shown for p in d.panels] == [1] * 6
    assert d.rounds.round_label.value.startswith("round 1:") and "round 1" in d.weights.selection_label.value
    d.rounds.pick_position(20)                 # a weight clicked in the round view is followed below
    name, _, flat = locate(list(run.meta["tensors"]), run.meta["tensors"], 20)
    assert (d.weights.trajectory.name, d.weights.trajectory.flat_index) == (name, flat)
    s = side_by_side(run, run)
    s.round_slider.value = 1
    assert [p.round_shown for p in s.panels] == [1] * 4
    assert s.sigma_mu[0].ax.get_xlim() == s.sigma_mu[1].ax.get_xlim()
