"""The WhatIf widget's fast paths give exactly what the direct calls give: the round from inputs
sorted once (``cluster_sorted``), the codebook counted from the centres instead of a sort of the
snapped values, the accuracy of the plain network (also on its own thread), and the view's
arrays made once. Each is compared with the slower path it replaced, bit for bit."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import pwfn_viz
from pwfn_viz.analysis.tables import value_counts
from pwfn_viz.core.bayes import convert, flat_state, load_flat_state
from pwfn_viz.core.clustering import ClusterConfig, cluster_round
from pwfn_viz.core.clustering_cpu import SortedInputs, cluster_sorted
from pwfn_viz.core.metrics import codebook_stats, counted_codebook_stats, evaluate
from pwfn_viz.data.datasets import make_loader
from pwfn_viz.models.factory import create_model
from pwfn_viz.widgets import WhatIf
from pwfn_viz.widgets._data import SigmaMu, clamped_sigma, density_grid
from pwfn_viz.widgets._panels import MAX_POINTS, SigmaMuPanel
from pwfn_viz.widgets._panels_codebook import Codebooks, ValueCountsPanel
from pwfn_viz.widgets._whatif_data import (PlainNetwork, RoundArrays, fixed_value_counts, snapped_accuracy,
                                           snapped_value_counts, started, whatif_snap, whatif_view)

FRACTIONS = (0.03, 0.37, 0.8, 1.0)
CONFIGS = (ClusterConfig(), ClusterConfig(zero_fix=False, delta=2.0), ClusterConfig(delta=0.5, b=9, max_powers=2),
           ClusterConfig(b=4, sigma_join="divide"), ClusterConfig(sigma_join="keep", delta=0.75))


def _weights(n: int, seed: int, dtype=torch.float32):
    """mu ~ N(0, 0.05) with exact zeros of both signs and many weights on powers of two (ties, and
    free weights that equal a centre when a small fraction is fixed); sigma with zeros (floored)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, generator=g, dtype=torch.float64) * 0.05
    kind = torch.rand(n, generator=g, dtype=torch.float64)
    mu[kind < 0.06] = 0.0
    mu[(kind >= 0.06) & (kind < 0.09)] = -0.0
    on_grid = (kind >= 0.09) & (kind < 0.25)
    mu[on_grid] = torch.tensor([0.25, -0.125, 0.375, 2.0 ** -7, -0.5], dtype=torch.float64)[
        torch.randint(0, 5, (int(on_grid.sum()),), generator=g)]
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 0.02
    sigma[kind > 0.97] = 0.0
    return mu.to(dtype), sigma.to(dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of a float tensor (so that -0.0 and 0.0 differ), other tensors as they are."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


def _assert_same_round(got, want, label):
    for name in ("mu", "sigma", "fixed_mask", "assignment", "centres"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and torch.equal(_bits(a), _bits(b)), f"[{label}] {name}"
    assert list(got.steps.columns) == list(want.steps.columns), label
    for column in got.steps.columns:
        a, b = got.steps[column].to_numpy(), want.steps[column].to_numpy()
        assert a.dtype == b.dtype and np.array_equal(a.view(f"u{a.itemsize}") if a.dtype.kind == "f" else a,
                                                     b.view(f"u{b.itemsize}") if b.dtype.kind == "f" else b), (
            f"[{label}] steps[{column}]")


# ----------------------------------------------------------------------------- the round, the codebook

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_sorted_inputs_give_cluster_rounds_result_bit_for_bit(dtype):
    """One SortedInputs serves every fraction and config (nothing a round does changes it)."""
    mu, sigma = _weights(3000, seed=1, dtype=dtype)
    inputs = SortedInputs.of(mu, sigma)
    first = None
    for fraction in FRACTIONS:
        for config in CONFIGS:
            got = cluster_sorted(inputs, fraction, config, round_index=3)
            _assert_same_round(got, cluster_round(mu, sigma, fraction, config=config, round_index=3),
                               f"{dtype} {fraction} {config}")
            first = first or (fraction, config, got)
    fraction, config, got = first   # after every other round: still the same
    _assert_same_round(cluster_sorted(inputs, fraction, config, round_index=3), got, "again")
    for array in (inputs.mu_values, inputs.sigma_values, inputs.index, inputs.sorted_mu,
                  inputs.floored_sigma(config.sigma_floor)):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="must be in"):
            cluster_sorted(inputs, bad, config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_codebook_counted_from_the_centres_equals_a_sort_of_the_snapped_values(dtype):
    mu, sigma = _weights(4000, seed=2, dtype=dtype)
    inputs = SortedInputs.of(mu, sigma)
    merged = 0   # rounds where a centre equals the value of a free weight (its count adds to the centre's)
    for fraction in FRACTIONS:
        for config in CONFIGS:
            result = cluster_sorted(inputs, fraction, config)
            values, counts = snapped_value_counts(inputs, result)
            want_values, want_counts = torch.unique(result.mu, return_counts=True)
            assert torch.equal(values.to(want_values.dtype), want_values) and torch.equal(counts, want_counts)
            assert counted_codebook_stats(values, counts) == codebook_stats(result.mu)
            fixed_values, fixed_counts = fixed_value_counts(result, dtype)
            want_fixed = value_counts(result.mu[result.fixed_mask])
            assert np.array_equal(fixed_values.double().numpy(), want_fixed[0])
            assert np.array_equal(fixed_counts.numpy(), want_fixed[1])
            free = result.mu[~result.fixed_mask]
            merged += int(torch.isin(result.centres.to(dtype), free).any())
    assert merged >= 3


def test_whatif_snap_from_sorted_inputs_equals_the_plain_call():
    mu, sigma = _weights(5000, seed=3)
    inputs = SortedInputs.of(mu, sigma)
    for fraction, config in [(0.5, ClusterConfig(delta=2.0)), (1.0, ClusterConfig(b=5)), (0.9, ClusterConfig())]:
        got, got_stats = whatif_snap(mu, sigma, fraction, config, 2, inputs=inputs)
        want, want_stats = whatif_snap(mu, sigma, fraction, config, 2)
        _assert_same_round(got, want, f"{fraction}")
        assert got_stats == want_stats and got_stats["unique"] > 1


# ----------------------------------------------------------------------------- the evaluation

@pytest.fixture(scope="module")
def digits():
    return pwfn_viz.create_dataset("digits")


def test_plain_network_accuracy_equals_loading_the_converted_network(digits):
    """Every number of ``evaluate`` (top-1, top-5 and the loss, a sum over the test split that
    any changed logit would move), for two re-clusterings in a row, from the cached test batches
    and from the loader, on the widget's thread or another, with one and two torch threads."""
    torch.manual_seed(0)
    state = convert(create_model("digits_cnn", num_classes=10, in_chans=1)).state_dict()

    def converted():   # a network of its own each time (a deepcopy would share the parametrized classes)
        model = convert(create_model("digits_cnn", num_classes=10, in_chans=1))
        model.load_state_dict(state)
        return model.eval()

    mu, sigma, _ = flat_state(converted())
    loader = make_loader(digits.test, 64)
    plain = PlainNetwork(converted(), loader)
    assert isinstance(plain.batches, list) and not any(hasattr(m, "parametrizations") for m in plain.model.modules())
    from_loader = PlainNetwork(converted(), loader)
    from_loader.batches = loader   # (a test split too large to keep)
    threads = torch.get_num_threads()
    try:
        for fraction, config, n_threads in [(0.9, ClusterConfig(delta=2.0, b=4), 1), (1.0, ClusterConfig(), 2)]:
            torch.set_num_threads(n_threads)
            result = cluster_round(mu, sigma, fraction, config=config)
            want = snapped_accuracy(converted(), result, loader)
            assert plain.accuracy(result) == want and from_loader.accuracy(result) == want
            assert started(lambda: plain.accuracy(result))() == want
    finally:
        torch.set_num_threads(threads)


def test_an_error_on_the_evaluation_thread_is_raised_where_the_value_is_asked_for():
    def fail():
        raise KeyError("missing")
    later = started(fail)
    with pytest.raises(KeyError, match="missing"):
        later()


# ----------------------------------------------------------------------------- the view and the widget

def test_view_from_round_arrays_equals_the_view_computed_afresh():
    mu, sigma = _weights(MAX_POINTS + 2000, seed=4)
    pre_fixed = torch.rand(mu.numel(), generator=torch.Generator().manual_seed(5)) < 0.3
    arrays = RoundArrays(["w"], mu, sigma, pre_fixed)
    for fraction in (0.5, 1.0):
        result = cluster_round(mu, sigma, fraction)
        view = whatif_view(["w"], mu, sigma, pre_fixed, result, 1, 2.0 ** -7, arrays)
        fixed, before = result.fixed_mask.numpy(), pre_fixed.numpy()
        assert np.array_equal(view.status, np.where(~fixed, 2, np.where(before, 0, 1)).astype(np.int8))
        assert np.array_equal(view.mu, mu.double().numpy())
        assert np.array_equal(view.sigma, clamped_sigma(sigma.double().numpy()))
        assert np.array_equal(view.post, result.mu.double().numpy())
        assert view.fraction == float(fixed.mean()) and view.status.dtype == np.int8
        h, extent = view.density()
        want_h, want_extent = density_grid(mu.double().numpy(), clamped_sigma(sigma.double().numpy()))
        assert np.array_equal(h, want_h) and extent == want_extent


def _png(panel_type, size, data) -> bytes:
    fig = Figure(figsize=size, dpi=72)
    panel_type(*size, target=fig).show(data)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whatif") / "run"
    pwfn_viz.run(pwfn_viz.RunConfig(model="digits_cnn", pretrain_epochs=1, first_round_epochs=0.05,
                                    epochs_per_round=0.05, fractions=(0.5, 1.0), threads=1),
                 out_dir=out, progress=False, verbose=False)
    return pwfn_viz.load_run(out)


def test_widget_numbers_and_pictures_equal_the_direct_calls(run, digits):
    """Slider moves to values never shown: stats, accuracy and both panels' data and pictures are
    those of cluster_round, codebook_stats, load_flat_state + evaluate, value_counts and the view
    computed afresh."""
    w = WhatIf(run, round_index=-1, data=digits)
    mu, sigma, pre_fixed = run.rounds[-1].flat("pre")
    for delta, b, fraction in [(2.0, 5, 0.7), (0.5, 5, 0.7), (0.5, 9, 1.0)]:
        w.set(delta=delta, b=b, fraction=fraction)
        config = dataclasses.replace(ClusterConfig(**run.config["cluster"]), delta=delta, b=b)
        result = cluster_round(mu, sigma, fraction, config=config, round_index=1)
        _assert_same_round(w.result, result, f"{delta} {b}")
        model = run.model_at(1)
        load_flat_state(model, result.mu, result.sigma, result.fixed_mask)
        accuracy = evaluate(model, make_loader(digits.test, 512))
        assert {k: w.stats[k] for k in ("top1", "top5")} == {k: accuracy[k] for k in ("top1", "top5")}
        stats = codebook_stats(result.mu)
        assert {k: w.stats[k] for k in stats} == stats

        counts = value_counts(result.mu[result.fixed_mask])
        shown = w.plot.data.series["what-if"]
        assert np.array_equal(shown[0], counts[0]) and np.array_equal(shown[1], counts[1])
        codebooks = Codebooks({"what-if": counts, "recorded": w.plot.data.series["recorded"]},
                              "values of the fixed weights", 1)
        assert _png(ValueCountsPanel, (5.0, 3.6), codebooks) == _png(ValueCountsPanel, (5.0, 3.6), w.plot.data)

        fixed, before = result.fixed_mask.numpy(), pre_fixed.bool().numpy()
        steps = result.steps
        afresh = SigmaMu(1, list(run.rounds[-1].mu.keys()), mu.double().numpy(), clamped_sigma(sigma.double().numpy()),
                         np.where(~fixed, 2, np.where(before, 0, 1)).astype(np.int8), result.mu.double().numpy(),
                         steps["centre"].to_numpy(float), steps["P"].to_numpy(int), steps["delta"].to_numpy(float),
                         2.0 ** -b, float(fixed.mean()), title=w.bands.data.title)
        assert _png(SigmaMuPanel, (5.0, 3.9), afresh) == _png(SigmaMuPanel, (5.0, 3.9), w.bands.data)
