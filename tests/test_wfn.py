"""WFN baseline (docs/method.md, section 8) on hand-worked examples from its rules, and through the pipeline."""
import math

import pytest
import torch

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.baselines.wfn import WFN_FRACTIONS, wfn_allowance, wfn_centres, wfn_round

NONE_FIXED = lambda n: torch.zeros(n, dtype=torch.bool)  # noqa: E731


def test_allowance_decays_linearly_from_ten_delta_to_delta():
    assert wfn_allowance(0, 10, 0.01) == pytest.approx(0.1)
    assert wfn_allowance(9, 10, 0.01) == pytest.approx(0.01)
    assert wfn_allowance(3, 4, 0.02) == pytest.approx(0.02)
    assert wfn_allowance(1, 3, 0.01) == pytest.approx(0.055)


def test_centres_are_powers_refined_by_signed_residuals():
    # order 1 with b=2 up to 1: 2^0, 2^-1, 2^-2; order 2 adds 1 +- 1/2, 1 +- 1/4, 1/2 +- 1/4
    assert wfn_centres(1, 1.0, b=2).tolist() == [-0.25, 0.25, -0.5, 0.5, -1.0, 1.0]
    positive = sorted(v for v in wfn_centres(2, 1.0, b=2).tolist() if v > 0)
    assert positive == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    # order 1 reaches the power of two at or above the largest |w|
    assert max(wfn_centres(1, 3.0).tolist()) == 4.0


def test_running_mean_prefix_and_order_growth():
    # centre 1 is nearest for all four weights; relative distances .0099, .0196, .0385, .2308 give
    # running means .0099, .0147, .0227, .0747: with allowance .03 it takes the first three.
    # 1.3 then fits nothing within .03 at order 1 or 2 (1.25 is .038 away) and goes to 1.3125 at order 3.
    w = torch.tensor([1.01, 1.02, 1.04, 1.3])
    res = wfn_round(w, NONE_FIXED(4), 1.0, 0.03)
    assert res.mu.tolist() == [1.0, 1.0, 1.0, 1.3125]
    steps = res.steps
    assert steps["centre"].tolist() == [1.0, 1.3125] and steps["n_taken"].tolist() == [3, 1]
    assert steps["P"].tolist() == [1, 3] and steps["n_fit"].tolist()[0] == 4


def test_cap_zero_band_and_fixed_weights_kept():
    w = torch.tensor([0.001, -0.003, 0.0051, 0.5, 0.26, 0.9])
    fixed = torch.tensor([False, False, False, False, False, True])
    res = wfn_round(w, fixed, 0.5, 0.05)          # target 3, one already fixed: two more
    assert res.fixed_mask.sum() == 3 and res.fixed_mask[5]
    assert res.mu[5].item() == pytest.approx(0.9)                  # kept, not re-clustered
    assert res.mu[:2].tolist() == [0.0, 0.0] and not res.fixed_mask[2]   # smallest |w| first
    res = wfn_round(w, fixed, 1.0, 0.05)
    assert res.mu[2].item() == 0.0 and res.mu[3].item() == 0.5 and res.mu[4].item() == 0.25


def test_fallback_meets_the_target_beyond_the_allowance():
    torch.manual_seed(0)
    w = torch.randn(200) * 0.1
    res = wfn_round(w, NONE_FIXED(200), 1.0, 1e-9)
    assert res.fixed_mask.all()
    assert math.isinf(res.steps["delta"].max())
    centres = wfn_centres(4, w.abs().max().item())
    assert torch.isin(res.mu.double()[res.mu != 0], centres).all()


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        wfn_round(torch.tensor([float("nan")]), NONE_FIXED(1), 1.0, 0.1)
    with pytest.raises(ValueError, match="allowance"):
        wfn_round(torch.tensor([1.0]), NONE_FIXED(1), 1.0, 0.0)


@pytest.mark.slow
def test_wfn_run_is_recorded_like_pwfn(tmp_path):
    cfg = RunConfig.wfn(model="digits_mlp", pretrain_epochs=2, first_round_epochs=0.2, epochs_per_round=0.3,
                        fractions=(0.5, 1.0), threads=1)
    assert cfg.optimizer == "adam" and cfg.lr == 2e-5 and RunConfig.wfn().fractions == WFN_FRACTIONS
    run = pwfn_viz.run(cfg, tmp_path / "wfn", progress=False, verbose=False)
    assert run.complete and run.config["method"] == "wfn"
    mu, _, fixed = run.rounds[-1].flat()
    assert fixed.all() and run.rounds[-1].metrics["unique"] == torch.unique(mu).numel()
    # the round-0 weights stay fixed in round 1 (WFN does not re-cluster)
    mu0, _, fixed0 = run.rounds[0].flat()
    assert torch.equal(mu[fixed0], mu0[fixed0])
    with pytest.raises(ValueError, match="unknown method"):
        RunConfig(method="kmeans??")
