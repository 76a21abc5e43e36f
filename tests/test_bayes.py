"""Bayesian conversion, sigma initialisation and the loss terms, against hand-worked values and
the published formulas (docs/method.md, sections 1-3)."""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn

from pwfn_viz.core import bayes
from pwfn_viz.core.bayes import (SIGMA_MIN, bayes_tensors, convert, flat_state, load_flat_state, power_of_two_gap,
                            pwfn_sigma_init, quantile, state_keys)
from pwfn_viz.core.loss_terms import masked_weight_decay, param_groups, sigma_regulariser
from pwfn_viz.models.factory import create_model


def _zoo():
    torch.manual_seed(0)
    return {
        "mlp": (create_model("digits_mlp"), torch.randn(4, 1, 8, 8)),
        "cnn": (create_model("digits_cnn"), torch.randn(4, 1, 8, 8)),
        "conv1d_groups_dilation": (nn.Sequential(nn.Conv1d(4, 8, 3, groups=2, dilation=2), nn.ReLU(),
                                                 nn.Conv1d(8, 8, 3, groups=8, bias=False)), torch.randn(2, 4, 20)),
        "conv3d_transpose": (nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ConvTranspose3d(4, 2, 2, stride=2)),
                             torch.randn(1, 2, 5, 5, 5)),
        "resnet18": (timm.create_model("resnet18", num_classes=10, in_chans=1), torch.randn(2, 1, 32, 32)),
        "vit": (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10),
                torch.randn(2, 3, 32, 32)),
        "depthwise": (timm.create_model("mobilenetv3_small_050", num_classes=10), torch.randn(2, 3, 32, 32)),
    }


@pytest.mark.parametrize("name", list(_zoo()))
def test_eval_output_equals_original(name):
    model, x = _zoo()[name]
    model.eval()
    with torch.no_grad():
        expected = model(x)
        converted = convert(copy.deepcopy(model)).eval()
        got = converted(x)
    assert torch.equal(expected, got)
    originals = {n for n, p in model.named_parameters()}
    # every conv/linear weight and bias is converted; norm layers, tokens, embeddings are not
    conv_names = {f"{mn}.{a}" if mn else a for mn, m in model.named_modules()
                  if isinstance(m, bayes.CONVERTIBLE) for a in ("weight", "bias")
                  if getattr(m, a, None) is not None}
    assert {t.name for t in bayes_tensors(converted)} == conv_names
    converted_keys = {k for t in bayes_tensors(converted) for k in t.state_keys().values()}
    remaining = {n for n, _ in converted.named_parameters() if n not in converted_keys}
    assert remaining == originals - conv_names
    if name == "vit":
        assert "cls_token" in remaining and "pos_embed" in remaining


def test_training_forward_samples_mu_plus_sigma_eps():
    torch.manual_seed(1)
    layer = convert(nn.Linear(5, 3))
    x = torch.randn(7, 5)
    layer.train()
    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)  # the hook draws weight noise first, then bias noise
    eps_w = torch.randn(3, 5)
    eps_b = torch.randn(3)
    weight, bias = bayes_tensors(layer)
    w = weight.mu + weight.sigma.clamp(min=SIGMA_MIN) * eps_w
    b = bias.mu + bias.sigma.clamp(min=SIGMA_MIN) * eps_b
    assert torch.allclose(out, x @ w.T + b, atol=1e-6)
    assert torch.equal(weight.noise, eps_w)
    # a new pass draws new noise; eval uses mu exactly
    assert not torch.equal(layer(x), out)
    layer.eval()
    assert torch.equal(layer(x), nn.functional.linear(x, weight.mu, bias.mu))


def test_negative_sigma_is_floored_when_sampling():
    layer = convert(nn.Linear(3, 2))
    weight, bias = bayes_tensors(layer)
    with torch.no_grad():
        weight.sigma.fill_(-1.0)
        bias.sigma.fill_(-1.0)
    layer.train()
    x = torch.randn(4, 3)
    out = layer(x)
    # sigma floored at 2^-30: the sample differs from mu by at most a few 2^-30 per weight
    assert (layer.weight - weight.mu).abs().max() < 1e-7
    assert torch.allclose(out, nn.functional.linear(x, weight.mu, bias.mu), atol=1e-5)


def _half_fixed_cnn():
    torch.manual_seed(0)
    model = convert(create_model("digits_cnn"))
    mu, sigma, _ = flat_state(model)
    fixed = torch.rand(mu.numel()) < 0.5
    mu = torch.where(fixed, torch.round(mu * 8) / 8, mu)
    load_flat_state(model, mu, sigma, fixed)
    return model


def test_fixed_weights_bitwise_unchanged_by_training_and_use_their_value():
    from pwfn_viz.data.datasets import create_dataset, make_loader
    from pwfn_viz.train.loop import train_steps
    model = _half_fixed_cnn()
    before = {t.name: (t.value.clone(), t.mu.detach().clone(), t.sigma.detach().clone(), t.fixed.clone())
              for t in bayes_tensors(model)}
    data = create_dataset("digits")
    loader = make_loader(data.train, 64, shuffle=True, seed=0)
    train_steps(model, loader, 1.0, lr=0.05, momentum=0.9, weight_decay=1e-2, grad_clip=1.0, device="cpu",
                bayesian=True, progress=False)
    moved = 0
    for t in bayes_tensors(model):
        value, mu, sigma, fixed = before[t.name]
        assert torch.equal(t.value[fixed], value[fixed])
        assert torch.equal(t.mu.detach()[fixed], mu[fixed])      # no task gradient, no decay
        assert torch.equal(t.sigma.detach()[fixed], sigma[fixed])
        moved += int((t.mu.detach()[~fixed] != mu[~fixed]).sum())
    assert moved > 0
    # in a training pass the layer uses exactly the fixed value
    model.train()
    model(torch.randn(2, 1, 8, 8))
    for t in bayes_tensors(model):
        used = getattr(t.module, t.attr)
        assert torch.equal(used[t.fixed], t.fixed_value[t.fixed])


def test_no_gradient_reaches_fixed_weights():
    model = _half_fixed_cnn().train()
    loss = model(torch.randn(8, 1, 8, 8)).square().sum()
    loss.backward()
    for t in bayes_tensors(model):
        assert (t.mu.grad[t.fixed] == 0).all() and (t.sigma.grad[t.fixed] == 0).all()
        assert (t.mu.grad[~t.fixed] != 0).any()


def test_state_dict_round_trip_and_optimisers():
    model = _half_fixed_cnn()
    sd = model.state_dict()
    keys = state_keys("conv1.weight")
    assert keys["fixed"] in sd and keys["mu"] in sd and "conv1.weight" not in sd
    fresh = convert(create_model("digits_cnn"))
    fresh.load_state_dict(sd)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))
    for opt_cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        m = copy.deepcopy(model).train()
        opt = opt_cls(m.parameters(), lr=1e-3)
        m(x).sum().backward()
        opt.step()
        assert all(torch.isfinite(p).all() for p in m.parameters())


def test_param_groups_and_masked_weight_decay_gradient():
    model = _half_fixed_cnn()
    groups = param_groups(model, 1e-4)
    bn_params = {id(p) for n, p in model.named_parameters() if "parametrizations" not in n}
    assert {id(p) for p in groups[2]["params"]} == bn_params and groups[2]["weight_decay"] == 1e-4
    assert {id(p) for p in groups[0]["params"]} == {id(t.mu) for t in bayes_tensors(model)}
    assert {id(p) for p in groups[1]["params"]} == {id(t.sigma) for t in bayes_tensors(model)}
    assert groups[0]["weight_decay"] == groups[1]["weight_decay"] == 0.0
    assert "lr" not in groups[1] and groups[1]["sigma_param"] == "raw"
    fast = param_groups(model, 1e-4, sigma_lr=0.5, sigma_param="log")
    assert fast[1]["lr"] == 0.5 and fast[1]["sigma_param"] == "log" and "lr" not in fast[0]
    with pytest.raises(ValueError, match="unknown sigma parameterisation"):
        param_groups(model, 1e-4, sigma_param="softplus")
    masked_weight_decay(model, 0.3).backward()
    for t in bayes_tensors(model):
        expected = torch.where(t.fixed, torch.zeros_like(t.mu), 0.3 * t.mu.detach())
        assert torch.allclose(t.mu.grad, expected, rtol=1e-6, atol=0)


def test_regulariser_gradient_equals_formula():
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 2)))
    with torch.no_grad():  # sigmas on both sides of the cap, some fixed
        for t in bayes_tensors(model):
            t.sigma.copy_(torch.rand_like(t.sigma) * 0.1)
            t.fixed.copy_(torch.rand_like(t.sigma) < 0.3)
    model.train()
    model(torch.randn(3, 6))
    lam, cap = 2 ** -11, 0.05
    reg = sigma_regulariser(model, lam, cap)
    reg.backward()
    expected_value = 0.0
    for t in bayes_tensors(model):
        eps = t.noise
        free = ~t.fixed
        expected = -lam * (cap - t.sigma.detach()).clamp(min=0) * eps.abs() * free
        assert torch.allclose(t.sigma.grad, expected, rtol=1e-6, atol=1e-12)
        assert (t.sigma.grad[t.sigma.detach() > cap] == 0).all()
        expected_value += (lam / 2 * eps.abs() * (cap - t.sigma.detach()).clamp(min=0) ** 2 * free).sum().item()
    assert reg.item() == pytest.approx(expected_value, rel=1e-6)


def test_loss_terms_scale_with_the_loss_on_the_torch_path():
    """The reference the fused path is tested against (tests/test_kernels.py): on the torch path a
    loss scaled by S (a GradScaler), divided for accumulation, or holding a term twice scales the
    terms' gradients alike."""
    torch.manual_seed(1)
    model = _half_fixed_cnn().train()
    x = torch.randn(2, 1, 6, 6)
    model(x)
    grads = []
    for factor, calls in ((1.0, 1), (1024.0, 1), (0.25, 1), (1.0, 2)):
        model.zero_grad(set_to_none=True)
        terms = [sigma_regulariser(model, 2 ** -7, 0.05) + masked_weight_decay(model, 0.3) for _ in range(calls)]
        (factor * sum(terms)).backward()
        grads.append([p.grad / (factor * calls) for t in bayes_tensors(model) for p in (t.mu, t.sigma)])
    for other in grads[1:]:
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-12) for a, b in zip(grads[0], other))
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_masked_weight_decay_needs_a_converted_model():
    with pytest.raises(ValueError, match="no converted tensors.*convert"):
        masked_weight_decay(nn.Linear(3, 2), 1e-4)


def test_regulariser_needs_a_training_pass():
    model = convert(nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match="training-mode forward"):
        sigma_regulariser(model)


# -- sigma initialisation -----------------------------------------------------------------------
def test_power_of_two_gap_matches_published_formula():
    torch.manual_seed(0)
    mu = torch.cat([torch.randn(500) * 0.1, torch.tensor([1.0, 0.5, -0.25, 3.0, 1e-6, -7.3])])
    got = power_of_two_gap(mu)
    for v, r in zip(mu.tolist(), got.tolist()):
        a = abs(v)
        lo, hi = 2 ** math.floor(math.log2(a)), 2 ** math.ceil(math.log2(a))
        assert r == pytest.approx(abs(a - lo) / a * abs(a - hi) / a, abs=1e-12)


def test_sigma_init_hand_worked():
    # r = (t-1)(2-t)/t^2: 0.75 -> 1/9, 1.25 -> 0.12, -3 -> 1/9, 1 -> 0; q75 (linear) of
    # [0, 1/9, 1/9, 0.12] = 1/9 + 0.25 * (0.12 - 1/9)
    got = pwfn_sigma_init(torch.tensor([0.75, 1.25, -3.0, 1.0]))
    q75 = 1 / 9 + 0.25 * (0.12 - 1 / 9)
    expected = [0.0025 * (1 / 9) / q75, 0.0025 * 0.12 / q75, 0.0025 * (1 / 9) / q75, SIGMA_MIN]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)


def test_sigma_init_edge_cases():
    # exact zeros: certain, never NaN
    z = pwfn_sigma_init(torch.zeros(5))
    assert torch.isfinite(z).all() and (z == SIGMA_MIN).all()
    # single entry: its own q75, so the scale itself
    assert pwfn_sigma_init(torch.tensor([0.75])).item() == pytest.approx(0.0025)
    assert pwfn_sigma_init(torch.tensor([0.5])).item() == pytest.approx(SIGMA_MIN)
    # q75 == 0 (most weights on a power of two): the largest r is the reference
    s = pwfn_sigma_init(torch.tensor([1.0] * 10 + [1.5, 0.0]))
    assert s[10].item() == pytest.approx(0.0025) and (s[:10] == SIGMA_MIN).all()
    # cap at 0.05: one large r among many tiny ones
    s = pwfn_sigma_init(torch.tensor([1.0 + 1e-6] * 10 + [1.5]))
    assert s[10].item() == pytest.approx(0.05)
    # constant option
    assert (bayes.constant_sigma_init(torch.randn(4)) == 1e-4).all()
    layer = convert(nn.Linear(3, 3), "constant", value=2e-3)
    assert (bayes_tensors(layer)[0].sigma == 2e-3).all()


@pytest.mark.slow
def test_quantile_matches_torch_and_handles_huge_tensors():
    torch.manual_seed(0)
    for n in (1, 2, 7, 1000):
        x = torch.randn(n, dtype=torch.float64)
        for q in (0.0, 0.25, 0.75, 1.0):
            assert quantile(x, q).item() == pytest.approx(torch.quantile(x, q).item(), abs=1e-12)
    # over 2^24 entries (older torch.quantile refuses them): against the sorted order statistic
    big = torch.rand(2 ** 24 + 3, dtype=torch.float64)
    pos = 0.75 * (big.numel() - 1)
    ordered = torch.sort(big).values
    lo = int(pos)
    expected = ordered[lo] + (pos - lo) * (ordered[lo + 1] - ordered[lo])
    assert quantile(big, 0.75).item() == pytest.approx(expected.item(), abs=1e-12)
    s = pwfn_sigma_init(big[: 2 ** 24 + 1])
    assert torch.isfinite(s).all() and s.max() <= 0.05


# -- bad input ----------------------------------------------------------------------------------
def test_clear_errors():
    with pytest.raises(ValueError, match="no convolution or linear layer"):
        convert(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3), nn.Embedding(4, 2)))
    bad = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with torch.no_grad():
        bad[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1\.weight has 1 non-finite"):
        convert(bad)
    model = convert(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="already converted"):
        convert(model)
    with pytest.raises(ValueError, match="unknown sigma_init 'nope'.*constant"):
        convert(nn.Linear(2, 2), "nope")
    with pytest.raises(ValueError, match="lazy module"):
        convert(nn.LazyLinear(3))
    fresh = convert(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="flat state has 3 entries"):
        load_flat_state(fresh, torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool))


def test_sigma_inits_are_a_registry():
    """convert() finds sigma inits by name in SIGMA_INITS; one registered with register_sigma_init
    is used like the built-in ones, and a name cannot be registered twice by accident."""
    assert list(bayes.SIGMA_INITS) == ["constant", "pwfn"]

    @bayes.register_sigma_init("tenth_of_abs_mu")
    def tenth(mu):
        return mu.abs() / 10

    try:
        layer = convert(nn.Linear(3, 2), "tenth_of_abs_mu")
        weight = bayes_tensors(layer)[0]
        assert torch.equal(weight.sigma, weight.mu.detach().abs() / 10)
        with pytest.raises(ValueError, match="already registered"):
            bayes.register_sigma_init("tenth_of_abs_mu")(tenth)
    finally:
        bayes.SIGMA_INITS.unregister("tenth_of_abs_mu")


@pytest.mark.parametrize("n_fixed", [0, 5])
@pytest.mark.parametrize("sampled_fixed", [False, True])
def test_written_out_sampling_equals_autograd_of_the_formula(n_fixed, sampled_fixed):
    """bayes._SampleWithTerms's sample against autograd through the plain expression: sigma below the floor, at it,
    negative, fixed entries (exact, or sampled with no gradient)."""
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64)
    sigma = (torch.rand(4, 6, generator=g, dtype=torch.float64) * 0.1)
    sigma.view(-1)[:3] = torch.tensor([-0.5, 0.0, SIGMA_MIN], dtype=torch.float64)
    eps = torch.randn(4, 6, generator=g, dtype=torch.float64)
    fixed = torch.zeros(4, 6, dtype=torch.bool)
    fixed.view(-1)[-n_fixed:] = n_fixed > 0
    base = torch.randn(4, 6, generator=g, dtype=torch.float64)
    upstream = torch.randn(4, 6, generator=g, dtype=torch.float64)
    a = [t.clone().requires_grad_() for t in (mu, sigma)]
    w, _, _ = bayes._SampleWithTerms.apply(a[0], a[1], eps, bayes._free_mask(fixed, mu.dtype),
                                           None if sampled_fixed else base, 0.05, None)
    (w * upstream).sum().backward()
    b = [t.clone().requires_grad_() for t in (mu, sigma)]
    free_w = b[0] + b[1].clamp(min=SIGMA_MIN) * eps
    ref = torch.where(fixed, free_w.detach(), free_w) if sampled_fixed else torch.where(fixed, base, free_w)
    (ref * upstream).sum().backward()
    assert torch.allclose(w, ref.detach(), rtol=0, atol=1e-15)
    assert torch.equal(a[0].grad, b[0].grad) and torch.allclose(a[1].grad, b[1].grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("how", ["together", "scaled", "terms alone", "other cap", "twice"])
def test_loss_terms_from_the_pass_equal_the_formula(how):
    """The regulariser and decay computed with each pass's sample (their gradients folded into the
    sampling backward) against the formula, for a scaled loss, a separate backward of the terms, a
    cap other than the pass's (computed on its own) and terms counted twice."""
    model = _half_fixed_cnn()
    model.train()
    lam, wd = 2.0 ** -9, 0.3
    cap = 0.08 if how == "other cap" else 0.05
    model(torch.randn(3, 1, 8, 8))   # outside pass_terms a pass computes no terms
    assert all(t.param.reg_term is None and t.param.decay_term is None for t in bayes_tensors(model))
    with bayes.pass_terms(model):
        out = model(torch.randn(3, 1, 8, 8)).square().sum()
    assert all(not t.param.pass_terms for t in bayes_tensors(model))
    assert all(t.param.reg_term is not None for t in bayes_tensors(model))
    terms = sigma_regulariser(model, lam, cap, from_pass=True) + masked_weight_decay(model, wd, from_pass=True)
    scale, times = (64.0 if how == "scaled" else 1.0), (2 if how == "twice" else 1)
    if how == "terms alone":
        (terms * scale).backward()
    else:
        (scale * (out + times * terms)).backward()
    for t in bayes_tensors(model):
        free = (~t.fixed).to(t.mu.dtype)
        reg_grad = -lam * (cap - t.sigma.detach()).clamp(min=0) * t.noise.abs() * free
        decay_grad = wd * t.mu.detach() * free
        if how == "terms alone":
            assert torch.allclose(t.sigma.grad / scale, reg_grad, rtol=1e-5, atol=1e-12), t.name
            assert torch.allclose(t.mu.grad / scale, decay_grad, rtol=1e-5, atol=1e-12), t.name
        else:   # the task part is there too: take it out with the formula's own task gradient
            task_mu = t.mu.grad / scale - times * decay_grad
            assert torch.all(task_mu[t.fixed] == 0), t.name
        assert (t.sigma.grad[t.fixed] == 0).all() and (t.mu.grad[t.fixed] == 0).all()
    reg_value = sum(((cap - t.sigma.detach()).clamp(min=0) ** 2 * t.noise.abs() * (~t.fixed)).sum()
                    for t in bayes_tensors(model))
    decay_value = sum((t.mu.detach() ** 2 * (~t.fixed)).sum() for t in bayes_tensors(model))
    assert terms.item() == pytest.approx((lam / 2 * reg_value + wd / 2 * decay_value).item(), rel=1e-5)
