"""The accuracy-against-entropy ablation on a tiny budget: every method measured, resumable, the
front computed by brute force."""

import pandas as pd
import pytest
import torch

from pwfn_viz import load_run
from pwfn_viz.analysis import frontier as F
from pwfn_viz.analysis.palettize import (coremltools_available, palettize_dkm, palettize_post_training,
                                         palettized_weights)
from pwfn_viz.core.metrics import codebook_stats

TINY = F.FrontierConfig(base=dict(pretrain_epochs=3, fractions=(0.5, 1.0), first_round_steps=8, steps_per_round=8),
                        seeds=(0,), budgets={"P1": {"max_powers": 1}}, bits=(2,), dkm_steps=3)


@pytest.mark.slow
def test_frontier_rows_and_resume(tmp_path):
    table = F.run_frontier(tmp_path, TINY, progress=False)
    methods = {"pwfn", "pwfn-frozen", "kmeans@unique+ft", "kmeans@entropy+ft"}
    if coremltools_available():
        methods |= {"ptq", "dkm"}
    assert set(table["method"]) == methods and table["seed"].eq(0).all()
    pwfn = table[table["method"] == "pwfn"].iloc[0]
    frozen = table[table["method"] == "pwfn-frozen"].iloc[0]
    assert frozen["sigma_rank_corr"] == pytest.approx(1.0)      # sigma frozen: the initialisation's ordering
    assert pwfn["sigma_rank_corr"] < 1.0
    run = load_run(tmp_path / "runs" / "pwfn-P1-seed0")
    assert run.config["cluster"]["max_powers"] == 1 and run.config["sigma_lr_mult"] == 100.0
    assert pwfn["entropy"] == pytest.approx(run.meta["rounds"][-1]["entropy"])
    assert load_run(tmp_path / "runs" / "pwfn-frozen-P1-seed0").config["sigma_lr_mult"] == 0.0
    # k-means at the learned run's unique count: the same number of values
    assert table[table["method"] == "kmeans@unique+ft"].iloc[0]["unique"] <= pwfn["unique"]
    # a second call finds every row done and adds nothing
    again = F.run_frontier(tmp_path, TINY, progress=False)
    pd.testing.assert_frame_equal(again, table)
    assert len(pd.read_csv(tmp_path / "frontier.csv")) == len(table)


def test_summarise_front_against_brute_force():
    rows = [("a", "x", s, t, e) for s, (t, e) in enumerate([(90, 3.0), (92, 3.2)])] + \
           [("b", "x", 0, 95, 2.5), ("c", "y", 0, 80, 1.0), ("d", "z", 0, 95, 2.5), ("e", "z", 0, 70, 1.5)]
    table = pd.DataFrame([{"method": m, "budget": b, "seed": s, "top1": t, "entropy": e, "unique": 1}
                          for m, b, s, t, e in rows])
    summary = F.summarise(table)
    a = summary[summary["method"] == "a"].iloc[0]
    assert a["top1"] == 91 and a["entropy"] == pytest.approx(3.1) and a["seeds"] == 2
    assert a["top1_std"] == pytest.approx(2 ** 0.5)
    points = list(zip(summary["entropy"], summary["top1"]))
    for (e, t), on in zip(points, summary["on_front"]):
        dominated = any(e2 <= e and t2 >= t and (e2, t2) != (e, t) for e2, t2 in points)
        assert on == (not dominated)
    assert dict(zip(summary["method"], summary["on_front"])) == {"a": False, "b": True, "c": True, "d": True, "e": False}


@pytest.mark.skipif(not coremltools_available(), reason="coremltools is an optional extra")
def test_palettization_uses_at_most_2_to_the_bits_values_per_weight_tensor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    for bits in (1, 2, 3):
        small = palettize_post_training(model, bits)
        for name, w in palettized_weights(small).items():
            if name.endswith("weight"):
                assert w.unique().numel() <= 2 ** bits
        # the original is untouched
        assert model[0].weight.unique().numel() == model[0].weight.numel()
    x = torch.randn(16, 1, 8, 8)
    y = torch.randint(0, 3, (16,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    dkm = palettize_dkm(model, 2, loader, steps=3)
    weights = palettized_weights(dkm)
    assert all(w.unique().numel() <= 4 for n, w in weights.items() if n.endswith("weight"))
    stats = codebook_stats(torch.cat([w.flatten() for w in weights.values()]))
    assert stats["unique"] <= 2 * 4 + 4 + 3      # two 4-value tables plus the float biases
    with pytest.raises(ValueError, match="1 to 8 bits"):
        palettize_post_training(model, 0)
    with pytest.raises(ValueError, match="at least one training step"):
        palettize_dkm(model, 2, loader, steps=0)
