"""Plots and the tables behind them: every plot against a small recorded run
(right number of points and artists, values equal to brute force, axes labelled), the tables
against hand computations, image comparisons of key figures against stored baselines, and
``write_figures`` / ``pwfn-viz figures``.

Baselines: tests/baseline_images/*.png, rendered from deterministic synthetic data. After an
intended change of a figure, regenerate them with
``PWFN_UPDATE_BASELINES=1 .venv/bin/python -m pytest tests/test_plots.py -k baseline`` and look
at the new images before committing them.
"""
import inspect
import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection, PolyCollection  # noqa: E402
from matplotlib.testing.compare import compare_images  # noqa: E402

import pwfn_viz  # noqa: E402
from pwfn_viz import RunConfig  # noqa: E402
from pwfn_viz.core.clustering import candidate_centres, cluster_round  # noqa: E402
from pwfn_viz.viz import (plot_attention_heads, plot_channel_heatmap, plot_fraction_fixed,  # noqa: E402
                          plot_greedy_steps, plot_kernel_pattern, plot_round_codebook, plot_sigma_by_layer,
                          plot_sigma_vs_mu, plot_timeline, plot_value_histograms, write_figures)
from pwfn_viz.analysis import tables  # noqa: E402
from pwfn_viz.viz.figures import FORMATS  # noqa: E402

BASELINES = Path(__file__).parent / "baseline_images"
TOL = 5   # RMS (0-255 scale) allowed. Measured on the text-free images: fixing 65% instead of 70% of
#          the toy weights gives 6.4, dropping the bands 14, re-rendering on this machine 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig(model="digits_cnn", pretrain_epochs=2, first_round_epochs=0.1, epochs_per_round=0.2,
                    fractions=(0.5, 1.0), threads=1, seed=0)
    return pwfn_viz.run(cfg, out_dir=tmp_path_factory.mktemp("plots") / "run", progress=False, verbose=False)


@pytest.fixture(scope="module")
def comparison(run):
    return pwfn_viz.compare(run, finetune=False)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def n_weights(run):
    return sum(int(np.prod(s)) for s in run.meta["tensors"].values())


def flat(tensors):
    return torch.cat([t.double().flatten() for t in tensors.values()])


def labelled(ax):
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def toy_round(fraction=0.7):
    """A deterministic synthetic round: seeded toy weights through the real clustering."""
    rng = np.random.default_rng(7)
    mu = torch.tensor(np.concatenate([rng.normal(0, 0.08, 300), rng.normal(0.3, 0.02, 40),
                                      rng.normal(-0.25, 0.02, 40)]))
    sigma = torch.tensor(rng.uniform(0.002, 0.02, mu.numel()))
    return tables.round_from_cluster(mu, sigma, cluster_round(mu, sigma, fraction))


# ----------------------------------------------------------------------------- 1. sigma against mu

@pytest.mark.parametrize("round_index", [0, 1])
def test_sigma_vs_mu_draws_every_weight_each_centre_and_its_band(run, round_index):
    rnd = run.rounds[round_index]
    fig = plot_sigma_vs_mu(run, round_index)
    ax = fig.axes[0]
    assert labelled(ax)
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in scatters) == n_weights(run)
    # the "fixed by this snap" points are exactly the weights the snap fixed, at their pre-snap (mu, sigma)
    pre_mu, pre_sigma, pre_fixed = rnd.flat("pre")
    fixed = rnd.flat("post")[2]
    new = fixed & ~pre_fixed
    just = [c for c in scatters if c.get_label().startswith("fixed by this snap")][0]
    # sigma as the method uses it, max(sigma, 2^-30): never the raw parameter (which may be <= 0)
    expected = np.stack([pre_mu[new].numpy(), pre_sigma[new].clamp(min=2.0 ** -30).numpy()], 1)
    got = np.asarray(just.get_offsets())
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected, axis=0))

    steps = rnd.steps
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1 and len(lines[0].get_segments()) == len(steps)
    np.testing.assert_allclose([s[0, 0] for s in lines[0].get_segments()], steps["centre"])
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1 and len(bands[0].get_paths()) == len(steps)
    # every weight this snap fixed lies in the drawn band of a step whose centre it moved to
    top = ax.get_ylim()[1]
    wedges = [p.vertices for p in bands[0].get_paths()]
    drawn = [(v[1, 0], (v[2, 0] - v[1, 0]) / top) for v in wedges]    # (apex = centre, delta)
    np.testing.assert_allclose([d for _, d in drawn], steps["delta"])
    post_mu = rnd.flat("post")[0]
    sig = pre_sigma.clamp(min=2.0 ** -20)
    for i in torch.nonzero(new).flatten().tolist():
        m, s, c = pre_mu[i].item(), sig[i].item(), post_mu[i].item()
        fits = any(abs(m - cc) <= d * s * (1 + 1e-9) for cc, d in drawn if cc == c)
        assert fits or (c == 0 and abs(m) < 2.0 ** -7), (i, m, s, c)


def test_sigma_vs_mu_switches_to_hexbin_for_many_points(run):
    fig = plot_sigma_vs_mu(run, 0, hexbin_above=1000, sample=300)
    ax = fig.axes[0]
    hexes = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_array() is not None]
    assert len(hexes) == 1 and hexes[0].get_array().sum() == n_weights(run)   # counts of all weights
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    status = tables.weight_status(run.rounds[0])
    assert sorted(len(c.get_offsets()) for c in scatters) == sorted(min(300, int((status == s).sum()))
                                                                     for s in set(status.tolist()))


def test_sigma_vs_mu_one_layer_some_steps_and_bad_input(run):
    ax = plot_sigma_vs_mu(run, 0, layer="conv1.weight", steps=slice(0, 3)).axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)) == 16 * 9
    assert len([c for c in ax.collections if isinstance(c, LineCollection)][0].get_segments()) == 3
    with pytest.raises(ValueError, match="no layer 'conv9.weight'.*available: conv1.weight, conv1.bias"):
        plot_sigma_vs_mu(run, 0, layer="conv9.weight")
    with pytest.raises(IndexError, match=r"round 5 not recorded; this run has rounds 0..1"):
        plot_sigma_vs_mu(run, 5)
    with pytest.raises(ValueError, match="bands="):
        plot_sigma_vs_mu(run, 0, bands="dots")
    with pytest.raises(ValueError, match="round_index"):
        plot_sigma_vs_mu(run.rounds[0], 1)


# ----------------------------------------------------------------------------- 2. uncertainty against position

def test_sigma_by_layer_boxes_in_network_order(run):
    sigma = tables.sigma_tensors(run)
    assert list(sigma) == list(run.meta["tensors"])
    fig = plot_sigma_by_layer(run)
    ax = fig.axes[0]
    assert labelled(ax) and [t.get_text() for t in ax.get_xticklabels()] == list(sigma)
    medians = [line for line in ax.lines if line.get_gid() == "median"]
    assert len(medians) == len(sigma)
    for line, t in zip(medians, sigma.values()):   # brute-force median: middle of the sorted values
        v = np.sort(t.flatten().numpy())
        median = v[v.size // 2] if v.size % 2 else (v[v.size // 2 - 1] + v[v.size // 2]) / 2
        assert line.get_ydata()[0] == pytest.approx(median, rel=1e-12)
    violin = plot_sigma_by_layer(run.rounds[1], kind="violin", layers=["conv2.weight", "fc.weight"]).axes[0]
    assert len([c for c in violin.collections if isinstance(c, PolyCollection)]) == 2
    with pytest.raises(ValueError, match="kind="):
        plot_sigma_by_layer(run, kind="bars")


def test_learned_sigma_is_the_pre_snap_sigma_of_the_round_that_fixed_each_weight(run):
    learned = tables.sigma_tensors(run)["conv2.weight"].flatten()
    r0, r1 = run.rounds
    first = r0.fixed["conv2.weight"].flatten()
    for i in range(0, first.numel(), 97):
        rnd = r0 if first[i] else r1
        expected = max(rnd.pre_sigma["conv2.weight"].flatten()[i].item(), 2.0 ** -30)
        assert learned[i].item() == pytest.approx(expected, rel=1e-6)


def test_initial_sigma_is_the_sigma_at_conversion(run):
    initial = tables.sigma_tensors(run, which="initial")
    start = pwfn_viz.load_run(run.path).start    # the start file, read afresh
    assert list(initial) == list(run.meta["tensors"]) == list(run.initial_sigma)
    for name, t in initial.items():
        assert t.dtype == torch.float64
        assert torch.equal(t, run.initial_sigma[name].double())          # already at or above the floor
        assert torch.equal(t, start[f"sigma/{name}"].double())
    # every position plot draws exactly those numbers with which="initial", and says so
    ax = plot_channel_heatmap(run, "conv2.weight", which="initial").axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), tables.channel_sigma(initial["conv2.weight"]).numpy())
    assert "initial" in ax.get_title()
    ax = plot_kernel_pattern(run, "conv1.weight", which="initial").axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), initial["conv1.weight"].mean(dim=(0, 1)).numpy())
    assert "initial" in ax.get_title()
    ax = plot_sigma_by_layer(run, which="initial").axes[0]
    medians = [line.get_ydata()[0] for line in ax.lines if line.get_gid() == "median"]
    np.testing.assert_allclose(medians, [np.median(t.numpy()) for t in initial.values()], rtol=1e-12)
    assert "initial" in ax.get_ylabel()
    with pytest.raises(ValueError, match="needs the whole Run"):
        tables.sigma_tensors(run.rounds[0], which="initial")
    with pytest.raises(ValueError, match="no single round"):
        tables.sigma_tensors(run, 0, which="initial")


def test_channel_heatmap_is_the_mean_over_kernel_taps(run):
    sigma = run.rounds[0].pre_sigma["conv2.weight"].double().clamp(min=2.0 ** -30)
    grid = tables.channel_sigma(sigma)
    for i in range(sigma.shape[0]):
        for j in range(sigma.shape[1]):
            taps = [sigma[i, j, a, b].item() for a in range(3) for b in range(3)]
            assert grid[i, j].item() == pytest.approx(sum(taps) / 9, rel=1e-12)
    fig = plot_channel_heatmap(run.rounds[0], "conv2.weight")
    ax = fig.axes[0]
    assert labelled(ax) and ax.get_xlabel() == "input channel"
    np.testing.assert_allclose(ax.images[0].get_array(), grid.numpy())
    assert "conv3.weight" in plot_channel_heatmap(run).axes[0].get_title()   # default: the largest conv
    with pytest.raises(ValueError, match="available: conv1.weight"):
        plot_channel_heatmap(run, "conv2.wieght")
    with pytest.raises(ValueError, match="no input channels"):
        plot_channel_heatmap(run, "conv2.bias")


def test_kernel_pattern_single_layer_and_pooled(run):
    sigma = tables.sigma_tensors(run)
    by_hand = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            values = [v for n in ("conv1.weight", "conv2.weight", "conv3.weight")
                      for v in sigma[n][:, :, a, b].flatten().tolist()]
            by_hand[a, b] = sum(values) / len(values)
    pattern, names = tables.pooled_kernel_pattern(sigma)
    assert names == ["conv1.weight", "conv2.weight", "conv3.weight"]
    np.testing.assert_allclose(pattern.numpy(), by_hand, rtol=1e-12)
    ax = plot_kernel_pattern(run).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), by_hand, rtol=1e-12)
    assert len(ax.texts) == 9 and labelled(ax)
    one = plot_kernel_pattern(run, "conv1.weight").axes[0].images[0].get_array()
    np.testing.assert_allclose(one, sigma["conv1.weight"].mean(dim=(0, 1)).numpy())
    with pytest.raises(ValueError, match="no kernel taps"):
        plot_kernel_pattern(run, "fc.weight")


def test_position_spread_against_brute_force(run):
    sigma = tables.sigma_tensors(run)["conv2.weight"]
    out_c, in_c, kh, kw = sigma.shape

    def cv(values):
        m = sum(values) / len(values)
        return (sum((v - m) ** 2 for v in values) / len(values)) ** 0.5 / m

    spread = tables.position_spread(sigma)
    assert spread["out_channels"] == pytest.approx(cv([sigma[o].mean().item() for o in range(out_c)]), rel=1e-9)
    assert spread["in_channels"] == pytest.approx(cv([sigma[:, i].mean().item() for i in range(in_c)]), rel=1e-9)
    assert spread["kernel_taps"] == pytest.approx(cv([sigma[:, :, a, b].mean().item()
                                                      for a in range(kh) for b in range(kw)]), rel=1e-9)
    assert tables.position_spread(torch.ones(4, 3, 3, 3)) == {"out_channels": 0.0, "in_channels": 0.0,
                                                               "kernel_taps": 0.0}
    linear = tables.position_spread(torch.ones(4, 1))     # one input channel, no taps: nothing to compare
    assert linear["out_channels"] == 0.0 and np.isnan(linear["in_channels"]) and np.isnan(linear["kernel_taps"])
    with pytest.raises(ValueError, match="no channels"):
        tables.position_spread(torch.ones(5))
    # shuffled: the same values at seeded random positions
    g = torch.Generator().manual_seed(3)
    by_hand = tables.position_spread(sigma.flatten()[torch.randperm(sigma.numel(), generator=g)].reshape(sigma.shape))
    assert tables.position_spread(sigma, shuffle_seed=3) == by_hand
    ordered = torch.arange(1.0, 9.0).repeat_interleave(16).reshape(8, 16)     # output channel o holds o + 1
    assert tables.position_spread(ordered, shuffle_seed=0)["out_channels"] < 0.5 * tables.position_spread(ordered)["out_channels"]
    # the table: every tensor with channels, each source, the first one also shuffled
    initial = tables.sigma_tensors(run, which="initial")
    learned = tables.sigma_tensors(run)
    table = tables.position_spread_table({"learned": learned, "initial": initial}, shuffles=7, seed=2)
    names = [n for n, t in learned.items() if t.dim() >= 2]
    assert list(table.index) == [(n, s) for n in names
                                 for s in ("learned", "learned, shuffled q95", "initial", "initial, shuffled q95")]
    assert table.loc[("conv2.weight", "initial")].to_dict() == tables.position_spread(initial["conv2.weight"])
    shuffled = [tables.position_spread(learned["conv2.weight"], shuffle_seed=k) for k in range(2, 9)]
    for column in ("out_channels", "in_channels", "kernel_taps"):
        assert table.loc[("conv2.weight", "learned, shuffled q95"), column] == pytest.approx(
            np.quantile([row[column] for row in shuffled], 0.95), rel=1e-12)
    assert np.isnan(table.loc[("fc.weight", "learned, shuffled q95"), "kernel_taps"])
    assert len(tables.position_spread_table({"learned": learned}, layers=["fc.weight"], shuffles=0)) == 1
    with pytest.raises(ValueError, match="available"):
        tables.position_spread_table({"learned": learned}, layers=["fc.wieght"])


def test_fraction_fixed_table_matches_the_masks(run):
    table = tables.fraction_fixed_table(run)
    assert list(table.columns) == list(run.meta["tensors"]) and list(table.index) == [0, 1]
    for rnd in run.rounds:
        for name, mask in rnd.fixed.items():
            assert table.at[rnd.index, name] == pytest.approx(mask.float().mean().item())
    assert (table.loc[1] == 1.0).all()
    ax = plot_fraction_fixed(run).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), table.to_numpy())
    assert labelled(ax)


@pytest.fixture(scope="module")
def vit():
    import timm
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=10).eval()


def test_head_split_matches_timm_attention(vit):
    attn = vit.blocks[0].attn
    assert tables.find_attention(vit) == {"blocks.0.attn": 3}
    heads, dim = 3, attn.qkv.in_features
    hd = dim // heads
    w, wb = attn.qkv.weight.detach(), attn.qkv.bias.detach()
    qkv, bias = tables.split_qkv(w, heads), tables.split_qkv(wb, heads)
    proj = tables.split_proj(attn.proj.weight.detach(), heads)
    for h in range(heads):   # against manual slicing of the fused weight
        assert torch.equal(qkv["q"][h], w[h * hd:(h + 1) * hd])
        assert torch.equal(qkv["k"][h], w[dim + h * hd:dim + (h + 1) * hd])
        assert torch.equal(qkv["v"][h], w[2 * dim + h * hd:2 * dim + (h + 1) * hd])
        assert torch.equal(proj[h], attn.proj.weight.detach()[:, h * hd:(h + 1) * hd])
    # and against timm's own forward: per-head attention from the split q, k, v reproduces the
    # input of proj in the columns the proj split gives each head
    x = torch.randn(2, 5, dim)
    seen = {}
    attn.proj.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
    with torch.no_grad():
        attn(x)
        for h in range(heads):
            q, k, v = (x @ qkv[p][h].T + bias[p][h] for p in ("q", "k", "v"))
            out = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1) @ v
            torch.testing.assert_close(out, seen["x"][..., h * hd:(h + 1) * hd], atol=1e-5, rtol=1e-4)


def test_attention_head_table_and_plot(vit):
    tensors = {n: p.detach().abs() for n, p in vit.named_parameters()}
    table = tables.attention_head_table(tensors, {"blocks.0.attn": 3})
    w, pw = tensors["blocks.0.attn.qkv.weight"], tensors["blocks.0.attn.proj.weight"]
    for h in range(3):
        row = table.loc[("blocks.0.attn", h)]
        assert row["q"] == pytest.approx(w[64 * h:64 * (h + 1)].double().mean().item())
        assert row["k"] == pytest.approx(w[192 + 64 * h:192 + 64 * (h + 1)].double().mean().item())
        assert row["v"] == pytest.approx(w[384 + 64 * h:384 + 64 * (h + 1)].double().mean().item())
        assert row["proj"] == pytest.approx(pw[:, 64 * h:64 * (h + 1)].double().mean().item())
    ax = plot_attention_heads(tensors, num_heads=3).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), table.to_numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q", "k", "v", "proj"] and labelled(ax)
    with pytest.raises(ValueError, match="num_heads"):
        plot_attention_heads(tensors)
    with pytest.raises(ValueError, match="cannot be split"):
        tables.split_qkv(w, 5)


def test_attention_heads_on_a_run_without_attention(run):
    with pytest.raises(ValueError, match="no attention layers"):
        plot_attention_heads(run)


# ----------------------------------------------------------------------------- 3-5. timeline, steps, codebooks

def test_timeline_has_accuracy_unique_and_entropy(run):
    assert list(inspect.signature(plot_timeline).parameters)[:3] == ["run", "ax", "baseline"]
    fig = plot_timeline(run)
    table = run.table()
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    np.testing.assert_allclose(lines["top-1 before snap"].get_ydata(), table["top1_before"])
    np.testing.assert_allclose(lines["top-1 after snap"].get_ydata(), table["top1_after"])
    np.testing.assert_allclose(lines["unique values"].get_ydata(), table["unique"])
    np.testing.assert_allclose(lines["entropy (bits)"].get_ydata(), table["entropy"])
    assert len(fig.axes) == 3 and all(ax.get_ylabel() for ax in fig.axes) and fig.axes[0].get_xlabel()
    assert len(plot_timeline(table, entropy=False).axes) == 2


def test_greedy_steps_panels(run):
    steps = run.rounds[1].steps
    fig = plot_greedy_steps(run, 1)
    centres, counts, growth = fig.axes[:3]
    offsets = np.concatenate([c.get_offsets() for c in centres.collections if isinstance(c, PathCollection)])
    assert len(offsets) == len(steps)
    np.testing.assert_allclose(offsets[np.argsort(offsets[:, 0])], steps[["step", "centre"]].to_numpy(float))
    assert [p.get_height() for p in counts.patches] == steps["n_taken"].tolist()
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    np.testing.assert_array_equal(lines["order P"].get_ydata(), steps["P"])
    np.testing.assert_allclose(lines[r"$\delta$"].get_ydata(), steps["delta"])
    np.testing.assert_array_equal(lines["cumulative taken"].get_ydata(), steps["n_taken"].cumsum())
    assert all(ax.get_ylabel() for ax in fig.axes) and growth.get_xlabel() == "greedy step"
    _, axes = plt.subplots(1, 3)
    assert plot_greedy_steps(run.rounds[0], ax=axes) is axes[0].figure
    with pytest.raises(ValueError, match="three Axes"):
        plot_greedy_steps(run, 0, ax=axes[:2])


def test_value_histograms_count_every_weight(run):
    rnd = run.rounds[0]
    ax = plot_value_histograms(rnd, bins=50).axes[0]
    pre, post = flat(rnd.pre_mu).numpy(), flat(rnd.mu).numpy()
    edges = np.histogram_bin_edges(np.concatenate([pre, post]), bins=50)
    for patch, values in zip(ax.patches, (pre, post)):
        heights = patch.get_xy()[1:100:2, 1]
        np.testing.assert_array_equal(heights, np.histogram(values, edges)[0])
    assert labelled(ax) and ax.get_yscale() == "log"


def test_round_codebook_stems_and_orders(run):
    rnd = run.rounds[0]
    mu, fixed = flat(rnd.mu), flat({k: v.double() for k, v in rnd.fixed.items()}).bool()
    values, counts = torch.unique(mu[fixed], return_counts=True)
    ax = plot_round_codebook(rnd).axes[0]
    stems = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert sum(len(c.get_segments()) for c in stems) == len(values)
    points = np.concatenate([np.stack([line.get_xdata(), line.get_ydata()], 1) for line in ax.lines])
    np.testing.assert_allclose(points[np.argsort(points[:, 0])], np.stack([values.numpy(), counts.numpy()], 1))
    assert points[:, 1].sum() == rnd.metrics["n_fixed"] and labelled(ax)


def test_power_of_two_terms_match_the_candidate_orders():
    every = candidate_centres(4, 0.9)
    terms = tables.power_of_two_terms(every)
    assert (terms >= 0).all()
    for p in range(1, 5):
        assert set(every[terms <= p].tolist()) == set(candidate_centres(p, 0.9).tolist())


# ----------------------------------------------------------------------------- style and figures

def test_plots_leave_global_style_alone(run):
    before = dict(matplotlib.rcParams)
    plot_sigma_by_layer(run)
    assert dict(matplotlib.rcParams) == before


def test_style_keeps_interactive_mode_and_nests():
    """In Jupyter, resolving the backend turns interactive mode on inside the first plot call;
    undoing that on exit would stop every later figure from showing."""
    from pwfn_viz.viz.style import style
    was = matplotlib.is_interactive()
    try:
        with style():
            matplotlib.interactive(True)
            with style("talk"):   # nested: the outer style stays
                assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0] == "#0072B2"
                size = matplotlib.rcParams["font.size"]
        assert matplotlib.is_interactive()
        with style("talk"):
            assert matplotlib.rcParams["font.size"] > size
    finally:
        matplotlib.interactive(was)


def test_snap_to_codebook_against_argmin():
    from pwfn_viz.viz.teaching import plot_number_line, snap_to_codebook
    rng = np.random.default_rng(0)
    values, book = rng.normal(size=200), rng.normal(size=7)
    snapped, index = snap_to_codebook(torch.tensor(values), torch.tensor(book))
    sorted_book = np.sort(book)
    np.testing.assert_array_equal(index.numpy(), np.abs(values[:, None] - sorted_book[None]).argmin(1))
    np.testing.assert_array_equal(snapped.numpy(), sorted_book[index.numpy()])
    assert snap_to_codebook(torch.tensor([0.5]), torch.tensor([0.0, 1.0]))[0].item() == 0.0   # tie: smaller
    ax = plot_number_line(values[:5], snapped[:5], codebook=book, sigma=np.full(5, 0.1)).axes[0]
    assert len(ax.get_yticks()) == 5 and labelled(ax)
    with pytest.raises(ValueError, match="empty"):
        snap_to_codebook(torch.tensor([0.5]), torch.tensor([]))


def test_toy_round_from_cluster_result_plots():
    rnd = toy_round()
    assert rnd.fixed["weights"].sum().item() == 266   # ceil(0.7 * 380)
    ax = plot_sigma_vs_mu(rnd).axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)) == 380


RUN_STEMS = ["timeline", "fraction_fixed", "sigma_by_layer", "sigma_channels", "kernel_pattern",
             "codebooks_vs_kmeans", "moves_vs_sigma"]
ROUND_KINDS = ("sigma_vs_mu", "greedy_steps", "histograms", "codebook")
ROUND_STEMS = [f"round_{r:02d}_{kind}" for r in (0, 1) for kind in ROUND_KINDS]


def test_write_figures_writes_every_figure(run, comparison, tmp_path):
    paths = write_figures(run, tmp_path, formats=("png",), comparison=comparison, dpi=30)   # rounds: all
    assert sorted(paths) == sorted(tmp_path / f"{s}.png" for s in RUN_STEMS + ROUND_STEMS)
    for path in paths:
        assert plt.imread(path).ndim == 3
    assert not plt.get_fignums()   # every figure closed
    with pytest.raises(ValueError, match="unknown format"):
        write_figures(run, tmp_path, formats=("png", "docx"), comparison=False)
    with pytest.raises(ValueError, match="no figure"):
        write_figures(run, tmp_path, only=["timeline", "attention_heads"], comparison=False)


def test_write_figures_in_every_format(run, comparison, tmp_path):
    """Every format for a line plot, a scatter of every weight and the comparison scatter (the
    format loop is the same for every figure); dense scatters are rasterised inside PDF/SVG."""
    stems = ["timeline", "round_01_sigma_vs_mu", "moves_vs_sigma"]
    paths = write_figures(run, tmp_path, comparison=comparison, only=stems, dpi=30)
    assert sorted(paths) == sorted(tmp_path / f"{s}.{f}" for s in stems for f in FORMATS)
    for s in stems:
        assert plt.imread(tmp_path / f"{s}.png").ndim == 3
        assert (tmp_path / f"{s}.pdf").read_bytes().startswith(b"%PDF")
        svg = (tmp_path / f"{s}.svg").read_bytes()
        assert b"<svg" in svg[:2000] and len(svg) < 400_000, len(svg)   # 15k points as vectors: ~2.5 MB


def test_figures_command_line(run, tmp_path, capsys):
    from pwfn_viz.cli import main
    out = tmp_path / "figs"
    assert main(["figures", str(run.path), "--out", str(out), "--formats", "png", "--no-compare",
                 "--rounds", "-1", "--dpi", "30", "--layer", "conv2.weight"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.png" for s in ["timeline", "fraction_fixed", "sigma_by_layer", "sigma_channels", "kernel_pattern"]
        + [f"round_01_{kind}" for kind in ROUND_KINDS])
    assert "wrote 9 files" in capsys.readouterr().out
    assert main(["figures", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "not a pwfn_viz run directory" in capsys.readouterr().err
    assert main(["figures", str(run.path), "--out", str(out), "--no-compare", "--layer", "conv7.weight"]) == 2
    assert "available: conv1.weight" in capsys.readouterr().err
    assert main(["figures", str(run.path), "--out", str(out), "--no-compare", "--rounds", "4"]) == 2
    assert "round 4 not recorded" in capsys.readouterr().err


def test_interrupted_runs(run, tmp_path):
    """A run directory from an interrupted run: plots of the recorded rounds work; one with no
    round at all gives a clear message."""
    for keep in (1, 0):
        d = tmp_path / f"kept{keep}"
        shutil.copytree(run.path, d)
        meta = json.loads((d / "run.json").read_text())
        meta["rounds"], meta["status"] = meta["rounds"][:keep], "running"
        (d / "run.json").write_text(json.dumps(meta))
        partial = pwfn_viz.load_run(d)
        if keep:
            assert len(plot_timeline(partial).axes[0].lines[0].get_xdata()) == 1
            assert tables.fraction_fixed_table(partial).shape == (1, 8)
            names = [p.stem for p in write_figures(partial, d / "figs", formats=("png",), comparison=False, dpi=20,
                                                   only=["fraction_fixed", "round_00_codebook"])]
            assert names == ["fraction_fixed", "round_00_codebook"]
            with pytest.raises(ValueError, match=r"no figure\(s\) \['round_01_codebook'\]"):
                write_figures(partial, d / "figs", comparison=False, only=["round_01_codebook"])
        else:
            for call in (lambda: plot_sigma_vs_mu(partial), lambda: plot_sigma_by_layer(partial),
                         lambda: write_figures(partial, d / "figs", comparison=False)):
                with pytest.raises(ValueError, match="no completed round yet"):
                    call()


# ----------------------------------------------------------------------------- image comparison

def synthetic_table():
    return pd.DataFrame({"fraction": [0.2, 0.4, 0.6, 0.8, 1.0], "top1_before": [97.0, 96.5, 96.8, 96.1, 95.9],
                         "top1_after": [96.2, 96.0, 95.5, 95.7, 95.6], "unique": [3000, 1200, 400, 150, 60],
                         "entropy": [9.1, 7.5, 5.2, 4.0, 3.1]}, index=pd.Index(range(5), name="round"))


BASELINE_FIGURES = {
    "sigma_vs_mu_toy": lambda: plot_sigma_vs_mu(toy_round()),
    "greedy_steps_toy": lambda: plot_greedy_steps(toy_round()),
    "timeline_synthetic": lambda: plot_timeline(synthetic_table(), baseline=97.5),
}


def without_text(fig):
    """Strip every text (titles, labels, tick labels, legends, annotations) before comparing:
    font rendering is what changes between matplotlib versions; the drawn data is what these
    baselines guard (the labels are checked in the tests above)."""
    from matplotlib.testing.decorators import remove_ticks_and_titles
    remove_ticks_and_titles(fig)
    for ax in fig.axes:
        ax.set_xlabel("")
        ax.set_ylabel("")
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        for text in list(ax.texts):
            text.remove()
    return fig


@pytest.mark.parametrize("name", list(BASELINE_FIGURES))
def test_baseline_images(name, tmp_path):
    fig = without_text(BASELINE_FIGURES[name]())
    actual = tmp_path / f"{name}.png"
    fig.savefig(actual, dpi=60)
    expected = BASELINES / f"{name}.png"
    if os.environ.get("PWFN_UPDATE_BASELINES") == "1":
        BASELINES.mkdir(exist_ok=True)
        shutil.copy(actual, expected)
    assert expected.exists(), f"no baseline {expected}; make it with PWFN_UPDATE_BASELINES=1 (see the docstring)"
    result = compare_images(str(expected), str(actual), tol=TOL)
    assert result is None, result
