"""pwfn_viz.kernels: every Triton kernel against its torch reference, on CPU with the interpreter.

The Triton interpreter only works when ``TRITON_INTERPRET=1`` is set before ``triton.language`` is
first imported, and other test modules import it earlier in the same worker (timm does). So the
kernel checks (``check_*`` below) run in one fresh subprocess with that variable set; each test
asserts the outcome of its check and shows the check's traceback on failure. Backend selection and
the torch twins are tested in-process.

Tolerances: counts, masks, assignments and k-means ends exactly; sampled weights exactly against
the torch formula fed the kernel's own noise (the interpreter does the same float32 operations);
gradients and the regulariser value to float32 rounding; statistics within 5 standard errors.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from pwfn_viz import kernels
from pwfn_viz.kernels.kmeans import assign_torch, boundaries_torch, lloyd_step, prefix_sums

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


# ---------------------------------------------------------------- running checks in the interpreter

@functools.lru_cache(maxsize=1)
def _interpreter_results() -> dict:
    """Run every check_* of this module in one subprocess with TRITON_INTERPRET=1."""
    env = {k: v for k, v in os.environ.items() if k != kernels.ENV_VAR}
    env.update(TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    code = "import test_kernels; test_kernels._run_checks()"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        raise AssertionError(f"interpreter subprocess failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def _run_checks() -> None:
    """Subprocess side: run the checks, print {name: traceback or None} as one JSON line."""
    torch.set_num_threads(1)
    assert kernels.interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported"
    results = {}
    for name, fn in sorted(globals().items()):
        if name.startswith("check_"):
            try:
                torch.manual_seed(0)
                with kernels.use_backend("triton"):
                    fn()
                results[name] = None
            except Exception:
                results[name] = traceback.format_exc()
    print(json.dumps(results))


def interpreted(check_name: str) -> None:
    err = _interpreter_results()[check_name]
    assert err is None, f"{check_name} failed under the Triton interpreter:\n{err}"


# ---------------------------------------------------------------- clustering kernels

def _torch_coverage(pm, ps, delta, c):
    from pwfn_viz.clustering import _coverage
    with kernels.use_backend("torch"):
        return _coverage(pm, ps, delta, c)


def _coverage_cases():
    """(pm, ps, delta, sorted centres): random, plus interval ends exactly on centres."""
    g = torch.Generator().manual_seed(1)
    for n, k, delta in [(1, 1, 1.0), (7, 15, 0.5), (1000, 200, 1.0), (3000, 600, 2.0), (500, 4500, 1.0)]:
        pm = torch.sort(torch.randn(n, generator=g, dtype=F64) * 0.3).values
        ps = torch.rand(n, generator=g, dtype=F64) * 0.1 + 2.0 ** -20
        c = torch.sort(torch.randn(k, generator=g, dtype=F64) * 0.3).values
        yield pm, ps, delta, c
    grid = torch.arange(-16, 17, dtype=F64) / 16               # dyadic centres, exact arithmetic
    pm = grid[torch.randint(0, 33, (2000,), generator=g)]
    ps = torch.randint(0, 5, (2000,), generator=g).to(F64) / 16  # ends land exactly on centres
    ps[:50] = 0.0                                                 # zero width: only exact hits
    yield pm, ps, 1.0, grid
    yield torch.full((300,), 0.25, dtype=F64), torch.full((300,), 0.125, dtype=F64), 2.0, grid  # all tied
    yield torch.tensor([-0.0, 0.0, 1e-300], dtype=F64), torch.zeros(3, dtype=F64), 1.0, torch.tensor([0.0], dtype=F64)


def check_coverage_counts_exact():
    for pm, ps, delta, c in _coverage_cases():
        want = _torch_coverage(pm, ps, delta, c)
        for strategy in (None, "histogram", "atomic"):
            if strategy == "histogram" and c.numel() >= kernels.clustering.MAX_HISTOGRAM_BINS:
                continue
            got = kernels.coverage_counts(pm, ps, delta, c, strategy=strategy)
            assert got.dtype == torch.long and torch.equal(got, want), (strategy, c.numel(), got, want)
    assert torch.equal(kernels.coverage_counts(torch.zeros(0, dtype=F64), torch.zeros(0, dtype=F64), 1.0,
                                               torch.tensor([0.0, 1.0], dtype=F64)), torch.zeros(2, dtype=torch.long))


def check_fit_mask_exact():
    from pwfn_viz.clustering import _fitting
    g = torch.Generator().manual_seed(2)
    grid = torch.arange(-16, 17, dtype=F64) / 16
    pm = torch.sort(grid[torch.randint(0, 33, (3000,), generator=g)]
                    + torch.randn(3000, generator=g, dtype=F64) * 0.01 * (torch.rand(3000, generator=g) < 0.5)).values
    ps = torch.randint(1, 5, (3000,), generator=g).to(F64) / 16
    alive = torch.rand(3000, generator=g) < 0.7
    for a, z, c, delta, band in [(0, 3000, 0.25, 1.0, None), (100, 2500, 0.0, 1.0, (1200, 1500)),
                                 (0, 3000, 0.0, 0.5, (0, 3000)), (500, 500, 0.5, 1.0, None),
                                 (2999, 3000, -1.0, 2.0, None), (10, 2000, 0.0625, 1.0, (1990, 2100))]:
        with kernels.use_backend("torch"):
            want = _fitting(pm, ps, alive, a, z, c, delta, band)
        got = kernels.fitting_positions(pm, ps, alive, a, z, c, delta, band)
        assert torch.equal(got, want), (a, z, c, delta, band)


def check_cluster_round_same_on_both_paths():
    """A whole round through the dispatching cluster_round: bitwise the same as the torch path."""
    from pwfn_viz.bayes import pwfn_sigma_init
    from pwfn_viz.clustering import ClusterConfig, cluster_round
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(700, generator=g) * 0.05
    mu[:60] = torch.randn(60, generator=g) * 0.5                   # tails
    mu[100:140] = 0.0                                                # exact zeros
    sigma = pwfn_sigma_init(mu)
    for fraction, cfg in [(1.0, ClusterConfig()), (0.7, ClusterConfig(delta=2.0, b=6, sigma_join="divide"))]:
        got = cluster_round(mu, sigma, fraction, config=cfg)
        with kernels.use_backend("torch"):
            want = cluster_round(mu, sigma, fraction, config=cfg)
        for field in ("mu", "sigma", "fixed_mask", "assignment", "centres"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field
        assert got.steps.equals(want.steps)


def test_coverage_counts_exact():
    interpreted("check_coverage_counts_exact")


def test_fit_mask_exact():
    interpreted("check_fit_mask_exact")


def test_cluster_round_same_on_both_paths():
    interpreted("check_cluster_round_same_on_both_paths")


# ---------------------------------------------------------------- fused sampling

def _tensor_state(shape, g, fixed_frac=0.3):
    mu = (torch.randn(shape, generator=g) * 0.1).requires_grad_()
    sigma = (torch.rand(shape, generator=g) * 0.1).requires_grad_()
    fixed = torch.rand(shape, generator=g) < fixed_frac
    fixed_value = torch.where(fixed, torch.randn(shape, generator=g), torch.zeros(shape))
    return mu, sigma, fixed, fixed_value


def check_sampling_forward_and_statistics():
    from pwfn_viz.kernels.sampling import reference_sample
    g = torch.Generator().manual_seed(3)
    mu, sigma, fixed, fixed_value = _tensor_state((64, 48), g)
    w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
    eps = noise.materialise().view(64, 48)
    assert torch.equal(w, reference_sample(mu, sigma, fixed, fixed_value, eps))
    assert torch.equal(w[fixed], fixed_value[fixed])                  # fixed: exactly their value
    # statistics over 8 passes of 4096 weights with the same mu, sigma
    n, passes = 4096, 8
    mu0, sig0 = torch.full((n,), 0.3), torch.full((n,), 0.1)
    free = torch.zeros(n, dtype=torch.bool)
    samples = torch.stack([kernels.fused_sample(mu0, sig0, free, mu0)[0] for _ in range(passes)])
    se = 0.1 / (n * passes) ** 0.5
    assert abs(samples.mean().item() - 0.3) < 5 * se
    assert abs(samples.std().item() - 0.1) < 5 * 0.1 / (2 * n * passes) ** 0.5
    z = (samples - 0.3) / 0.1                                       # independent across passes
    corr = (z[:-1] * z[1:]).mean().item()
    assert abs(corr) < 5 / (n * (passes - 1)) ** 0.5
    # the floor: negative and tiny sigma sample with 2^-30
    w, noise = kernels.fused_sample(torch.zeros(4), torch.tensor([-1.0, 0.0, 2.0 ** -31, 1.0]),
                                    torch.zeros(4, dtype=torch.bool), torch.zeros(4))
    assert torch.equal(w[:3], noise.materialise()[:3] * 2.0 ** -30)


def check_sampling_gradients_match_formula():
    from pwfn_viz.kernels.sampling import reference_sample
    g = torch.Generator().manual_seed(4)
    lam, cap = 2.0 ** -11, 0.05
    for armed in (True, False):
        mu, sigma, fixed, fixed_value = _tensor_state((33, 31), g)
        with torch.no_grad():                                      # both sides of the cap and the floor
            sigma[0, :4] = torch.tensor([2.0 ** -30, -0.5, 0.0, 0.2])
        upstream = torch.randn(33, 31, generator=g)
        w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
        if armed:
            noise.arm(lam, cap)
        w.backward(upstream)
        eps = noise.materialise().view(33, 31)
        free = ~fixed
        s = sigma.detach()
        task = upstream * eps * (s > 2.0 ** -30)
        reg = lam * (cap - s).clamp(min=0) * eps.abs() if armed else torch.zeros_like(s)
        assert torch.equal(mu.grad, upstream * free)
        assert torch.allclose(sigma.grad, (task - reg) * free, rtol=1e-6, atol=1e-12)
        assert (sigma.grad[fixed] == 0).all() and sigma.grad[0, 0] == -reg[0, 0] * free[0, 0]
        # the same through torch autograd: task loss on the reference path plus the loss-term regulariser
        mu2, sig2 = mu.detach().clone().requires_grad_(), s.clone().requires_grad_()
        loss = (reference_sample(mu2, sig2, fixed, fixed_value, eps) * upstream).sum()
        if armed:
            loss = loss + lam / 2 * (eps.abs() * (cap - sig2).clamp(min=0) ** 2 * free).sum()
        loss.backward()
        assert torch.equal(mu.grad, mu2.grad)
        assert torch.allclose(sigma.grad, sig2.grad, rtol=1e-6, atol=1e-12)
        value = noise.regulariser_sum(s, fixed, cap)
        assert value.item() == pytest.approx((eps.abs() * (cap - s).clamp(min=0) ** 2 * free).sum().item(), rel=1e-5)


def check_sampling_reproducible():
    g = torch.Generator().manual_seed(5)
    mu, sigma, fixed, fixed_value = _tensor_state((500,), g)
    torch.manual_seed(123)
    w1, n1 = kernels.fused_sample(mu, sigma, fixed, fixed_value)
    w2, _ = kernels.fused_sample(mu, sigma, fixed, fixed_value)
    torch.manual_seed(123)
    w3, n3 = kernels.fused_sample(mu, sigma, fixed, fixed_value)
    assert torch.equal(w1, w3) and torch.equal(n1.materialise(), n3.materialise())
    assert not torch.equal(w1, w2)
    w4, _ = kernels.fused_sample(mu, sigma, fixed, fixed_value, seed=int(n1.seed))
    assert torch.equal(w4, w1)


def check_converted_layers_use_fused_path():
    """bayes.convert + forced triton: the hook samples with the kernel, sigma_regulariser gives the
    value without gradient and arms the fused gradient; grads equal the torch path's formula."""
    import torch.nn as nn
    from pwfn_viz.bayes import bayes_tensors, convert, sigma_regulariser
    from pwfn_viz.kernels.sampling import reference_sample
    model = convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)))
    with torch.no_grad():
        for t in bayes_tensors(model):
            t.sigma.copy_(torch.rand_like(t.sigma) * 0.1)
            t.fixed.copy_(torch.rand_like(t.sigma) < 0.3)
            t.fixed_value.copy_(torch.where(t.fixed, t.mu, 0))
    x = torch.randn(5, 2, 4, 4)
    model.train()
    out = model(x)
    ts = bayes_tensors(model)
    assert all(isinstance(t.module._pwfn_eps[t.attr], kernels.FusedNoise) for t in ts)
    eps = {t.name: t.module._pwfn_eps[t.attr].materialise().view_as(t.mu) for t in ts}
    lam, cap = 2.0 ** -9, 0.05
    reg = sigma_regulariser(model, lam, cap)
    assert not reg.requires_grad
    want_reg = sum(lam / 2 * (eps[t.name].abs() * (cap - t.sigma.detach()).clamp(min=0) ** 2 * ~t.fixed).sum()
                   for t in ts)
    assert reg.item() == pytest.approx(want_reg.item(), rel=1e-5)
    (out.square().sum() + reg).backward()
    # reference: the same network, weights from the torch formula with the same noise, loss-term R
    ref = {t.name: (t.mu.detach().clone().requires_grad_(), t.sigma.detach().clone().requires_grad_())
           for t in ts}
    w = {n: reference_sample(m, s, t.fixed, t.fixed_value, eps[n]) for t, (n, (m, s)) in zip(ts, ref.items())}
    h = nn.functional.conv2d(x, w["0.weight"], w["0.bias"]).relu().flatten(1)
    loss = nn.functional.linear(h, w["3.weight"], w["3.bias"]).square().sum()
    loss = loss + sum(lam / 2 * (eps[t.name].abs() * (cap - ref[t.name][1]).clamp(min=0) ** 2 * ~t.fixed).sum()
                      for t in ts)
    loss.backward()
    for t in ts:
        assert torch.allclose(t.mu.grad, ref[t.name][0].grad, rtol=1e-5, atol=1e-7), t.name
        assert torch.allclose(t.sigma.grad, ref[t.name][1].grad, rtol=1e-5, atol=1e-7), t.name
    model.eval()                                                     # evaluation: mean weights, no noise
    mean = {t.name: torch.where(t.fixed, t.fixed_value, t.mu.detach()) for t in ts}
    h = nn.functional.conv2d(x, mean["0.weight"], mean["0.bias"]).relu().flatten(1)
    assert torch.equal(model(x), nn.functional.linear(h, mean["3.weight"], mean["3.bias"]))


def test_sampling_forward_and_statistics():
    interpreted("check_sampling_forward_and_statistics")


def test_sampling_gradients_match_formula():
    interpreted("check_sampling_gradients_match_formula")


def test_sampling_reproducible():
    interpreted("check_sampling_reproducible")


def test_converted_layers_use_fused_path():
    interpreted("check_converted_layers_use_fused_path")


# ---------------------------------------------------------------- k-means kernels

def _kmeans_cases():
    g = np.random.default_rng(6)
    x = np.sort(np.concatenate([g.laplace(0, 0.05, 3000), np.zeros(200)]))
    yield x, np.sort(g.choice(x, 16, replace=False))
    yield x, np.sort(np.concatenate([g.choice(x, 6, replace=False)] * 2))     # duplicated centres
    grid = np.repeat(np.arange(-8, 9) / 8, 30)                                  # exact midpoint ties
    yield grid, np.array([-1.0, -0.5, -0.25, 0.0, 0.25, 1.0])
    yield x, np.array([0.01])
    yield x[:5], np.array([-5.0, 5.0, 6.0])                                     # empty clusters


def _check_kmeans(boundaries, assign):
    from pwfn_viz.kmeans import _boundaries, kmeans_1d
    for xs, c in _kmeans_cases():
        xs_t, c_t = torch.from_numpy(xs), torch.from_numpy(c)
        assert boundaries(xs_t, c_t).tolist() == _boundaries(xs, c).tolist()
        labels = assign(xs_t, c_t)
        brute = torch.argmin((xs_t[:, None] - c_t[None, :]).abs(), dim=1)   # nearest, ties: lowest index
        assert torch.equal(labels, brute)
    xs = _kmeans_cases().__next__()[0]
    res = kmeans_1d(xs, 8, init="density", seed=0)
    assert torch.equal(assign(torch.from_numpy(xs), res.centres), res.labels)
    start = torch.from_numpy(np.quantile(xs, (np.arange(8) + 0.5) / 8))
    one = kmeans_1d(xs, 8, init_centres=start, max_iter=1)                   # one Lloyd update
    prefix, shift = prefix_sums(torch.from_numpy(xs))
    new, counts, _ = lloyd_step(torch.from_numpy(xs), prefix, shift, start)
    assert (counts > 0).all() and torch.allclose(new, one.centres, rtol=0, atol=1e-12)


def check_kmeans_kernels():
    _check_kmeans(kernels.kmeans_boundaries, kernels.kmeans_assign)


def test_kmeans_kernels():
    interpreted("check_kmeans_kernels")


def test_kmeans_torch_twins():
    with kernels.use_backend("torch"):
        _check_kmeans(boundaries_torch, assign_torch)
        _check_kmeans(kernels.kmeans_boundaries, kernels.kmeans_assign)


# ---------------------------------------------------------------- backend selection (in-process)

def test_automatic_choice(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert kernels.backend() == "torch" and kernels.forced_backend() is None
    assert not kernels.use_triton(torch.zeros(3))
    # a GPU machine: triton for CUDA tensors, CPU tensors stay on the torch path
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert kernels.automatic_backend() == ("triton" if kernels.triton_available() else "torch")
    assert not kernels.use_triton(torch.zeros(3))


def test_forcing_a_path(monkeypatch):
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with kernels.use_backend("triton"):
        assert kernels.backend() == "triton"
        with kernels.use_backend("torch"):                          # nests, innermost wins
            assert kernels.backend() == "torch" and not kernels.use_triton(torch.zeros(1))
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            kernels.use_triton(torch.zeros(1))                        # CPU tensor, no interpreter
    monkeypatch.setenv(kernels.ENV_VAR, "torch")
    assert kernels.backend() == "torch" and kernels.forced_backend() == "torch"
    monkeypatch.setenv(kernels.ENV_VAR, "triton")
    assert kernels.backend() == "triton"
    with kernels.use_backend("torch"):                                # the context manager beats the env
        assert kernels.backend() == "torch"


def test_invalid_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(kernels.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="PWFN_BACKEND='cuda' is not a backend.*torch.*triton"):
        kernels.backend()
    with pytest.raises(ValueError, match="use_backend='gpu'"):
        with kernels.use_backend("gpu"):
            pass


def test_cpu_training_keeps_the_torch_path(monkeypatch):
    """Automatic choice on CPU: the hook stores the noise tensor, as the torch path always did."""
    import torch.nn as nn
    from pwfn_viz.bayes import convert
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    layer = convert(nn.Linear(3, 2)).train()
    layer(torch.randn(4, 3))
    assert isinstance(layer._pwfn_eps["weight"], torch.Tensor)
