"""Noise resilience and calibration (docs/method.md, section 6): pwfn_viz.analyse and `pwfn-viz analyse`.

References: a hand-made linear classifier with known sigma, brute-force twins of the ensemble and
the reliability bins, a hand-worked ECE, and the metrics the pipeline recorded for the same run.
"""
import doctest
import importlib
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import pwfn_viz  # noqa: E402
from pwfn_viz.cli import main  # noqa: E402
from pwfn_viz.viz.analyse_plots import plot_noise_accuracy, plot_reliability  # noqa: E402

A = importlib.import_module("pwfn_viz.analysis.noise")   # the module (pwfn_viz.analyse is the function)
D_INFO, D_DEAD, C = 6, 10, 3


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "analyse"
    return pwfn_viz.run(pwfn_viz.RunConfig(model="digits_mlp", pretrain_epochs=2, first_round_epochs=0.1,
                                           epochs_per_round=0.2, fractions=(0.5, 1.0), threads=1),
                        out_dir=out, progress=False, verbose=False)


def linear_problem(n=300, seed=0):
    """A linear classifier over D_INFO informative inputs plus D_DEAD inputs that are always 0;
    labels from the true weights plus logit noise (so accuracy and calibration are not trivial)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, D_INFO + D_DEAD, generator=g)
    b = torch.zeros(C)
    x = torch.zeros(n, D_INFO + D_DEAD)
    x[:, :D_INFO] = torch.randn(n, D_INFO, generator=g)
    y = (x @ w.T + 0.7 * torch.randn(n, C, generator=g)).argmax(1)
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]      # last batch is odd-sized
    return nn.Linear(D_INFO + D_DEAD, C), {"weight": w, "bias": b}, batches, x, y


def brute_bins(conf, correct, n_bins=15):
    rows = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        rows.append((len(inside), np.mean([conf[i] for i in inside]) if inside else math.nan,
                     np.mean([correct[i] for i in inside]) if inside else math.nan))
    ece = sum(n / len(conf) * abs(a - c) for n, c, a in rows if n)
    return rows, ece


# ---------------------------------------------------------------------------------------------
# Calibration
def test_ece_hand_worked():
    # bins of width 1/15: 0.95 -> (14/15, 1], 0.85 -> (12/15, 13/15], 0.62 and 0.61 -> (9/15, 10/15],
    # 0.3 -> (4/15, 5/15]. ECE = (|1-.95| + |0-.85| + 2|1-.615| + |0-.3|) / 5 = 1.97 / 5
    conf = torch.tensor([0.95, 0.85, 0.62, 0.61, 0.3], dtype=torch.float64)
    correct = torch.tensor([True, False, True, True, False])
    assert A.expected_calibration_error(conf, correct) == pytest.approx(0.394, abs=1e-12)
    table = A.reliability_table(conf, correct)
    assert table["count"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 1, 0, 1]
    assert table.loc[9, "confidence"] == pytest.approx(0.615) and table.loc[9, "accuracy"] == 1.0
    assert table["confidence"].isna().sum() == 11 and table["accuracy"].isna().sum() == 11
    # bins are (lo, hi]; 0 goes to the first bin (edges exact in binary with 4 bins)
    edges = A.reliability_table(torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), torch.ones(5, dtype=torch.bool), 4)
    assert edges["count"].tolist() == [2, 1, 1, 1]
    # perfectly calibrated: ECE 0
    assert A.expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([True, True])) == 0.0


def test_reliability_bins_match_brute_force():
    rng = np.random.default_rng(0)
    conf = np.concatenate([rng.uniform(0, 1, 500), [0.0, 1.0, 1e-9]])
    correct = rng.uniform(0, 1, conf.size) < conf
    table = A.reliability_table(torch.tensor(conf), torch.tensor(correct))
    rows, ece = brute_bins(conf.tolist(), correct.tolist())
    assert table["count"].tolist() == [n for n, _, _ in rows]
    np.testing.assert_allclose(table["confidence"], [c for _, c, _ in rows], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(table["accuracy"], [a for _, _, a in rows], rtol=1e-12, equal_nan=True)
    assert A.expected_calibration_error(torch.tensor(conf), torch.tensor(correct)) == pytest.approx(ece, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Weight samples
def test_sigma_zero_weights_never_change_and_isotropic_has_the_same_total_variance():
    _, mu, _, _, _ = linear_problem()
    sigma = {"weight": torch.zeros(C, D_INFO + D_DEAD), "bias": torch.tensor([0.0, 0.5, 0.0])}
    sigma["weight"][:, D_INFO:] = 3.0
    n = sum(s.numel() for s in sigma.values())
    s_iso = A.isotropic_std(sigma)
    assert n * s_iso ** 2 == pytest.approx(float(sum((s.double() ** 2).sum() for s in sigma.values())), rel=1e-12)
    for learned, iso in A.weight_samples(mu, sigma, 5, seed=0):
        zero = {k: sigma[k] == 0 for k in sigma}
        for k in mu:
            assert torch.equal(learned[k][zero[k]], mu[k][zero[k]])        # sigma 0: exactly mu
            assert (learned[k][~zero[k]] != mu[k][~zero[k]]).all()
            assert (iso[k] != mu[k]).all()                                  # isotropic moves every weight
            # one shared draw: (iso - mu) / s_iso == (learned - mu) / sigma where sigma > 0
            torch.testing.assert_close((iso[k] - mu[k])[~zero[k]] / s_iso,
                                       ((learned[k] - mu[k]) / sigma[k])[~zero[k]], rtol=1e-4, atol=1e-4)


def test_isotropic_samples_have_the_learned_total_variance():
    g = torch.Generator().manual_seed(1)
    mu = {"a": torch.randn(200, 100, generator=g), "b": torch.zeros(5000)}
    sigma = {"a": torch.rand(200, 100, generator=g) * 0.2, "b": torch.full((5000,), 0.05)}
    total = float(sum((s.double() ** 2).sum() for s in sigma.values()))
    (learned, iso), = A.weight_samples(mu, sigma, 1, seed=3)
    spread = lambda d: float(sum(((d[k] - mu[k]).double() ** 2).sum() for k in mu))  # noqa: E731
    assert spread(iso) == pytest.approx(total, rel=0.03)       # 25k draws: chi-square within ~1%
    assert spread(learned) == pytest.approx(total, rel=0.03)


def test_weight_samples_are_reproducible_with_a_seed():
    _, mu, _, _, _ = linear_problem()
    sigma = {k: torch.full_like(v, 0.1) for k, v in mu.items()}
    first = list(A.weight_samples(mu, sigma, 3, seed=7))
    again = list(A.weight_samples(mu, sigma, 3, seed=7))
    other = list(A.weight_samples(mu, sigma, 3, seed=8))
    for (l1, i1), (l2, i2), (l3, _) in zip(first, again, other):
        assert all(torch.equal(l1[k], l2[k]) and torch.equal(i1[k], i2[k]) for k in mu)
        assert not torch.equal(l1["weight"], l3["weight"])


# ---------------------------------------------------------------------------------------------
# analyse_model on the hand-made classifier
def test_learned_noise_on_dead_inputs_is_harmless_isotropic_noise_is_not():
    model, mu, data, _, _ = linear_problem()
    sigma = {"weight": torch.zeros(C, D_INFO + D_DEAD), "bias": torch.zeros(C)}
    sigma["weight"][:, D_INFO:] = 3.0                        # large sigma only where the input is 0
    result = A.analyse_model(model, mu, sigma, data, n_samples=4, seed=0)
    mean_top1 = result.summary.at["mean weights", "top1"]
    assert (result.samples["learned_top1"] == mean_top1).all()
    assert result.summary.at["learned ensemble", "top1"] == mean_top1
    assert result.summary.at["isotropic samples", "top1"] < mean_top1 - 10
    assert result.sigma_iso == pytest.approx(math.sqrt(C * D_DEAD * 9 / (C * (D_INFO + D_DEAD) + C)))
    assert result.total_variance == pytest.approx(C * D_DEAD * 9)


def test_all_sigma_zero_every_sample_equals_the_mean_weights():
    model, mu, data, _, _ = linear_problem()
    sigma = {k: torch.zeros_like(v) for k, v in mu.items()}
    result = A.analyse_model(model, mu, sigma, data, n_samples=3, seed=0)
    mean = result.summary.loc["mean weights"]
    for kind in ("learned", "isotropic"):
        assert (result.samples[f"{kind}_top1"] == mean["top1"]).all()
        assert (result.samples[f"{kind}_nll"] == mean["nll"]).all()
        assert (result.samples[f"{kind}_ece"] == mean["ece"]).all()
        assert result.summary.at[f"{kind} ensemble", "top1"] == mean["top1"]
        assert result.summary.at[f"{kind} sigma samples" if kind == "learned" else "isotropic samples",
                                 "top1_std"] == 0.0


def test_analyse_model_matches_a_brute_force_twin():
    model, mu, data, x, y = linear_problem()
    g = torch.Generator().manual_seed(5)
    sigma = {k: torch.rand(v.shape, generator=g) * 0.6 for k, v in mu.items()}
    result = A.analyse_model(model, mu, sigma, data, n_samples=4, seed=11)
    probs = {"learned": [], "isotropic": []}
    for learned, iso in A.weight_samples(mu, sigma, 4, seed=11):
        for kind, w in (("learned", learned), ("isotropic", iso)):
            probs[kind].append(torch.softmax(nn.functional.linear(x, w["weight"], w["bias"]).double(), 1))
    for kind, row in (("learned", "learned sigma samples"), ("isotropic", "isotropic samples")):
        top1 = [100 * (p.argmax(1) == y).double().mean().item() for p in probs[kind]]
        assert result.samples[f"{kind}_top1"].tolist() == pytest.approx(top1, abs=1e-9)
        assert result.summary.at[row, "top1"] == pytest.approx(np.mean(top1), abs=1e-9)
        assert result.summary.at[row, "top1_std"] == pytest.approx(np.std(top1), abs=1e-9)
        ens = torch.stack(probs[kind]).mean(0)
        conf, pred = ens.max(1)
        rows, ece = brute_bins(conf.tolist(), (pred == y).tolist())
        summary = result.summary.loc[f"{kind} ensemble"]
        assert summary["top1"] == pytest.approx(100 * (pred == y).double().mean().item(), abs=1e-9)
        assert summary["nll"] == pytest.approx(-ens[torch.arange(len(y)), y].log().mean().item(), rel=1e-5)
        assert summary["ece"] == pytest.approx(100 * ece, abs=1e-4)
        assert result.reliability[f"{kind} ensemble"]["count"].tolist() == [n for n, _, _ in rows]
    assert list(result.summary.index) == list(A.ROWS)
    assert list(result.summary.columns) == ["top1", "top1_std", "ece", "nll"]


def test_analyse_model_refuses_bad_inputs():
    model, mu, data, x, y = linear_problem()
    sigma = {k: torch.full_like(v, 0.1) for k, v in mu.items()}
    shuffled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    with pytest.raises(ValueError, match="same order every pass"):
        A.analyse_model(model, mu, sigma, shuffled, n_samples=2)
    with pytest.raises(ValueError, match="not a parameter"):
        A.analyse_model(model, {"w": mu["weight"]}, {"w": sigma["weight"]}, data)
    with pytest.raises(ValueError, match="n_samples"):
        A.analyse_model(model, mu, sigma, data, n_samples=0)


# ---------------------------------------------------------------------------------------------
# analyse(run) on a real record
def test_analyse_run_agrees_with_the_recorded_metrics(small_run):
    last = small_run.rounds[-1]
    pre = pwfn_viz.analyse(small_run, n_samples=2)
    post = pwfn_viz.analyse(str(small_run.path), which="post", n_samples=2)
    assert pre.summary.at["mean weights", "top1"] == pytest.approx(last.metrics["top1_before"], abs=1e-9)
    assert pre.summary.at["mean weights", "nll"] == pytest.approx(last.metrics["loss_before"], rel=1e-5)
    assert post.summary.at["mean weights", "top1"] == pytest.approx(last.metrics["top1_after"], abs=1e-9)
    assert pre.sigma_iso == pytest.approx(A.isotropic_std(last.pre_sigma))
    assert post.sigma_iso == pytest.approx(A.isotropic_std(last.sigma))
    assert pre.n_weights == small_run.meta["n_converted"]
    assert all(t["count"].sum() == 360 for t in pre.reliability.values())      # digits test split
    assert (pre.round_index, pre.which, len(pre.samples)) == (last.index, "pre", 2)
    assert "round 1 pre-snap" in repr(pre) and "<table" in pre._repr_html_()
    start = pwfn_viz.analyse(small_run, round_index=None, n_samples=1)
    assert start.summary.at["mean weights", "top1"] == pytest.approx(
        pwfn_viz.evaluate(small_run.plain_model_at(None), A._as_loader(A._run_data(small_run)))["top1"])


def test_analyse_run_is_reproducible(small_run):
    a = pwfn_viz.analyse(small_run, round_index=0, n_samples=2, seed=4)
    b = pwfn_viz.analyse(small_run, round_index=0, n_samples=2, seed=4)
    c = pwfn_viz.analyse(small_run, round_index=0, n_samples=2, seed=5)
    pd.testing.assert_frame_equal(a.summary, b.summary)
    pd.testing.assert_frame_equal(a.samples, b.samples)
    assert not a.samples["learned_nll"].equals(c.samples["learned_nll"])


def test_analyse_run_clear_errors(small_run):
    with pytest.raises(ValueError, match="which='mid'"):
        pwfn_viz.analyse(small_run, which="mid")
    with pytest.raises(IndexError, match="rounds 0..1"):
        pwfn_viz.analyse(small_run, round_index=5)


# ---------------------------------------------------------------------------------------------
# Plots and CLI
def test_plots_draw_the_result(small_run):
    result = pwfn_viz.analyse(small_run, n_samples=3)
    fig = plot_reliability(result)
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 15
    expected = np.nan_to_num(result.reliability["mean weights"]["accuracy"].to_numpy())
    np.testing.assert_allclose([b.get_height() for b in bars[:15]], expected)
    fig2, ax = plt.subplots()
    assert plot_noise_accuracy(result, ax=ax) is fig2
    points = [line for line in ax.lines if line.get_label() == "samples"]
    np.testing.assert_allclose(points[0].get_ydata(), result.samples["learned_top1"])
    plt.close("all")


@pytest.mark.slow
def test_cli_analyse_prints_summary_and_writes_figures(small_run, tmp_path, capsys):
    assert main(["analyse", str(small_run.path), "--samples", "2", "--out", str(tmp_path / "fig"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "learned ensemble" in out and "isotropic samples" in out and "AnalysisResult(round 1" in out
    for name in ("reliability.png", "reliability.pdf", "noise.png", "noise.pdf"):
        assert (tmp_path / "fig" / name).stat().st_size > 0
    assert main(["analyse", str(tmp_path / "missing")]) == 2
    assert "not a pwfn_viz run directory" in capsys.readouterr().err
    assert main(["analyse", str(small_run.path), "--round", "9"]) == 2
    assert "rounds 0..1" in capsys.readouterr().err


def test_module_doctests():
    results = doctest.testmod(A)
    assert results.failed == 0 and results.attempted >= 4
