"""Paper figures: venue sizes and print-size fonts, symbols in every label, editable text in SVG and
TrueType in PDF, honest colour and count scales, ``pwfn-viz figures --venue/--quiet``, and the
per-layer table with sigma as the method uses it."""
import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

import pwfn_viz  # noqa: E402
from pwfn_viz import RunConfig  # noqa: E402
from pwfn_viz.analysis import tables  # noqa: E402
from pwfn_viz.core.clustering import cluster_round  # noqa: E402
from pwfn_viz.viz import (plot_channel_heatmap, plot_fraction_fixed, plot_greedy_steps,  # noqa: E402
                          plot_kernel_pattern, plot_round_codebook, plot_sigma_by_layer, plot_sigma_vs_mu,
                          plot_timeline, plot_value_histograms, write_figures)
from pwfn_viz.viz.plots import plot_step_counts  # noqa: E402
from pwfn_viz.viz.style import MIN_FONT_PT, VENUES, figsize, style  # noqa: E402

FLOOR = 2.0 ** -30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = RunConfig(model="digits_cnn", pretrain_epochs=2, first_round_epochs=0.1, epochs_per_round=0.2,
                    fractions=(0.5, 1.0), threads=1, seed=0)
    return pwfn_viz.run(cfg, out_dir=tmp_path_factory.mktemp("venue") / "run", progress=False, verbose=False)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def toy_round():
    rng = np.random.default_rng(3)
    mu = torch.tensor(np.concatenate([rng.normal(0, 0.08, 200), rng.normal(0.3, 0.02, 30)]))
    sigma = torch.tensor(rng.uniform(0.002, 0.02, mu.numel()))
    return tables.round_from_cluster(mu, sigma, cluster_round(mu, sigma, 0.7))


PLOTS = {
    "sigma_vs_mu": lambda run: plot_sigma_vs_mu(run, 0),
    "greedy_steps": lambda run: plot_greedy_steps(run, 1),
    "timeline": plot_timeline,
    "histograms": lambda run: plot_value_histograms(run, 0),
    "codebook": lambda run: plot_round_codebook(run, 1),
    "sigma_by_layer": plot_sigma_by_layer,
    "channels": plot_channel_heatmap,
    "kernel": plot_kernel_pattern,
    "fraction_fixed": plot_fraction_fixed,
}


def texts(fig):
    fig.canvas.draw()     # tick labels exist only after a draw
    return [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]


def test_figsize_gives_the_venue_widths():
    assert figsize("neurips") == (5.5, 3.41)
    assert figsize("icml", "column", aspect=0.5) == (3.25, 1.62)
    assert figsize("cvpr", 0.5, height=2) == (3.438, 2)
    assert VENUES["ieee"].column_width == pytest.approx(252 / 72.27, abs=0.01)
    for name in ("neurips", "iclr"):
        assert not VENUES[name].two_column
    for name in ("icml", "cvpr", "ieee", "aaai"):
        assert VENUES[name].two_column and VENUES[name].column_width < VENUES[name].text_width / 2
    with pytest.raises(ValueError, match="no venue 'nips'"):
        figsize("nips")
    with pytest.raises(ValueError, match="width="):
        figsize("icml", "margin")


@pytest.mark.parametrize("venue, width", [("neurips", "text"), ("icml", "column"), ("ieee", "text"),
                                          ("cvpr", "column")])
def test_venue_figures_have_the_venue_width_and_print_size_fonts(run, venue, width):
    v = VENUES[venue]
    expected = v.text_width if width == "text" else v.column_width
    with style(venue=venue, width=width):
        for name, make in PLOTS.items():
            fig = make(run)
            assert fig.get_size_inches()[0] == pytest.approx(expected), name
            small = [(t.get_text(), t.get_fontsize()) for t in texts(fig) if t.get_fontsize() < MIN_FONT_PT]
            assert not small, (name, small[:5])
            plt.close(fig)
    if v.serif:
        with style(venue=venue):
            assert matplotlib.rcParams["font.family"] == ["serif"]


def test_venue_fonts_stay_at_print_size_when_saved_outside_the_style(run, tmp_path):
    with style(venue="neurips"):
        fig = plot_sigma_by_layer(run)
    fig.savefig(tmp_path / "x.png")                         # tick labels made at this draw
    sizes = [t.get_fontsize() for ax in fig.axes for t in ax.get_yticklabels() + ax.get_xticklabels()]
    assert sizes and min(sizes) >= MIN_FONT_PT


def bare_words(label):
    """Words sigma / mu / delta written out (outside $...$ mathtext)."""
    return re.findall(r"\b(sigma|mu|delta)\b", re.sub(r"\$[^$]*\$", "", label))


def test_every_axis_label_and_title_writes_symbols(run):
    for name, make in PLOTS.items():
        fig = make(run)
        for ax in fig.axes:
            for label in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()):
                assert not bare_words(label), (name, label)
    assert plot_sigma_vs_mu(run, 0).axes[0].get_ylabel() == r"$\sigma$ (before the snap)"
    assert plot_sigma_vs_mu(run, 0).axes[0].get_xlabel() == r"$\mu$ (before the snap)"
    assert r"$\delta$" in plot_greedy_steps(run, 1).axes[-1].get_ylabel()


def test_sigma_by_layer_names_its_sigma(run):
    sigma = tables.sigma_tensors(run)
    assert plot_sigma_by_layer(run).axes[0].get_ylabel() == r"$\sigma$ (learned), log scale"
    assert plot_sigma_by_layer(sigma, which="learned").axes[0].get_ylabel() == r"$\sigma$ (learned), log scale"
    label = plot_sigma_by_layer(sigma).axes[0].get_ylabel()      # a bare mapping: no empty parentheses
    assert label == r"$\sigma$, log scale" and "()" not in label


def test_svg_keeps_text_and_pdf_embeds_truetype(run, tmp_path):
    paths = write_figures(run, tmp_path, formats=("svg", "pdf"), comparison=False, only=["sigma_by_layer"],
                          venue="neurips")
    svg = (tmp_path / "sigma_by_layer.svg").read_text()
    assert "<text" in svg and "conv2.weight" in svg and "learned" in svg
    pdf = (tmp_path / "sigma_by_layer.pdf").read_bytes()
    assert b"/FontFile2" in pdf and b"/FontFile3" not in pdf and b"/Type3" not in pdf   # TrueType (Type 42)
    assert len(paths) == 2


def test_write_figures_with_a_venue_writes_figures_of_its_width(run, tmp_path):
    paths = write_figures(run, tmp_path, formats=("png",), comparison=False, dpi=100, venue="icml",
                          width="column", only=["timeline", "kernel_pattern", "round_01_greedy_steps"])
    for path in paths:
        assert plt.imread(path).shape[1] == round(3.25 * 100), path.name


def test_kernel_pattern_colours_start_at_zero_and_state_the_range(run):
    sigma = tables.sigma_tensors(run)
    ax = plot_kernel_pattern(run).axes[0]
    norm = ax.images[0].norm
    pattern = tables.pooled_kernel_pattern(sigma)[0].numpy()
    assert norm.vmin == 0 and norm.vmax == pytest.approx(pattern.max())
    bar_label = ax.figure.axes[1].get_ylabel()
    assert f"cells {pattern.min():.3g} to {pattern.max():.3g}" in bar_label
    # a shared scale across panels, or the old stretched one on request
    assert plot_kernel_pattern(run, "conv1.weight", vmax=1.0).axes[0].images[0].norm.vmax == 1.0
    assert plot_kernel_pattern(run, vmin=None).axes[0].images[0].norm.vmin == pytest.approx(pattern.min())
    assert plot_channel_heatmap(run).axes[0].images[0].norm.vmin == 0


def test_small_counts_get_a_linear_axis_large_spans_a_log_one():
    rnd = toy_round()
    steps = rnd.steps
    ax = plot_step_counts(rnd).axes[0]
    counts = np.concatenate([steps["n_taken"], steps["n_fit"]])
    counts = counts[counts > 0]
    expected = "log" if counts.max() >= 100 and counts.max() / counts.min() > 30 else "linear"
    assert ax.get_yscale() == expected
    small = rnd.steps.assign(n_taken=[1 + i % 2 for i in range(len(steps))], n_fit=[2] * len(steps))
    rnd.steps = small
    ax = plot_step_counts(rnd).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0


def test_legends_sit_outside_the_data(run):
    for make in (lambda: plot_sigma_vs_mu(run, 0), lambda: plot_round_codebook(run, 1),
                 lambda: plot_value_histograms(run, 0), lambda: plot_greedy_steps(run, 1)):
        fig = make()
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box, frame = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
            overlap_w = min(box.x1, frame.x1) - max(box.x0, frame.x0)
            overlap_h = min(box.y1, frame.y1) - max(box.y0, frame.y0)
            assert overlap_w <= 1 or overlap_h <= 1, (legend.texts[0].get_text(), box, frame)


def test_layer_table_shows_the_clamped_sigma():
    mu = torch.tensor([0.5, 0.25, 0.1, -0.3, 0.01, 0.2], dtype=torch.float64)
    raw = torch.tensor([-0.02, 0.01, -1e-3, 0.05, 0.0, 0.03], dtype=torch.float64)   # raw sigma, some <= 0
    rnd = tables.round_from_cluster(mu, raw, cluster_round(mu, raw, 0.5))
    rnd.tensors["sigma/weights"] = raw      # the post-snap sigma the per-layer table summarises
    q = [0.05, 0.25, 0.5, 0.75, 0.95]
    rnd.layers = pd.DataFrame([dict(name="weights", fraction_fixed=0.5, sigma_mean=raw.mean().item(),
                                    sigma_median=raw.median().item(),
                                    **{f"sigma_q{int(100 * p):02d}": np.quantile(raw.numpy(), p) for p in q})])
    assert rnd.layers["sigma_q05"].item() < 0                     # what the record holds
    table = tables.layer_table(rnd)
    clamped = raw.clamp(min=FLOOR).numpy()
    assert table["sigma_q05"].item() == pytest.approx(np.quantile(clamped, 0.05), rel=1e-12)
    assert table["sigma_q05"].item() >= FLOOR
    assert table["sigma_median"].item() == pytest.approx(np.median(clamped))
    assert table["sigma_mean"].item() == pytest.approx(clamped.mean())
    assert (table[list(tables.SIGMA_STATS)] >= FLOOR).all().all()
    short = tables.layer_table(rnd, columns=["name", "sigma_median"], digits=2)
    assert list(short.columns) == ["name", "sigma_median"]
    with pytest.raises(ValueError, match="no column"):
        tables.layer_table(rnd, columns=["name", "sigma_max"])


def test_layer_table_of_a_real_run_never_reads_negative(run):
    for i in range(len(run.rounds)):
        table = tables.layer_table(run, i)
        assert (table[list(tables.SIGMA_STATS)] >= FLOOR).all().all()
        assert list(table["name"]) == list(run.meta["tensors"])


def test_config_summary(run):
    summary = tables.config_summary(run)
    assert summary.loc["rounds", "value"] == "2: 50, 100 %"
    assert summary.loc["model / data", "value"] == "digits_cnn on digits"
    assert summary.loc["unquantised top1", "value"] == f"{run.baseline['top1']:.2f}"
    assert list(summary.columns) == ["value"] and len(summary) <= 10


def test_figures_command_quiet_venue_and_progress(run, tmp_path, capsys):
    from pwfn_viz.cli import main
    out = tmp_path / "figs"
    assert main(["figures", str(run.path), "--out", str(out), "--formats", "png,svg", "--no-compare",
                 "--rounds", "-1", "--dpi", "30", "--venue", "neurips", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert len(list(out.glob("*.svg"))) == 9
    assert plt.imread(out / "timeline.png").shape[1] == round(5.5 * 30)
    assert main(["figures", str(run.path), "--out", str(out), "--formats", "png", "--no-compare",
                 "--rounds", "all", "--dpi", "20"]) == 0
    captured = capsys.readouterr()
    assert "wrote 13 files" in captured.out                   # 5 run figures + 4 per round x 2 rounds
    assert "figures" in captured.err and "%" in captured.err   # the progress bar
    assert main(["figures", str(run.path), "--out", str(out), "--no-compare", "--venue", "nips"]) == 2
    assert "no venue 'nips'" in capsys.readouterr().err


def test_steps_table_shows_the_clamped_sigma_of_each_step():
    mu = torch.tensor([0.5, 0.5, 0.25, 0.26], dtype=torch.float64)
    raw = torch.tensor([-0.1, -0.2, 0.01, 0.02], dtype=torch.float64)    # two weights with raw sigma < 0
    rnd = tables.round_from_cluster(mu, raw, cluster_round(mu, raw, 1.0))
    recorded = rnd.steps.set_index("centre")
    assert recorded.at[0.5, "sigma_mean"] == pytest.approx(-0.15)        # what the record holds
    table = tables.steps_table(rnd).set_index("centre")
    assert table.at[0.5, "sigma_mean"] == FLOOR and table.at[0.5, "sigma_std"] == 0.0
    assert table.at[0.25, "sigma_mean"] == pytest.approx(0.015) and table.at[0.25, "sigma_std"] == pytest.approx(0.005)
    assert list(tables.steps_table(rnd, columns=["step", "centre"]).columns) == ["step", "centre"]


def test_steps_table_of_a_real_run_matches_brute_force(run):
    for rnd in run.rounds:
        table = tables.steps_table(rnd)
        taken = table[table["n_taken"] > 0]
        assert (taken["sigma_mean"] >= FLOOR).all()
        _, sigma, _ = rnd.flat("pre")
        post_mu, _, post_fixed = rnd.flat("post")
        once = taken["centre"].value_counts()
        for _, step in taken.iterrows():
            if once[step["centre"]] == 1:    # the step's weights: fixed at its centre after the snap
                chosen = sigma.double().clamp(min=FLOOR)[post_fixed & (post_mu.double() == step["centre"])]
                assert len(chosen) == step["n_taken"]
                assert step["sigma_mean"] == pytest.approx(chosen.mean().item(), rel=1e-9)


def test_verdict_sentences_follow_the_numbers():
    from pwfn_viz.viz.verdicts import budget_winners, describe_winners, head_to_head
    table = pd.DataFrame({"method": ["pwfn", "kmeans@unique+ft", "kmeans@entropy+ft"], "top1": [98.61, 99.17, 97.5],
                          "unique": [96, 48, 30], "entropy": [4.2, 3.1, 2.9]})
    first = head_to_head(table, "kmeans@unique+ft")
    assert first.startswith("kmeans@unique+ft is more accurate than pwfn: top-1 99.17 % against 98.61 % (+0.56 points)")
    assert "48 unique values against 96" in first and "fewer values and more accurate" in first
    second = head_to_head(table, "kmeans@entropy+ft")
    assert second.startswith("pwfn is more accurate than kmeans@entropy+ft") and "(-1.11 points)" in second
    same = head_to_head(table.assign(top1=98.0), "kmeans@unique+ft")
    assert "equally accurate" in same
    with pytest.raises(ValueError, match="no method 'dkm'"):
        head_to_head(table, "dkm")
    summary = pd.DataFrame({"method": ["pwfn", "km", "pwfn", "km"], "budget": ["P4", "P4", "P1", "P1"],
                            "top1": [98.7, 98.8, 97.0, 99.0], "top1_std": [0.3, 0.2, 0.5, 0.4],
                            "entropy": [4.2, 5.9, 3.3, 3.2]})
    winners = budget_winners(summary, "pwfn", "km")
    assert list(winners["winner"]) == ["tie", "km"]            # 0.1 is within the seed spread, 2.0 is not
    assert winners.at["P1", "difference"] == pytest.approx(2.0)
    lines = describe_winners(winners)
    assert lines[0].startswith("P4: a tie") and lines[1].startswith("P1: km wins")
    assert lines[-1] == "Over 2 budgets: pwfn wins 0, km wins 1, 1 within the seed spread."
