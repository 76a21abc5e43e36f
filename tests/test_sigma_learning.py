"""The has-sigma-learned diagnostic against a hand computation and scipy's Spearman correlation."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from pwfn_viz.core.sigma_learning import (describe, is_learned, sigma_learning, sigma_learning_table, verdict,
                                         verdict_line)

U = 2.0 ** -10


def test_hand_worked_example():
    # free weights: sigma0 = (1, 2, 4, 8) u, trained sigma = (1, 3, 3, 8) u; a fifth weight is fixed
    s0 = torch.tensor([1, 2, 4, 8, 16]) * U
    s = torch.tensor([1, 3, 3, 8, 64]) * U
    free = torch.tensor([True, True, True, True, False])
    d = sigma_learning(s0, s, free)
    # relative changes 0, 1/2, 1/4, 0: median (0 + 1/4) / 2, two of four above 10 %
    assert d["sigma_n_free"] == 4
    assert d["sigma_median_change"] == pytest.approx(0.125)
    assert d["sigma_frac_moved"] == pytest.approx(0.5)
    # ranks (1, 2, 3, 4) against (1, 2.5, 2.5, 4): r = 4.5 / sqrt(5 * 4.5) = sqrt(0.9)
    assert d["sigma_rank_corr"] == pytest.approx(math.sqrt(0.9))
    assert d["sigma_learned"] is True     # 0.949 < 0.95 and 12.5 % >= 5 %


def test_unchanged_and_rescaled_sigma_is_not_learned():
    s0 = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 0.01 + 1e-4
    assert sigma_learning(s0, s0.clone())["sigma_learned"] is False
    # a uniform rescale moves every value but keeps the initialisation's picture
    grown = sigma_learning(s0, s0 * 3)
    assert grown["sigma_median_change"] == pytest.approx(2.0)
    assert grown["sigma_rank_corr"] == pytest.approx(1.0)
    assert grown["sigma_learned"] is False


def test_floor_and_too_few_weights():
    # a raw sigma below the sampling floor counts as the floor (what sampling uses), never negative
    d = sigma_learning(torch.tensor([1e-3, 2e-3]), torch.tensor([-5.0, 2e-3]))
    assert d["sigma_median_change"] == pytest.approx(0.5 * (1 - 2.0 ** -30 / 1e-3))
    one = sigma_learning(torch.tensor([1e-3, 2e-3]), torch.tensor([1e-3, 3e-3]), torch.tensor([False, True]))
    assert one["sigma_n_free"] == 1 and math.isnan(one["sigma_rank_corr"]) and one["sigma_learned"] is None
    none = sigma_learning(torch.tensor([1e-3]), torch.tensor([1e-3]), torch.tensor([False]))
    assert none["sigma_n_free"] == 0 and none["sigma_learned"] is None
    with pytest.raises(ValueError, match="same weights"):
        sigma_learning(torch.ones(3), torch.ones(4))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 300), st.integers(0, 2**31 - 1), st.floats(0.0, 2.0))
def test_rank_corr_matches_scipy(n, seed, noise):
    rng = np.random.default_rng(seed)
    s0 = rng.uniform(1e-4, 1e-2, n)
    s = s0 * np.exp(noise * rng.standard_normal(n))
    s[rng.random(n) < 0.2] = s0[0]    # ties on one side
    got = sigma_learning(torch.tensor(s0), torch.tensor(s))["sigma_rank_corr"]
    want = spearmanr(s0, s).statistic
    if np.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-9)
    change = np.abs(s - s0) / s0
    d = sigma_learning(torch.tensor(s0), torch.tensor(s))
    assert d["sigma_median_change"] == pytest.approx(np.median(change))
    assert d["sigma_frac_moved"] == pytest.approx(np.mean(change > 0.1))


def test_table_per_layer_and_all():
    init = {"a.weight": torch.tensor([1, 2, 4, 8]) * U, "a.bias": torch.tensor([1.0, 2.0]) * U}
    sigma = {"a.weight": torch.tensor([1, 3, 3, 8]) * U, "a.bias": torch.tensor([1.0, 2.0]) * U}
    fixed = {"a.weight": torch.zeros(4, dtype=torch.bool), "a.bias": torch.tensor([False, True])}
    tab = sigma_learning_table(init, sigma, fixed)
    assert list(tab["layer"]) == ["a.weight", "a.bias", "all"]
    assert tab.loc[0, "sigma_median_change"] == pytest.approx(0.125)
    assert tab.loc[1, "sigma_n_free"] == 1 and tab.loc[1, "sigma_learned"] is None
    everything = sigma_learning(torch.tensor([1, 2, 4, 8, 1]) * U, torch.tensor([1, 3, 3, 8, 1]) * U)
    assert tab.loc[2, "sigma_median_change"] == pytest.approx(everything["sigma_median_change"])
    assert tab.loc[2, "sigma_rank_corr"] == pytest.approx(everything["sigma_rank_corr"])
    line = describe(tab.iloc[-1].to_dict(), tab)
    assert "learned in 1/1 layers" in line and "median change" in line
    with pytest.raises(ValueError, match="same run"):
        sigma_learning_table(init, {"b.weight": torch.ones(2)}, fixed)


def test_verdict_thresholds():
    assert is_learned({"sigma_rank_corr": 0.5, "sigma_median_change": 0.2}) is True
    assert is_learned({"sigma_rank_corr": 0.99, "sigma_median_change": 0.2}) is False   # same ordering
    assert is_learned({"sigma_rank_corr": 0.5, "sigma_median_change": 0.01}) is False   # barely moved
    assert is_learned({"sigma_rank_corr": math.nan, "sigma_median_change": 0.2}) is None


def test_run_verdict_is_the_majority_of_rounds_that_can_tell():
    def r(i, learned):
        return {"round": i, "sigma_learned": learned, "sigma_median_change": 0.5, "sigma_rank_corr": 0.3,
                "sigma_frac_moved": 0.9, "sigma_layers_learned": "2/3"}
    # the last round judges only a few weights: one late "not learned" does not overturn the run
    v = verdict([r(0, True), r(1, True), r(2, True), r(3, False), r(4, None)])
    assert v["learned"] and (v["rounds_learned"], v["rounds_told"], v["not_learned"]) == (3, 4, [3])
    assert v["latest"]["round"] == 3
    assert verdict_line(v).startswith("sigma learned in 3 of 4 rounds; round 3:")
    v = verdict([r(0, False), r(1, False), r(2, True)])
    assert not v["learned"] and "sigma NOT learned in 2 of 3 rounds" in verdict_line(v)
    assert "sigma_lr_mult" in verdict_line(v)            # the advice comes with the warning
    assert verdict([r(0, True), r(1, False)])["learned"]  # a tie counts as learned
    assert verdict([r(0, None)]) is None and "no round yet" in verdict_line(None)
