"""The widgets, driven from Python on a small run record: a control changes, the outputs follow,
and their numbers equal direct calls of the package functions (and the stored round tensors)."""
from __future__ import annotations

import io
import itertools
import json
import shutil

import matplotlib.image
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pwfn_viz
from pwfn_viz.core.bayes import load_flat_state
from pwfn_viz.core.clustering import ClusterConfig, cluster_round
from pwfn_viz.data.datasets import make_loader
from pwfn_viz.baselines.kmeans import kmeans_quantize, list_inits
from pwfn_viz.core.metrics import codebook_stats, evaluate
from pwfn_viz.widgets import (CompareExplorer, RoundExplorer, UncertaintyExplorer, WhatIf, select_view,
                              select_weights, weight_trajectory)

CONFIG = dict(model="digits_cnn", pretrain_epochs=2, first_round_epochs=0.1, epochs_per_round=0.2,
              fractions=(0.5, 1.0), threads=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("widgets") / "run"
    pwfn_viz.run(pwfn_viz.RunConfig(**CONFIG), out_dir=out, progress=False, verbose=False)
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    return pwfn_viz.load_run(run_dir)


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


def _n_rows(html: str) -> int:
    return html.split("<tbody>")[1].count("<tr")


# ----------------------------------------------------------------------------- RoundExplorer

def test_round_explorer_slider_changes_label_plots_and_steps(run, run_dir):
    w = RoundExplorer(run)
    masks = [load_file(str(run_dir / f"round_{r:02d}.safetensors")) for r in (0, 1)]
    fixed = [sum(int(v.sum()) for k, v in m.items() if k.startswith("fixed/")) for m in masks]
    n_weights = sum(v.numel() for k, v in masks[0].items() if k.startswith("fixed/"))
    assert w.round_label.value.startswith(f"round 0: {100 * fixed[0] / n_weights:.1f}% fixed")
    before = (w.scatter.value, w.timeline.value, w.steps_table.value, w.steps_plot.value)
    assert _png_shape(before[0])[0] > 100 and _png_shape(before[1])[0] > 100
    assert _n_rows(before[2]) == len(run.rounds[0].steps) == run.rounds[0].metrics["n_steps"]

    w.round_slider.value = 1
    assert w.round_label.value.startswith(f"round 1: {100 * fixed[1] / n_weights:.1f}% fixed")
    assert "100.0% fixed" in w.round_label.value
    assert w.scatter.value != before[0] and w.timeline.value != before[1]
    assert w.steps_table.value != before[2] and w.steps_plot.value != before[3]
    assert _n_rows(w.steps_table.value) == len(run.rounds[1].steps) == run.rounds[1].metrics["n_steps"]
    assert w.error is None and w.message_text == ""

    w.round_slider.value = 0   # back: the same pictures again (deterministic rendering)
    assert (w.scatter.value, w.timeline.value) == before[:2]


def test_round_explorer_layer_selector(run, run_dir):
    w = RoundExplorer(run, round_index=0)
    scatter, timeline = w.scatter.value, w.timeline.value
    assert w.select_layer("conv2.weight")
    fixed = load_file(str(run_dir / "round_00.safetensors"))["fixed/conv2.weight"].float().mean().item()
    assert w.round_label.value.endswith(f"conv2.weight: {100 * fixed:.1f}% fixed")
    assert w.scatter.value != scatter and w.timeline.value == timeline   # the timeline is per run

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
    assert _png_shape(w.scatter.value)[0] > 100
    w = RoundExplorer(_interrupted(run_dir, tmp_path, 0))
    assert "0 of 2 rounds recorded (no round yet" in w.message_text and w.round_slider.disabled
    assert w.scatter.value == b""


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
    scatter, position, traj_png = w.scatter.value, w.position.value, w.trajectory_plot.value

    w.channel.value = 3
    w.tap.value = (1, 1)
    assert w.selection_label.value.startswith("conv2.weight[3, :, 1, 1]: 16 weights")
    assert w.weight.max == 15
    assert w.scatter.value != scatter and w.position.value != position
    w.weight.value = 5
    assert w.trajectory.name == "conv2.weight" and w.trajectory.index == (3, 5, 1, 1)
    expected = weight_trajectory(run, "conv2.weight", (3, 5, 1, 1))
    assert w.trajectory.table.equals(expected.table) and w.trajectory_plot.value != traj_png
    assert w.weight_label.value == expected.describe()

    scatter = w.scatter.value
    w.round_slider.value = 0
    assert "round 0" in w.selection_label.value and w.scatter.value != scatter

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
    html, books, errors = w.table.value, w.codebooks.value, w.layer_error.value

    w.k.value = 6
    row = w.comparison.table.set_index("method").loc["kmeans@6"]
    acc, stats = _kmeans_reference(run, 6, "kmeans++", digits)
    assert row["top1"] == acc["top1"] and row["unique"] == stats["unique"] == 6
    assert row["entropy"] == pytest.approx(stats["entropy"], abs=1e-12)
    assert w.table.value != html and w.codebooks.value != books and w.layer_error.value != errors
    assert set(w.comparison.layers["method"]) == {"pwfn", "kmeans@6"}

    books = w.codebooks.value
    w.init.value = "linear"
    row = w.comparison.table.set_index("method").loc["kmeans@6"]
    acc, stats = _kmeans_reference(run, 6, "linear", digits)
    assert row["top1"] == acc["top1"] and row["entropy"] == pytest.approx(stats["entropy"], abs=1e-12)
    assert w.codebooks.value != books
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
    table, plot, bands = w.table.value, w.plot.value, w.bands.value
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
    assert w.table.value != table and w.plot.value != plot and w.bands.value != bands

    w.delta.value = 0.5                        # one slider: one update with that value
    direct = codebook_stats(cluster_round(mu, sigma, 0.7, config=ClusterConfig(
        **{**run.config["cluster"], "delta": 0.5, "b": 5})).mu)
    assert w.stats["unique"] == direct["unique"] and w.stats["entropy"] == direct["entropy"]
    w.accuracy.value = False
    assert "top1" not in w.stats and w.error is None
    bands = w.bands.value
    w.plots.value = False                      # no drawing: the numbers still follow
    w.fraction.value = 0.9
    assert w.stats["n_fixed"] == 13805 and w.bands.value == bands   # ceil(0.9 * 15338)


def test_whatif_bad_inputs(run_dir, tmp_path, digits):
    w = WhatIf(_interrupted(run_dir, tmp_path, 1), data=digits)
    assert "incomplete run" in w.message_text
    assert "re-clustering the pre-snap mu and sigma of round 0" in w.round_label.value
    assert w.stats["unique"] == pwfn_viz.load_run(run_dir).rounds[0].metrics["unique"]
    w = WhatIf(_interrupted(run_dir, tmp_path, 0))
    assert "nothing to re-cluster" in w.message_text and w.delta.disabled
    assert "round 5 not recorded" in WhatIf(run_dir, round_index=5).message_text
