"""The two training semantics (docs/faithfulness.md): every switch of the ``reference`` profile
against the corrected default on a tiny model, checked by hand computation; the delta schedule,
data, presets, warm-up, published numbers, command-line precedence, and the clustering rules the
authors' code gets wrong (kept corrected)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.cli import run_config
from pwfn_viz.constants import REGULARISER_LAMBDA, SIGMA_CAP
from pwfn_viz.core import bayes
from pwfn_viz.core.clustering import ClusterConfig
from pwfn_viz.core.loss_terms import sigma_regulariser
from pwfn_viz.core.clustering_readable import readable_cluster_round
from pwfn_viz.train import semantics as training_semantics
from pwfn_viz.train.config import METHODS, PROFILES
from pwfn_viz.train.loop import clip_and_step
from pwfn_viz.train.presets import PRESETS, PRETRAINED_TAGS, published_lines

SIGMA = 0.01


def tiny(semantics: dict) -> nn.Module:
    """Linear(3 -> 2) converted with sigma 0.01 everywhere; weight [0, 0] and [1, 2] fixed."""
    torch.manual_seed(0)
    model = bayes.convert(nn.Linear(3, 2), "constant", value=SIGMA)
    t = bayes.bayes_tensors(model)[0]
    with torch.no_grad():
        t.fixed[0, 0] = t.fixed[1, 2] = True
        t.mu[0, 0], t.mu[1, 2] = 0.5, -0.25
        t.fixed_value.copy_(torch.where(t.fixed, t.mu, torch.zeros_like(t.mu)))
    training_semantics.prepare(model, semantics)
    return model


def semantics(**points) -> dict:
    return {**PROFILES.get("corrected"), **points}


def weight_used(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight of one training pass and that pass's noise."""
    model.train()
    model(torch.ones(1, 3))
    return model.weight.detach(), bayes.bayes_tensors(model)[0].noise


def test_fixed_weights_exact_by_default_and_sampled_with_fixed_noise():
    t_default = tiny(semantics())
    w, eps = weight_used(t_default)
    assert w[0, 0] == 0.5 and w[1, 2] == -0.25                                  # exactly the value
    t_ref = tiny(semantics(fixed_noise=True))
    w, eps = weight_used(t_ref)
    assert w[0, 0] == pytest.approx(0.5 + SIGMA * eps[0, 0].item(), abs=1e-7)   # value + sigma * eps
    assert w[1, 2] == pytest.approx(-0.25 + SIGMA * eps[1, 2].item(), abs=1e-7)
    free = ~bayes.bayes_tensors(t_ref)[0].fixed
    mu = bayes.bayes_tensors(t_ref)[0].mu.detach()
    assert torch.allclose(w[free], mu[free] + SIGMA * eps[free])


@pytest.mark.parametrize("fixed_noise", [False, True])
def test_no_task_gradient_reaches_fixed_weights(fixed_noise):
    model = tiny(semantics(fixed_noise=fixed_noise))
    model.train()
    model(torch.randn(4, 3)).pow(2).sum().backward()
    t = bayes.bayes_tensors(model)[0]
    assert (t.mu.grad[t.fixed] == 0).all() and (t.sigma.grad[t.fixed] == 0).all()
    assert (t.mu.grad[~t.fixed] != 0).all()


def regulariser_grad(model, **kw) -> torch.Tensor:
    model.train()
    model(torch.ones(1, 3))
    sigma_regulariser(model, REGULARISER_LAMBDA, SIGMA_CAP, **kw).backward()
    weight, bias = bayes.bayes_tensors(model)
    return weight.sigma.grad, bias.sigma.grad


def test_regulariser_on_fixed_sigma_only_with_the_reference_switch():
    # hand computation: dR/dsigma = -lambda * (cap - sigma) * |eps|
    for include_fixed in (False, True):
        model = tiny(semantics(fixed_sigma_reg=include_fixed))
        grad_w, _ = regulariser_grad(model, include_fixed=include_fixed)
        eps = bayes.bayes_tensors(model)[0].noise
        expected = -REGULARISER_LAMBDA * (SIGMA_CAP - SIGMA) * eps.abs()
        fixed = bayes.bayes_tensors(model)[0].fixed
        assert torch.allclose(grad_w[~fixed], expected[~fixed])
        if include_fixed:
            assert torch.allclose(grad_w[fixed], expected[fixed]) and (grad_w[fixed] != 0).all()
        else:
            assert (grad_w[fixed] == 0).all()


def test_regulariser_leaves_biases_out_with_bias_sigma_reg_off():
    model = tiny(semantics())
    _, grad_b = regulariser_grad(model)
    eps_b = bayes.bayes_tensors(model)[1].noise
    assert torch.allclose(grad_b, -REGULARISER_LAMBDA * (SIGMA_CAP - SIGMA) * eps_b.abs())
    model = tiny(semantics(bias_sigma_reg=False))
    _, grad_b = regulariser_grad(model, include_bias=False)
    assert grad_b is None or (grad_b == 0).all()


def one_step(decay: str, grad_clip: float, lr=0.1, wd=0.01):
    """One SGD step (momentum 0.9, a fresh optimiser) on a huge task loss, the loop's clipping."""
    sem = semantics(decay=decay)
    model = tiny(sem)
    t = bayes.bayes_tensors(model)[0]
    before_mu, before_sigma = t.mu.detach().clone(), t.sigma.detach().clone()
    groups = training_semantics.param_groups(model, sem, weight_decay=wd, sigma_lr=lr, sigma_param="raw")
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    model.train()
    loss = 1e6 * model(torch.ones(2, 3)).sum() + training_semantics.loss_terms(
        model, sem, reg_lambda=0.0, reg_cap=SIGMA_CAP, weight_decay=wd)
    opt.zero_grad()
    loss.backward()
    clip_and_step(model, opt, grad_clip=grad_clip)
    return model, t, before_mu, before_sigma


def test_masked_decay_spares_fixed_weights_and_sigma():
    model, t, mu0, sigma0 = one_step("masked", grad_clip=0.0)
    assert torch.equal(t.mu[t.fixed], mu0[t.fixed]) and torch.equal(t.sigma.detach()[t.fixed], sigma0[t.fixed])
    assert torch.equal(t.value[t.fixed], mu0[t.fixed]) and not torch.equal(t.mu[~t.fixed], mu0[~t.fixed])


def test_coupled_decay_shrinks_fixed_mu_and_sigma_after_clipping():
    lr, wd = 0.1, 0.01
    # a clip of 1e-12 leaves the task gradient ~0: what moves the fixed weights is the decay alone,
    # unclipped (the optimiser adds it after clipping): mu -> mu * (1 - lr * wd), sigma likewise
    model, t, mu0, sigma0 = one_step("coupled", grad_clip=1e-12, lr=lr, wd=wd)
    assert torch.allclose(t.mu.detach()[t.fixed], mu0[t.fixed] * (1 - lr * wd), atol=1e-9)
    assert torch.allclose(t.sigma.detach(), sigma0 * (1 - lr * wd), atol=1e-9)
    # the fixed weight the network uses follows its decayed mu (as in the authors' code)
    assert torch.allclose(t.value[t.fixed], mu0[t.fixed] * (1 - lr * wd), atol=1e-9)
    # masked decay, same clip: the decay is inside the clipped gradient, so nothing moves visibly
    model, t, mu0, _ = one_step("masked", grad_clip=1e-12, lr=lr, wd=wd)
    assert torch.allclose(t.mu.detach(), mu0, atol=1e-9)


def test_coupled_decay_refuses_the_log_parameterisation():
    with pytest.raises(ValueError, match="coupled.*log"):
        RunConfig(decay="coupled", sigma_param="log")


def test_profile_values_and_single_point_overrides():
    ref = RunConfig(profile="reference").semantics()
    assert ref == {"fixed_noise": True, "fixed_sigma_reg": True, "bias_sigma_reg": False, "decay": "coupled",
                   "data_transforms": "reference", "train_split": 0.9, "delta_start": 1.0, "delta_end": 0.5,
                   "delta_growth": 2.0}
    assert RunConfig().semantics()["fixed_noise"] is False
    one = RunConfig(profile="reference", fixed_noise=False).semantics()
    assert one["fixed_noise"] is False and one["decay"] == "coupled"
    with pytest.raises(ValueError, match="delta_growth"):
        RunConfig(delta_growth=1.0)
    with pytest.raises(ValueError, match="delta_start and delta_end"):
        RunConfig(delta_start=1.0)
    with pytest.raises(ValueError, match="profile"):
        RunConfig(profile="authors")


def test_delta_schedule_reaches_the_clustering_round():
    config = RunConfig(delta_start=1.0, delta_end=0.5, fractions=(0.3, 0.6, 1.0))
    assert [config.delta_for_round(r) for r in range(3)] == [1.0, 0.75, 0.5]
    torch.manual_seed(1)
    mu, sigma = torch.randn(2000) * 0.1, torch.full((2000,), 0.002)
    fixed = torch.zeros(2000, dtype=torch.bool)
    result = METHODS["pwfn"](mu, sigma, fixed, 0.3, 1, config)
    assert result.steps["delta"].iloc[0] == 0.75


def test_delta_growth_widens_the_band_by_its_factor():
    torch.manual_seed(2)
    mu, sigma = torch.randn(500) * 0.3, torch.full((500,), 1e-4)
    for growth in (2.0, 3.0):
        steps = readable_cluster_round(mu, sigma, 1.0, config=ClusterConfig(delta_growth=growth)).steps
        deltas = sorted(set(steps["delta"]))
        assert deltas[0] == 1.0 and all(any(abs(d - growth ** k) < 1e-9 for k in range(60)) for d in deltas)


# ------------------------------------------------------------------ clustering rules kept corrected
def test_zero_centre_found_by_value_after_a_negative_centre_left():
    # -1 wins first and leaves the candidate list; the small weights must then go to 0, where the
    # authors' index-based lookup would point at the next centre up (+2^-7)
    mu = torch.tensor([-1.0] * 5 + [0.003, -0.002, 0.001])
    res = readable_cluster_round(mu, torch.full((8,), 1e-4), 1.0, config=ClusterConfig())
    assert res.mu[5:].tolist() == [0.0, 0.0, 0.0]
    fast = pwfn_viz.cluster_round(mu, torch.full((8,), 1e-4), 1.0)
    assert torch.equal(fast.mu, res.mu)


def test_ties_between_centres_go_to_the_smaller_magnitude_then_the_negative():
    mu = torch.tensor([0.25, 0.25, -0.25, -0.25, 0.5, 0.5])
    res = pwfn_viz.cluster_round(mu, torch.full((6,), 1e-4), 2 / 6)
    assert res.fixed_mask.tolist() == [False, False, True, True, False, False]


def test_ties_at_the_cap_go_to_the_smaller_magnitude_then_the_earlier_position():
    d = 2.0 ** -12   # exact in float32: both sides of 0.25 at the same distance
    mu = torch.tensor([0.25 + d, 0.25 - d, 0.25 + d, 0.25 - d, 0.25 - d])
    res = pwfn_viz.cluster_round(mu, torch.full((5,), 0.01), 2 / 5)
    assert res.fixed_mask.tolist() == [False, True, False, True, False]


# ------------------------------------------------------------------ presets, data, warm-up, published numbers
# The weights timm 0.6.12 (the authors' pinned release) resolved each bare name to, from its default configs.
TIMM_0612_URLS = {
    "resnet34": "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/resnet34-43635321.pth",
    "resnet50": "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
                "resnet50_a1_0-14fe96d1.pth",
    "deit_tiny_patch16_224": "https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth",
    "deit_small_patch16_224": "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
}


@pytest.mark.parametrize("name", [n for n in PRESETS.names() if n.endswith("-imagenet")])
def test_presets_pin_the_weights_the_authors_timm_resolved_to(name):
    import timm
    config = RunConfig.from_preset(name)
    assert config.pretrained_tag == PRETRAINED_TAGS[config.model]
    cfg = timm.models.get_pretrained_cfg(f"{config.model}.{config.pretrained_tag}")
    if config.model == "resnet18":   # 0.6.12: torchvision's ImageNet weights (torchvision has re-saved the file)
        assert config.pretrained_tag == "tv_in1k" and cfg.url.startswith("https://download.pytorch.org/models/resnet18-")
    else:
        assert cfg.url == TIMM_0612_URLS[config.model]
    # data: timm's transforms and the whole training set by default, the authors' with the reference profile
    assert config.semantics()["data_transforms"] == "timm" and config.semantics()["train_split"] == 1.0
    assert config.num_workers is None    # workers from the CPU count
    ref = RunConfig.from_preset(name, profile="reference").semantics()
    assert ref["data_transforms"] == "reference" and ref["train_split"] == 0.9


def test_unknown_pretrained_tag_is_a_clear_error():
    from pwfn_viz.models.factory import create_model
    with pytest.raises(ValueError, match="not one of resnet18's.*tv_in1k"):
        create_model("resnet18", pretrained_tag="nope_in1k")


def test_published_numbers_carry_their_method_and_source():
    lines = published_lines("resnet18-imagenet")
    assert lines and all(line.startswith("published by WFN") for line in lines)
    tiny_lines = published_lines("deit-tiny-imagenet")
    assert tiny_lines == ["published by PWFN, Subia-Waud & Dasmahapatra, NeurIPS 2023: 296 unique values, "
                          "+1.6 points top-1 over the best prior quantisation method"]
    assert "no number" in published_lines("deit-small-imagenet")[0]


def test_reference_transforms_squash_and_crop(tmp_path):
    from PIL import Image
    from pwfn_viz.data import reference_transforms
    image = Image.fromarray((torch.arange(300 * 200 * 3) % 251).reshape(200, 300, 3).to(torch.uint8).numpy())
    out = reference_transforms(224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), training=False)(image)
    from torchvision.transforms import functional as F
    expected = F.center_crop(F.to_tensor(F.resize(image, [256, 256])), [224, 224])
    assert out.shape == (3, 224, 224) and torch.allclose(out, expected)
    train = reference_transforms(224, (0.0,) * 3, (1.0,) * 3, training=True)
    assert [type(t).__name__ for t in train.transforms] == ["Resize", "RandomCrop", "RandomHorizontalFlip",
                                                            "ToTensor", "Normalize"]


def test_loaders_use_workers_for_file_data_and_none_for_tensors(tmp_path):
    from pwfn_viz.data import auto_workers, create_dataset, make_loader, train_subset
    digits = create_dataset("digits")
    assert auto_workers(digits.train) == 0
    assert auto_workers(torch.utils.data.ConcatDataset([digits.train])) >= 1   # not in memory: workers
    loader = make_loader(digits.train, 64, shuffle=True, seed=3, num_workers=2, pin_memory=False)
    assert loader.num_workers == 2 and loader.persistent_workers
    assert torch.equal(next(iter(loader))[1], next(iter(make_loader(digits.train, 64, shuffle=True, seed=3)))[1])
    part = train_subset(digits.train, 0.9, seed=0)
    assert len(part) == int(len(digits.train) * 0.9) and train_subset(digits.train, 1.0) is digits.train


def test_cli_runs_the_reference_profile_and_records_it(tmp_path):
    from pwfn_viz.cli import main
    assert main(["run", "--profile", "reference", "--pretrain-epochs", "0.2", "--first-steps", "2", "--steps", "2",
                 "--fractions", "0.5,1.0", "--out", str(tmp_path / "r"), "--quiet"]) == 0
    recorded = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert recorded["profile"] == "reference" and RunConfig.from_dict(recorded).semantics()["decay"] == "coupled"


@pytest.mark.slow
def test_reference_profile_run_with_warmup_records_and_resumes(tmp_path):
    config = RunConfig(profile="reference", pretrain_epochs=1, first_round_steps=3, steps_per_round=3,
                       warmup_steps=4, fractions=(0.5, 1.0))
    run = pwfn_viz.run(config, out_dir=tmp_path / "ref", progress=False, verbose=False)
    meta = json.loads((tmp_path / "ref" / "run.json").read_text())
    assert meta["config"]["profile"] == "reference" and meta["warmup"]["steps"] == 4
    assert (tmp_path / "ref" / "warmup.safetensors").exists() and run.complete
    from pwfn_viz.record.verify import verify_run
    assert verify_run(tmp_path / "ref").ok
    # a run stopped after its warm-up continues from the warm-up's state, without warming up again
    from pwfn_viz.train.fixer import Fixer
    net = pwfn_viz.create_model("digits_cnn", num_classes=10, in_chans=1)
    evaluate = lambda m: {"top1": 1.0}  # noqa: E731
    with Fixer(net, tmp_path / "own", evaluate, steps_per_round=1, fractions=(1.0,)) as fixer:
        net.train()
        net(torch.randn(2, 1, 8, 8)).sum().backward()
        fixer.record_warmup(steps=1)
        state = {k: v.clone() for k, v in net.state_dict().items()}
    again = pwfn_viz.create_model("digits_cnn", num_classes=10, in_chans=1)
    with Fixer(again, tmp_path / "own", evaluate, resume=True) as fixer:
        # (fixed_value is unused where nothing is fixed: the record keeps zeros there)
        assert all(torch.equal(state[k], v) for k, v in again.state_dict().items() if not k.endswith("fixed_value"))
        with pytest.raises(ValueError, match="once"):
            fixer.record_warmup(steps=1)


# ------------------------------------------------------------------ the command line: given options win
def config_of(*argv) -> RunConfig:
    return run_config(["run", *argv])


def test_an_option_given_on_the_command_line_wins_over_the_preset():
    assert config_of("--preset", "resnet18-imagenet", "--pretrain-epochs", "40").pretrain_epochs == 40
    assert config_of("--preset", "resnet18-imagenet", "--dataset", "digits").dataset == "digits"
    # given equal to the RunConfig default still wins (the preset says 0 epochs of pre-training)
    assert config_of("--preset", "resnet18-imagenet", "--lr", "0.001", "--batch-size", "128").lr == 0.001
    demo = config_of("--preset", "digits-demo", "--epochs", "3")
    assert demo.epochs_per_round == 3 and demo.steps_per_round is None and demo.first_round_steps == 120
    assert config_of("--profile", "reference", "--no-fixed-noise").semantics()["fixed_noise"] is False


def test_method_wfn_with_a_preset_keeps_the_model_and_uses_wfns_training():
    c = config_of("--preset", "resnet18-imagenet", "--method", "wfn")
    assert (c.method, c.model, c.dataset, c.optimizer, c.lr) == ("wfn", "resnet18", "imagefolder", "adam", 2e-5)
    assert c.pretrained_tag == "tv_in1k" and c.fractions[0] == 0.3
    assert config_of("--preset", "resnet18-imagenet", "--method", "wfn", "--lr", "1e-4").lr == 1e-4
