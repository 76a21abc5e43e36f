"""Training settings for sigma (learning-rate multiplier, log parameterisation, step budgets) and the
has-sigma-learned diagnostic as a run records and prints it."""
import copy

import pytest
import torch
import torch.nn as nn

import pwfn_viz
from pwfn_viz import RunConfig, cli
from pwfn_viz.core.bayes import bayes_tensors, convert
from pwfn_viz.core.sigma_learning import sigma_learning
from pwfn_viz.train.loop import train_steps

LR = 0.01


def _model():
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    with torch.no_grad():   # half of the first layer fixed: its sigma must not move
        t = bayes_tensors(model)[0]
        t.fixed[:4] = True
        t.fixed_value.copy_(torch.where(t.fixed, t.mu, torch.zeros_like(t.mu)))
    return model


def _loader():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)


def _step(model, **kw):
    """One plain SGD step (no momentum, clip or decay) with a fixed noise draw."""
    torch.manual_seed(7)
    train_steps(model, _loader(), 0, steps=1, lr=LR, momentum=0.0, weight_decay=0.0, grad_clip=0.0,
                device="cpu", bayesian=True, progress=False, **kw)
    return {t.name: (t.mu.detach().clone(), t.sigma.detach().clone()) for t in bayes_tensors(model)}


def test_sigma_lr_mult_scales_exactly_the_sigma_update():
    start = _model()
    before = {t.name: (t.mu.detach().clone(), t.sigma.detach().clone()) for t in bayes_tensors(start)}
    plain = _step(copy.deepcopy(start))
    fast = _step(copy.deepcopy(start), sigma_lr_mult=30.0)
    frozen = _step(copy.deepcopy(start), sigma_lr_mult=0.0)
    for name, (mu0, s0) in before.items():
        torch.testing.assert_close(fast[name][0], plain[name][0], rtol=0, atol=0)      # mu: the same step
        torch.testing.assert_close(fast[name][1] - s0, 30.0 * (plain[name][1] - s0), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(frozen[name][1], s0, rtol=0, atol=0)
    assert any((plain[n][1] != before[n][1]).any() for n in before)   # sigma did move
    fixed = bayes_tensors(start)[0].fixed
    assert torch.equal(fast["0.weight"][1][fixed], before["0.weight"][1][fixed])   # fixed sigma frozen


def test_log_parameterisation_is_sgd_on_log_sigma():
    start = _model()
    s0 = {t.name: t.sigma.detach().clone().double() for t in bayes_tensors(start)}
    plain = _step(copy.deepcopy(start))
    mult = 2000.0
    logged = _step(copy.deepcopy(start), sigma_lr_mult=mult, sigma_param="log")
    for name, sigma in s0.items():
        grad = (sigma - plain[name][1].double()) / LR      # dL/dsigma of the same noise draw
        want = torch.exp(torch.log(sigma) - LR * mult * sigma * grad)
        torch.testing.assert_close(logged[name][1].double(), want, rtol=2e-4, atol=1e-12)
        torch.testing.assert_close(logged[name][0], plain[name][0], rtol=0, atol=0)
        assert (logged[name][1] > 0).all()


def test_step_budget_and_config_validation():
    cfg = RunConfig(first_round_steps=5, steps_per_round=40)
    assert cfg.round_budget(0, 12) == 5 and cfg.round_budget(3, 12) == 40
    paper = RunConfig()
    assert paper.round_budget(0, 12) == 1 and paper.round_budget(1, 12) == 36   # 5 % of an epoch, 3 epochs
    with pytest.raises(ValueError, match="steps_per_round=2.5 must be a whole number"):
        RunConfig(steps_per_round=2.5)
    with pytest.raises(ValueError, match="sigma_lr_mult=-1 must be >= 0"):
        RunConfig(sigma_lr_mult=-1)
    with pytest.raises(ValueError, match="unknown sigma parameterisation 'softplus'"):
        RunConfig(sigma_param="softplus")
    demo = RunConfig.demo()
    assert (demo.sigma_lr_mult, demo.steps_per_round, demo.first_round_steps, demo.preset) == (100.0, 120, 120,
                                                                                              "digits-demo")
    assert demo.lr == paper.lr and demo.fractions == paper.fractions and demo.weight_decay == paper.weight_decay


QUICK = dict(pretrain_epochs=8, fractions=(0.5, 0.8, 1.0), first_round_steps=60, steps_per_round=60)


@pytest.fixture(scope="module")
def learned_and_frozen(tmp_path_factory):
    base = tmp_path_factory.mktemp("sigma")
    learned = pwfn_viz.run(RunConfig.demo(**QUICK), base / "learned", progress=False, verbose=False)
    frozen = pwfn_viz.run(RunConfig.demo(**QUICK, sigma_lr_mult=0.0), base / "frozen", progress=False, verbose=False)
    return learned, frozen


@pytest.mark.slow
def test_runs_record_whether_sigma_learned(learned_and_frozen, capsys):
    learned, frozen = learned_and_frozen
    assert learned.config["sigma_lr_mult"] == 100.0 and learned.config["steps_per_round"] == 60
    # recorded per round equals the diagnostic computed here from the recorded tensors
    for run in (learned, frozen):
        for r in run.rounds:
            free = torch.cat([~f.flatten() for f in r.pre_fixed.values()])
            want = sigma_learning(torch.cat([s.flatten() for s in run.initial_sigma.values()]),
                                  torch.cat([s.flatten() for s in r.pre_sigma.values()]), free)
            for key in ("sigma_n_free", "sigma_median_change", "sigma_rank_corr", "sigma_frac_moved", "sigma_learned"):
                assert r.metrics[key] == pytest.approx(want[key]), (run.path, r.index, key)
            per_layer = run.sigma_learning_layers(r.index)
            assert list(per_layer["layer"]) == [*run.meta["tensors"], "all"]
    assert all(r.metrics["sigma_learned"] for r in learned.rounds)
    assert learned.sigma_warning() is None
    assert not any(r.metrics["sigma_learned"] for r in frozen.rounds)
    assert frozen.rounds[-1].metrics["sigma_rank_corr"] == pytest.approx(1.0)
    assert "sigma_lr_mult" in frozen.sigma_warning()
    # pwfn-viz show prints the table and the plain warning
    assert cli.main(["show", str(frozen.path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING" in out and "NOT learned" in out and "rank correlation 1.00" in out
    assert cli.main(["show", str(learned.path)]) == 0
    assert "sigma learned in 3 of 3 rounds; round 2:" in capsys.readouterr().out
    assert "sigma learned in 3 of 3 rounds" in (learned.path / "log.txt").read_text()
    assert "WARNING: sigma NOT learned in 3 of 3 rounds" in (frozen.path / "log.txt").read_text()


@pytest.mark.slow
def test_widgets_show_the_diagnostic(learned_and_frozen):
    from pwfn_viz.widgets import RoundExplorer, UncertaintyExplorer
    learned, frozen = learned_and_frozen
    w = RoundExplorer(frozen)
    assert "sigma not learned" in w.sigma_learning.value and "rank correlation 1.00" in w.sigma_learning.value
    w = RoundExplorer(learned)
    assert "-&gt; learned" in w.sigma_learning.value and "not learned" not in w.sigma_learning.value
    u = UncertaintyExplorer(frozen, layer="conv2.weight", round_index=0)
    assert "conv2.weight, round 0" in u.sigma_learning.value and "sigma not learned" in u.sigma_learning.value


def test_cli_sigma_options_and_the_demo_preset():
    parser = cli.build_parser()
    demo = cli.run_config(["run", "--preset", "digits-demo"])
    assert demo == RunConfig.demo()
    # an epoch budget given explicitly replaces the preset's step budget for those rounds only
    longer = cli.run_config(["run", "--preset", "digits-demo", "--epochs", "2"])
    assert (longer.steps_per_round, longer.epochs_per_round, longer.first_round_steps) == (None, 2.0, 120)
    own = cli.run_config(["run", "--sigma-lr-mult", "5", "--steps", "7", "--first-steps", "3",
                                         "--sigma-param", "log"])
    assert (own.sigma_lr_mult, own.steps_per_round, own.first_round_steps, own.sigma_param) == (5.0, 7, 3, "log")
    paper = cli.run_config(["run"])
    assert (paper.sigma_lr_mult, paper.sigma_param, paper.steps_per_round) == (1.0, "raw", None)
    assert cli.main(["run", "--sigma-param", "softplus"]) == 2


def test_a_diverged_round_is_a_clear_error(tmp_path):
    cfg = RunConfig(pretrain_epochs=1, fractions=(0.5, 1.0), first_round_steps=3, steps_per_round=3,
                    sigma_param="log", sigma_lr_mult=1e12)   # exp of a huge step: sigma overflows
    with pytest.raises(ValueError, match=r"round 0: training diverged.*sigma_lr_mult=1000000000000.0"):
        pwfn_viz.run(cfg, tmp_path / "diverged", progress=False, verbose=False)
    assert cli.main(["run", "--out", str(tmp_path / "cli"), "--pretrain-epochs", "1", "--fractions", "0.5,1.0",
                     "--steps", "3", "--first-steps", "3", "--sigma-param", "log", "--sigma-lr-mult", "1e12",
                     "--quiet"]) == 2
