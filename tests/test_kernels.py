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

import collections
import contextlib
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
    from pwfn_viz.core.clustering import _coverage
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
    from pwfn_viz.core.clustering import _fitting
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
        # with the count known (cluster_round passes the coverage count): no data-dependent size
        got = kernels.fitting_positions(pm, ps, alive, a, z, c, delta, band, count=want.numel())
        assert torch.equal(got, want), (a, z, c, delta, band, "count")


def check_cluster_round_same_on_both_paths():
    """A whole round through the dispatching cluster_round: bitwise the same as the torch path."""
    from pwfn_viz.core.bayes import pwfn_sigma_init
    from pwfn_viz.core.clustering import SIGMA_JOINS, ClusterConfig, cluster_round
    g = torch.Generator().manual_seed(3)
    mu = torch.randn(700, generator=g) * 0.05
    mu[:60] = torch.randn(60, generator=g) * 0.5                   # tails
    mu[100:140] = 0.0                                                # exact zeros
    sigma = pwfn_sigma_init(mu)
    cases = [(mu, sigma, 1.0, ClusterConfig()), (mu, sigma, 0.7, ClusterConfig(delta=2.0, b=6, sigma_join="divide")),
             (mu, sigma, 0.9, ClusterConfig(delta=0.5, b=9, sigma_join="keep")),
             (mu.double(), sigma.double() * 3, 0.95, ClusterConfig(sigma_join="divide", sigma_divisor=3.0)),
             (mu[:5], sigma[:5], 0.2, ClusterConfig()),
             (mu.half(), sigma.half() * 3, 0.9, ClusterConfig()),               # values reach half via float32
             (mu.half(), sigma.half() * 3, 0.8, ClusterConfig(sigma_join="divide", sigma_divisor=3.0)),
             (mu, sigma.double(), 0.9, ClusterConfig())]                        # mixed dtypes
    # a join the snap kernel does not know: the kernel keeps sigma, then the join runs in torch
    SIGMA_JOINS.register("halve", lambda taken_sigma, std_mu, config: taken_sigma / 2)
    cases += [(mu, sigma, 0.9, ClusterConfig(sigma_join="halve")), (mu, sigma, 1.0, ClusterConfig(sigma_join="halve"))]
    try:
        for m, s, fraction, cfg in cases:
            got = cluster_round(m, s, fraction, config=cfg)
            with kernels.use_backend("torch"):
                want = cluster_round(m, s, fraction, config=cfg)
            for field in ("mu", "sigma", "fixed_mask", "assignment", "centres"):
                assert torch.equal(getattr(got, field), getattr(want, field)), (field, cfg)
            assert got.steps.equals(want.steps)
    finally:
        SIGMA_JOINS.unregister("halve")


def check_cluster_round_catches_count_mismatch():
    """The Triton path gathers the winner's positions with nonzero_static sized by the coverage
    count; a mask that disagrees with the count is counted on the device and raises at the end
    of the round (here forced by handing the kernel a count one too high)."""
    import pytest
    from pwfn_viz.core import clustering
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(3000, generator=g) * 0.05
    sigma = torch.rand(3000, generator=g) * 0.01
    clustering.cluster_round(mu, sigma, 0.9)   # agrees: no error
    real = kernels.fitting_positions
    kernels.fitting_positions = lambda *a, **k: real(*a[:8], a[8] + 1, *a[9:], **k)
    try:
        with pytest.raises(AssertionError, match="disagreed in"):
            clustering.cluster_round(mu, sigma, 0.9)
    finally:
        kernels.fitting_positions = real


def check_cluster_round_host_reads():
    """On the Triton path a greedy step reads the coverage counts back to the host and nothing
    else: no item(), no nonzero, no boolean-mask indexing, no host-to-device copy per step (each is
    a stream sync on CUDA). Counted by a dispatch mode and by wrapping the round's host helpers."""
    import collections
    from torch.utils._python_dispatch import TorchDispatchMode
    from pwfn_viz.core import clustering
    from pwfn_viz.core.bayes import pwfn_sigma_init

    class SyncingOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__
            if name.startswith(("_local_scalar_dense", "nonzero.", "masked_select", "is_nonzero", "equal")):
                self.count[name] += 1
            elif name.startswith("index.") and any(t is not None and t.dtype == torch.bool for t in args[1]):
                self.count["boolean index"] += 1
            return func(*args, **(kwargs or {}))

    calls = collections.Counter()
    to_host, to_device = clustering._to_host, clustering._to_device
    clustering._to_host = lambda t: (calls.update(["host"]), to_host(t))[1]
    clustering._to_device = lambda *a, **k: (calls.update(["device"]), to_device(*a, **k))[1]
    try:
        g = torch.Generator().manual_seed(0)
        mu = torch.randn(20000, generator=g) * 0.05
        sigma = pwfn_sigma_init(mu)
        for fraction in (0.9, 1.0):
            calls.clear()
            with SyncingOps() as ops:
                res = clustering.cluster_round(mu, sigma, fraction)
            steps, passes = len(res.steps), int(res.steps.pass_index.max()) + 1
            assert steps >= 5 * passes, (steps, passes)   # enough steps for a per-step read to show
            # per pass: extent, windows and the read that finds no more fits; per step: the counts
            assert calls["host"] == 3 * passes + steps, (calls, steps, passes)
            assert calls["device"] <= 5 * passes, (calls, passes)
            # per pass: a few reads of host-side candidate tensors and the compaction's masks;
            # per round: the capped step's selection
            assert sum(ops.count.values()) <= 8 * passes + 4, (dict(ops.count), steps, passes)
    finally:
        clustering._to_host, clustering._to_device = to_host, to_device


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_coverage_counts_exact():
    interpreted("check_coverage_counts_exact")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_cluster_round_host_reads_once_per_step():
    interpreted("check_cluster_round_host_reads")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_cluster_round_catches_count_mismatch():
    interpreted("check_cluster_round_catches_count_mismatch")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_fit_mask_exact():
    interpreted("check_fit_mask_exact")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_cluster_round_same_on_both_paths():
    interpreted("check_cluster_round_same_on_both_paths")


# ---------------------------------------------------------------- fused sampling

def _tensor_state(shape, g, fixed_frac=0.3):
    mu = (torch.randn(shape, generator=g) * 0.1).requires_grad_()
    sigma = (torch.rand(shape, generator=g) * 0.1).requires_grad_()
    fixed = torch.rand(shape, generator=g) < fixed_frac
    fixed_value = torch.where(fixed, torch.randn(shape, generator=g), torch.zeros(shape))
    return mu, sigma, fixed, fixed_value


def _torch_loss_terms(mu, sigma, fixed, eps, lam, cap, wd):
    """The torch path's loss terms (pwfn_viz.bayes) written out with a given eps: R and the decay."""
    reg = lam / 2 * (eps.abs() * (cap - sigma).clamp(min=0) ** 2 * ~fixed).sum()
    return reg, wd / 2 * (mu ** 2 * ~fixed).sum()


NO_LAUNCH = {"empty", "empty_like", "empty_strided", "detach", "view", "reshape", "_unsafe_view", "slice", "select",
             "expand", "alias", "as_strided", "set_", "lift_fresh", "unsqueeze", "squeeze", "_reshape_alias",
             "permute", "transpose", "t", "unbind", "_record_function_enter_new", "_record_function_exit"}


@contextlib.contextmanager
def _counting_launches():
    """Count launches: each Triton kernel of kernels._tl_sampling by name ("triton.<kernel>"), and
    each torch operation that runs a kernel ("torch.<op>"; views and allocations left out), not
    counting what the Triton interpreter itself does inside a launch. ``counts.launches`` lists
    each Triton launch as (kernel name, data_ptr of each positional argument, None for
    non-tensors): holding the tensors would keep autograd from stealing the gradients."""
    from torch.utils._python_dispatch import TorchDispatchMode
    tk = kernels.triton_module("_tl_sampling")
    counts, inside = collections.Counter(), [False]
    counts.launches = []

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                counts["triton." + self.name] += 1
                counts.launches.append((self.name, [a.data_ptr() if isinstance(a, torch.Tensor) else None
                                                    for a in args]))
                inside[0] = True
                try:
                    return self.kernel[grid](*args, **kwargs)
                finally:
                    inside[0] = False
            return launch

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not inside[0] and not func.is_view and name not in NO_LAUNCH:
                counts["torch." + name] += 1
            return func(*args, **(kwargs or {}))

    originals = {n: getattr(tk, n) for n in dir(tk) if n.endswith("_kernel")}
    for n, k in originals.items():
        setattr(tk, n, Counted(n, k))
    try:
        with Ops():
            yield counts
    finally:
        for n, k in originals.items():
            setattr(tk, n, k)


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
    """The task gradient alone, and with the regulariser's gradient at scale 1 through arm()."""
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


def _loss_term_case(g, mode, shape=(37, 29), place=None):
    """One tensor sampled on the fused path, task + regulariser + decay backpropagated the way
    ``mode`` says; returns (grads of mu and sigma, the same on the torch formula with the kernel's
    noise, the two values and their torch formulas, the launch counts, the strides of the
    gradients that reached mu and sigma, the sample and the tensors). ``place(name, t)`` puts mu,
    sigma, fixed, fixed_value and the upstream gradient in the memory layout to test."""
    from pwfn_viz.kernels.loss_terms import fused_regulariser, fused_weight_decay
    from pwfn_viz.kernels.sampling import reference_sample
    lam, cap, wd = 2.0 ** -9, 0.05, 0.3
    mu, sigma, fixed, fixed_value = _tensor_state(shape, g)
    with torch.no_grad():
        sigma.view(-1)[:4] = torch.tensor([2.0 ** -30, -0.5, 0.0, 0.2])
        sigma[1:3] += 0.04                                          # some above the cap
    upstream = torch.randn(shape, generator=g)
    if place is not None:
        mu, sigma = (place(n, t.detach()).requires_grad_() for n, t in (("mu", mu), ("sigma", sigma)))
        fixed, fixed_value, upstream = (place(n, t) for n, t in (("fixed", fixed), ("fixed_value", fixed_value),
                                                                 ("upstream", upstream)))
    strides = {"mu": [], "sigma": []}
    for name, t in (("mu", mu), ("sigma", sigma)):
        t.register_hook(lambda grad, name=name: strides[name].append(grad.stride()))
    with _counting_launches() as counts:
        w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
        task = (w * upstream).sum()
        reg = fused_regulariser([sigma], [fixed], [noise], lam, cap)
        decay = fused_weight_decay([mu], [fixed], [noise], wd)
        calls = 1
        if mode == "scaled":                    # what a GradScaler does, then unscale
            (1024.0 * (task + reg + decay)).backward()
            scale = 1024.0
        elif mode == "accumulated":             # loss / accumulation steps
            ((task + reg + decay) / 4).backward()
            scale = 0.25
        elif mode == "twice":                   # each term asked twice: counts twice
            reg2 = fused_regulariser([sigma], [fixed], [noise], lam, cap)
            (task + reg + decay + reg2 + fused_weight_decay([mu], [fixed], [noise], wd)).backward()
            scale, calls = 1.0, 2
        elif mode == "two caps":                # a second regulariser with another cap: its own pass
            (task + reg + decay + fused_regulariser([sigma], [fixed], [noise], lam, 0.08)).backward()
            scale = 1.0
        elif mode == "autograd.grad":           # gradients returned instead of accumulated
            mu.grad, sigma.grad = torch.autograd.grad(1024.0 * (task + reg + decay), [mu, sigma])
            scale = 1024.0
        elif mode == "terms after task":        # separate backward calls: the terms' own gradient pass
            task.backward()
            (reg + decay).backward()
            scale = 1.0
        elif mode == "terms before task":
            (reg + decay).backward()
            task.backward()
            scale = 1.0
        elif mode == "retained twice":          # a retained graph backpropagated twice: counts twice
            (task + reg + decay).backward(retain_graph=True)
            (task + reg + decay).backward()
            scale = 2.0
        else:
            (task + reg + decay).backward()
            scale = 1.0
    eps = noise.materialise().view_as(mu)
    mu2, sig2 = mu.detach().clone().requires_grad_(), sigma.detach().clone().requires_grad_()
    reg2, decay2 = _torch_loss_terms(mu2, sig2, fixed, eps, lam, cap, wd)
    loss2 = (reference_sample(mu2, sig2, fixed, fixed_value, eps) * upstream).sum() + calls * (reg2 + decay2)
    if mode == "two caps":
        loss2 = loss2 + _torch_loss_terms(mu2, sig2, fixed, eps, lam, 0.08, wd)[0]
    (scale * loss2).backward()
    return dict(mu=(mu.grad, mu2.grad), sigma=(sigma.grad, sig2.grad), reg=(reg, reg2), decay=(decay, decay2),
                fixed=fixed, counts=counts, scale=scale, strides=strides, w=w, eps=eps,
                tensors=(mu.detach(), sigma.detach(), fixed, fixed_value))


def check_sampling_loss_terms_match_torch_path():
    """Gradients and values of the fused regulariser and decay equal the torch path's formula for
    any scaling of the loss, repeated calls and separate backward calls; fixed weights get 0."""
    g = torch.Generator().manual_seed(5)
    for mode in ("plain", "scaled", "accumulated", "twice", "two caps", "autograd.grad", "terms after task",
                 "terms before task", "retained twice"):
        r = _loss_term_case(g, mode)
        for name in ("mu", "sigma"):
            got, want = r[name]
            assert torch.allclose(got / r["scale"], want / r["scale"], rtol=1e-5, atol=1e-7), (mode, name)
            assert (got[r["fixed"]] == 0).all(), (mode, name)
        for name in ("reg", "decay"):
            got, want = r[name]
            assert got.requires_grad and got.dtype == want.dtype and got.dim() == 0
            assert got.item() == pytest.approx(want.item(), rel=1e-5), (mode, name)
        # each term computes its own gradient: one regulariser kernel, one masked_fill per call
        own = (r["counts"]["triton.regulariser_grad_kernel"], r["counts"]["torch.masked_fill_"])
        passes = 2 if mode == "retained twice" else 1
        want = ((2 if mode in ("twice", "two caps") else 1) * passes, (2 if mode == "twice" else 1) * passes)
        assert own == want, (mode, r["counts"])


def check_sampling_aborted_backward_hands_nothing_on():
    """A backward call that fails after the loss terms ran but before the sampling backward
    accumulates nothing, so a later task-only backward gets the task gradient only (as on the
    torch path)."""
    from pwfn_viz.kernels.loss_terms import fused_regulariser, fused_weight_decay

    class FailOnce(torch.autograd.Function):
        armed = True

        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            if FailOnce.armed:
                FailOnce.armed = False
                raise RuntimeError("planned failure")
            return grad

    g = torch.Generator().manual_seed(10)
    mu, sigma, fixed, fixed_value = _tensor_state((20, 20), g)
    upstream = torch.randn(20, 20, generator=g)
    w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
    task = (FailOnce.apply(w) * upstream).sum()
    loss = task + fused_regulariser([sigma], [fixed], [noise], 2.0 ** -6, 0.05) \
        + fused_weight_decay([mu], [fixed], [noise], 0.5)
    with pytest.raises(RuntimeError, match="planned failure"):
        loss.backward(retain_graph=True)
    assert mu.grad is None and sigma.grad is None
    task.backward()
    eps = noise.materialise().view_as(mu)
    s = sigma.detach()
    assert torch.equal(mu.grad, upstream * ~fixed)
    assert torch.allclose(sigma.grad, upstream * eps * (s > 2.0 ** -30) * ~fixed, rtol=1e-6, atol=1e-12)


def check_sampling_loss_terms_launches():
    """The usual step, task + regulariser + decay, launches per tensor: sampling forward, two
    reductions, sampling backward, the regulariser's gradient and the decay's (torch); a
    module's seeds come from one draw."""
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.core.loss_terms import masked_weight_decay, sigma_regulariser
    import torch.nn as nn
    per_size = {}
    for convs in (1, 3):
        model = convert(nn.Sequential(*[nn.Conv2d(2, 2, 3, padding=1, bias=False) for _ in range(convs)],
                                      nn.Flatten(), nn.Linear(8, 3)))
        model.train()
        with _counting_launches() as counts:
            loss = model(torch.randn(2, 2, 2, 2)).square().sum()
            loss = loss + sigma_regulariser(model) + masked_weight_decay(model, 1e-4)
            loss.backward()
        n = len(bayes_tensors(model))
        for kernel in ("sample_fwd_kernel", "regulariser_sum_kernel", "decay_sum_kernel", "sample_bwd_kernel"):
            assert counts["triton." + kernel] == n, (kernel, counts)
        assert counts["triton.regulariser_grad_kernel"] == n and counts["torch.randint"] == n   # a seed per tensor
        ours = {k: v for k, v in counts.items() if "convolution" not in k}
        per_size[n] = sum(ours.values())
    (n1, c1), (n2, c2) = sorted(per_size.items())
    # per extra tensor: sampling forward and backward, the two reductions and their sum's copy, the
    # regulariser's gradient kernel, the decay's gradient (grad * wd, mul, masked_fill) and the two
    # gradient accumulations (mu and sigma each receive the sampling's and a term's): 11
    assert (c2 - c1) == 11 * (n2 - n1), per_size


def check_sampling_grad_scaler():
    """A real torch.amp.GradScaler (on CPU): after unscale_ the gradients are the unscaled loss's."""
    import torch.nn as nn
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.core.loss_terms import masked_weight_decay, sigma_regulariser
    torch.manual_seed(6)
    model = convert(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)))
    with torch.no_grad():
        for t in bayes_tensors(model):
            t.sigma.copy_(torch.rand_like(t.sigma) * 0.1)
            t.fixed.copy_(torch.rand_like(t.sigma) < 0.3)
            t.fixed_value.copy_(torch.where(t.fixed, t.mu, 0))
    model.train()
    x = torch.randn(6, 5)
    grads = {}
    for scaled in (True, False):
        torch.manual_seed(7)                                           # the same noise both times
        for p in model.parameters():
            p.grad = None
        loss = model(x).square().mean() + sigma_regulariser(model, 2.0 ** -7, 0.05) \
            + masked_weight_decay(model, 0.1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        if scaled:
            scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        grads[scaled] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for n in grads[True]:
        assert torch.allclose(grads[True][n], grads[False][n], rtol=1e-5, atol=1e-9), n
    reg_sigma = [t.sigma for t in bayes_tensors(model) if (t.sigma.detach() < 0.05).any()]
    assert reg_sigma                                                   # the regulariser is active


def _fill_state(model, g):
    from pwfn_viz.core.bayes import bayes_tensors
    with torch.no_grad():
        for t in bayes_tensors(model):
            t.sigma.copy_(torch.rand(t.sigma.shape, generator=g) * 0.1)
            t.fixed.copy_(torch.rand(t.sigma.shape, generator=g) < 0.3)
            t.fixed_value.copy_(torch.where(t.fixed, t.mu, 0))


@contextlib.contextmanager
def _torch_path_noise(model, noise_of):
    """Make the torch path sample ``model``'s converted tensors with ``noise_of(name)`` instead of
    fresh noise (torch.randn_like patched for those mu tensors only)."""
    from pwfn_viz.core.bayes import bayes_tensors
    names = {id(t.mu): t.name for t in bayes_tensors(model)}
    original = torch.randn_like

    def randn_like(x, *args, **kwargs):
        if id(x) in names:
            return noise_of(names[id(x)]).view_as(x).clone()
        return original(x, *args, **kwargs)
    torch.randn_like = randn_like
    try:
        with kernels.use_backend("torch"):
            yield
    finally:
        torch.randn_like = original


def check_converted_layers_train_like_torch_path():
    """End to end: SGD with momentum on task + regulariser + decay, two micro-batches per step with
    loss / 2 (gradient accumulation) and a constant loss scale, on the fused path and on the torch
    path fed the fused path's noise: the same parameters after every step; fixed weights stay."""
    import copy
    import torch.nn as nn
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.core.loss_terms import masked_weight_decay, param_groups, sigma_regulariser
    g = torch.Generator().manual_seed(8)
    torch.manual_seed(8)
    fused = convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)))
    _fill_state(fused, g)
    reference = copy.deepcopy(fused)
    models = {"fused": fused, "torch": reference}
    opts = {k: torch.optim.SGD(param_groups(m, 1e-2), lr=0.05, momentum=0.9) for k, m in models.items()}
    fixed_before = {t.name: t.fixed_value[t.fixed].clone() for t in bayes_tensors(fused)}
    scale = 256.0

    def micro_step(model, x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        loss = loss + sigma_regulariser(model, 2.0 ** -6, 0.05) + masked_weight_decay(model, 1e-2)
        (scale * loss / 2).backward()

    for step in range(3):
        for k in models:
            opts[k].zero_grad(set_to_none=True)
        for micro in range(2):
            x, y = torch.randn(5, 2, 4, 4, generator=g), torch.randint(0, 4, (5,), generator=g)
            micro_step(fused, x, y)
            eps = {t.name: t.noise.materialise() for t in bayes_tensors(fused)}
            with _torch_path_noise(reference, eps.__getitem__):
                micro_step(reference, x, y)
            assert all(torch.equal(t.noise.flatten(), eps[t.name])
                       for t in bayes_tensors(reference))
        for k, m in models.items():
            for p in m.parameters():
                p.grad /= scale
            opts[k].step()
        for (name, p), (_, q) in zip(fused.named_parameters(), reference.named_parameters()):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), (step, name, (p - q).abs().max().item())
    for t in bayes_tensors(fused):
        assert torch.equal(t.mu.detach()[t.fixed], fixed_before[t.name]) or not t.fixed.any()
        assert torch.equal(t.fixed, next(r for r in bayes_tensors(reference) if r.name == t.name).fixed)


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
    """bayes.convert + forced triton: the hook samples with the kernel; sigma_regulariser and
    masked_weight_decay give the torch formulas' values, and the grads equal the torch path's."""
    import torch.nn as nn
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.core.loss_terms import masked_weight_decay, sigma_regulariser
    from pwfn_viz.kernels.sampling import reference_sample
    model = convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)))
    _fill_state(model, torch.Generator().manual_seed(9))
    x = torch.randn(5, 2, 4, 4)
    model.train()
    out = model(x)
    ts = bayes_tensors(model)
    assert all(isinstance(t.noise, kernels.FusedNoise) for t in ts)
    eps = {t.name: t.noise.materialise().view_as(t.mu) for t in ts}
    lam, cap, wd = 2.0 ** -9, 0.05, 0.2
    reg, decay = sigma_regulariser(model, lam, cap), masked_weight_decay(model, wd)
    assert reg.requires_grad and decay.requires_grad
    want = [_torch_loss_terms(t.mu.detach(), t.sigma.detach(), t.fixed, eps[t.name], lam, cap, wd) for t in ts]
    assert reg.item() == pytest.approx(sum(r for r, _ in want).item(), rel=1e-5)
    assert decay.item() == pytest.approx(sum(d for _, d in want).item(), rel=1e-5)
    (out.square().sum() + reg + decay).backward()
    # reference: the same network, weights from the torch formula with the same noise, loss-term R
    ref = {t.name: (t.mu.detach().clone().requires_grad_(), t.sigma.detach().clone().requires_grad_())
           for t in ts}
    w = {n: reference_sample(m, s, t.fixed, t.fixed_value, eps[n]) for t, (n, (m, s)) in zip(ts, ref.items())}
    h = nn.functional.conv2d(x, w["0.weight"], w["0.bias"]).relu().flatten(1)
    loss = nn.functional.linear(h, w["3.weight"], w["3.bias"]).square().sum()
    for t in ts:
        loss = loss + sum(_torch_loss_terms(*ref[t.name], t.fixed, eps[t.name], lam, cap, wd))
    loss.backward()
    for t in ts:
        assert torch.allclose(t.mu.grad, ref[t.name][0].grad, rtol=1e-5, atol=1e-7), t.name
        assert torch.allclose(t.sigma.grad, ref[t.name][1].grad, rtol=1e-5, atol=1e-7), t.name
    model.eval()                                                     # evaluation: mean weights, no noise
    mean = {t.name: torch.where(t.fixed, t.fixed_value, t.mu.detach()) for t in ts}
    h = nn.functional.conv2d(x, mean["0.weight"], mean["0.bias"]).relu().flatten(1)
    assert torch.equal(model(x), nn.functional.linear(h, mean["3.weight"], mean["3.bias"]))


def check_converted_layers_mixed_paths():
    """A float64 layer (the fused kernels take float32/16/bf16) stays on the torch path next to a
    fused float32 one: the loss terms add both kinds, with the torch formulas' values and grads."""
    import torch.nn as nn
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.core.loss_terms import masked_weight_decay, sigma_regulariser
    from pwfn_viz.kernels.sampling import reference_sample

    class ToDouble(nn.Module):
        def forward(self, x):
            return x.double()

    model = convert(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), ToDouble(), nn.Linear(3, 2).double()))
    _fill_state(model, torch.Generator().manual_seed(11))
    model.train()
    x = torch.randn(5, 4)
    out = model(x)
    ts = bayes_tensors(model)
    noises = [t.noise for t in ts]
    assert [isinstance(n, kernels.FusedNoise) for n in noises] == [True, True, False, False]
    eps = [(n.materialise() if isinstance(n, kernels.FusedNoise) else n).view_as(t.mu) for n, t in zip(noises, ts)]
    lam, cap, wd = 2.0 ** -6, 0.05, 0.3
    reg, decay = sigma_regulariser(model, lam, cap), masked_weight_decay(model, wd)
    assert reg.dtype == decay.dtype == torch.float64
    (out.sum() + 8.0 * (reg + decay)).backward()
    ref = [(t.mu.detach().clone().requires_grad_(), t.sigma.detach().clone().requires_grad_()) for t in ts]
    w = [reference_sample(m, s, t.fixed, t.fixed_value, e) for (m, s), t, e in zip(ref, ts, eps)]
    ref_out = nn.functional.linear(nn.functional.linear(x, w[0], w[1]).tanh().double(), w[2], w[3])
    terms = [_torch_loss_terms(m, s, t.fixed, e.to(s.dtype), lam, cap, wd) for (m, s), t, e in zip(ref, ts, eps)]
    ref_reg, ref_decay = sum(r for r, _ in terms), sum(d for _, d in terms)
    assert reg.item() == pytest.approx(ref_reg.item(), rel=1e-5)
    assert decay.item() == pytest.approx(ref_decay.item(), rel=1e-5)
    (ref_out.sum() + 8.0 * (ref_reg + ref_decay)).backward()
    for t, (m, s) in zip(ts, ref):
        assert torch.allclose(t.mu.grad, m.grad, rtol=1e-5, atol=1e-7), t.name
        assert torch.allclose(t.sigma.grad, s.grad, rtol=1e-5, atol=1e-7), t.name


# ---- memory layouts (channels_last etc.): the Philox counter is the offset in mu's layout

def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


SAMPLING_LAYOUTS = {   # name: (shape, put a tensor of that shape in the layout), all tensors alike
    "channels_last": ((8, 6, 5, 7), _cl),
    "channels_last_3d": ((4, 6, 3, 5, 5), lambda t: t.contiguous(memory_format=torch.channels_last_3d)),
    "permuted": ((9, 11, 13), lambda t: t.permute(1, 2, 0).contiguous().permute(2, 0, 1)),
    "transposed": ((37, 29), lambda t: t.t().contiguous().t()),
    "not dense": ((37, 29), lambda t: torch.empty(37, 58, dtype=t.dtype)[:, ::2].copy_(t)),
}
COPY_OPS = ("torch.copy_", "torch.clone", "torch._to_copy", "torch.contiguous")


def _copies(counts) -> int:
    return sum(counts[k] for k in COPY_OPS)


def test_sampling_layout_rule():
    """Layout.of: mu's strides where mu is non-overlapping and dense in some order, else row-major;
    put() leaves a tensor that lies that way alone and copies any other once, logical order kept."""
    from pwfn_viz.kernels.sampling import Layout
    x = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    for t in (x, _cl(x), torch.zeros(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d),
              x.permute(3, 1, 0, 2).contiguous().permute(2, 1, 3, 0), x[:1], x.view(6, 20).t(),
              torch.zeros(20).as_strided((1, 4, 5), (7, 5, 1)),
              _cl(torch.zeros(4, 3, 1, 1)), torch.zeros(3, 0, 2).permute(2, 0, 1), torch.tensor(2.0)):
        assert Layout.of(t).stride == t.stride(), t.stride()         # dense in some order: kept
    for t in (x[:, :, ::2], x[:, :1], x[:, 1:], x.permute(0, 2, 1, 3)[:, :3], torch.zeros(3).expand(4, 3)):
        assert Layout.of(t).stride == torch.empty(t.shape).stride(), t.stride()   # not dense: row-major
    y = _cl(x)
    cl = Layout.of(y)
    assert cl.put(y) is y                                               # lies that way: as it is
    moved = cl.put(x)                                                   # row-major: copied into it
    assert moved.stride() == y.stride() and torch.equal(moved, x)
    assert torch.equal(cl.put(x.reshape(-1)), x)                       # flat logical order
    one = Layout.of(_cl(torch.zeros(4, 3, 1, 1)))
    z = torch.randn(4, 3, 1, 1)                                        # strides differ on size-1 dims only
    assert one.put(z) is z


def check_sampling_memory_layouts():
    """mu, sigma, fixed, fixed_value (and the incoming gradient) in one layout: channels_last,
    channels_last_3d, a permutation, a transpose, or an odd view (not dense: row-major). The sample
    is the formula with materialise()'s noise (logical order) and has mu's layout; the loss terms'
    values and the gradients equal the torch formula's with the same noise, for the handed-over
    and the terms' own gradient passes; the gradients have mu's layout; a dense layout copies
    nothing in the whole step."""
    from pwfn_viz.kernels.sampling import reference_sample
    g = torch.Generator().manual_seed(12)
    for layout, (shape, put) in SAMPLING_LAYOUTS.items():
        for mode in ("scaled", "terms after task"):
            r = _loss_term_case(g, mode, shape, lambda name, t: put(t))
            mu, sigma, fixed, fixed_value = r["tensors"]
            dense = layout != "not dense"
            want_stride = mu.stride() if dense else torch.empty(shape).stride()
            assert not mu.is_contiguous(), layout                           # a layout other than row-major
            assert torch.equal(r["w"], reference_sample(mu, sigma, fixed, fixed_value, r["eps"])), (layout, mode)
            assert r["w"].stride() == want_stride, (layout, r["w"].stride())
            for name in ("mu", "sigma"):
                got, want = r[name]
                assert torch.allclose(got / r["scale"], want / r["scale"], rtol=1e-5, atol=1e-7), (layout, mode, name)
                assert r["strides"][name] and set(r["strides"][name]) == {want_stride}, (layout, mode, r["strides"])
            for name in ("reg", "decay"):
                got, want = r[name]
                assert got.item() == pytest.approx(want.item(), rel=1e-5), (layout, mode, name)
            if dense:
                assert _copies(r["counts"]) == 0, (layout, mode, dict(r["counts"]))


def check_sampling_mixed_layouts():
    """mu (and fixed_value) channels_last, sigma, fixed and the incoming gradient row-major: each of
    those is copied once into mu's layout by the launch that reads it, and every result still
    equals the formula's with the same noise."""
    from pwfn_viz.kernels.sampling import reference_sample
    g = torch.Generator().manual_seed(13)
    rowmajor = ("sigma", "fixed", "upstream")
    for mode in ("plain", "scaled", "terms after task"):
        r = _loss_term_case(g, mode, (8, 6, 5, 7), lambda name, t: t if name in rowmajor else _cl(t))
        mu, sigma, fixed, fixed_value = r["tensors"]
        assert sigma.is_contiguous() and not mu.is_contiguous()
        assert torch.equal(r["w"], reference_sample(mu, sigma, fixed, fixed_value, r["eps"])), mode
        assert r["w"].stride() == mu.stride()
        for name in ("mu", "sigma"):
            got, want = r[name]
            assert torch.allclose(got / r["scale"], want / r["scale"], rtol=1e-5, atol=1e-7), (mode, name)
        for name in ("reg", "decay"):
            got, want = r[name]
            assert got.item() == pytest.approx(want.item(), rel=1e-5), (mode, name)
    # one copy each of sigma and fixed for the forward (their kernel reads them in mu's layout)
    mu, sigma, fixed, fixed_value = _tensor_state((8, 6, 5, 7), g)
    mu, fixed_value = _cl(mu.detach()).requires_grad_(), _cl(fixed_value)
    with _counting_launches() as counts:
        w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
    assert counts["torch.copy_"] == 2 and _copies(counts) == 2, dict(counts)


def _channels_last_case(mixed: bool):
    """A converted conv net moved to channels_last (parameters and buffers), sampled on the fused
    path; ``mixed``: one conv's sigma and fixed mask made row-major again. Returns what the checks
    compare (see check_converted_layers_channels_last)."""
    import torch.nn as nn
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.core.loss_terms import masked_weight_decay, sigma_regulariser
    from pwfn_viz.kernels.sampling import reference_sample
    model = convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten(),
                                  nn.Linear(50, 3)))
    _fill_state(model, torch.Generator().manual_seed(14))
    model.to(memory_format=torch.channels_last).train()
    ts = bayes_tensors(model)
    assert all(not getattr(ts[0], k).is_contiguous() for k in ("mu", "sigma", "fixed", "fixed_value"))
    if mixed:
        ts[0].sigma.data = ts[0].sigma.data.contiguous()
        ts[0].param.fixed = ts[0].fixed.contiguous()
    x = _cl(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(15)))
    calls, original = [], kernels.fused_sample

    def watched(mu, sigma, fixed, fixed_value, *args, **kwargs):    # what the hooks' calls do
        with _counting_launches() as counts:
            out = original(mu, sigma, fixed, fixed_value, *args, **kwargs)
        calls.append(((mu, sigma, fixed, fixed_value), counts, out[0].detach()))
        return out
    kernels.fused_sample = watched
    try:
        out = model(x)
    finally:
        kernels.fused_sample = original
    strides = {t.name: {"mu": [], "sigma": []} for t in ts}
    for t in ts:
        for kind in ("mu", "sigma"):
            getattr(t, kind).register_hook(lambda grad, n=t.name, k=kind: strides[n][k].append(grad.stride()))
    lam, cap, wd = 2.0 ** -8, 0.05, 0.2
    with _counting_launches() as step:
        loss = out.square().sum() + sigma_regulariser(model, lam, cap) + masked_weight_decay(model, wd)
        (1024.0 * loss).backward()
    eps = {t.name: t.noise.materialise().view_as(t.mu) for t in ts}
    # the torch path's formulas on row-major copies, with the same noise
    ref = {t.name: (t.mu.detach().contiguous().requires_grad_(), t.sigma.detach().contiguous().requires_grad_())
           for t in ts}
    w = {t.name: reference_sample(*ref[t.name], t.fixed, t.fixed_value, eps[t.name]) for t in ts}
    h = nn.functional.conv2d(x.contiguous(), w["0.weight"], w["0.bias"], padding=1).relu()
    h = nn.functional.conv2d(h, w["2.weight"], w["2.bias"]).flatten(1)
    ref_loss = nn.functional.linear(h, w["4.weight"], w["4.bias"]).square().sum()
    for t in ts:
        ref_loss = ref_loss + sum(_torch_loss_terms(*ref[t.name], t.fixed, eps[t.name], lam, cap, wd))
    (1024.0 * ref_loss).backward()
    return dict(model=model, ts=ts, calls=calls, strides=strides, step=step, eps=eps, ref=ref, loss=loss,
                ref_loss=ref_loss)


def _same_layout(a, b, shape) -> bool:
    return all(x == y for x, y, n in zip(a, b, shape) if n > 1)


def _check_channels_last(mixed: bool):
    from pwfn_viz.kernels.sampling import reference_sample
    r = _channels_last_case(mixed)
    ts = r["ts"]
    assert len(r["calls"]) == len(ts)                                  # every tensor on the fused path
    for t, (inputs, counts, w) in zip(ts, r["calls"]):                # w: this pass's sample
        assert torch.equal(w, reference_sample(t.mu.detach(), t.sigma.detach(), t.fixed, t.fixed_value,
                                               r["eps"][t.name])), t.name
        assert w.stride() == t.mu.stride(), (t.name, w.stride(), t.mu.stride())
        (name, ptrs), = counts.launches                                 # the forward kernel reads ...
        assert name == "sample_fwd_kernel"
        as_is = [a == b.data_ptr() for a, b in zip(ptrs[:4], inputs)]
        copies = _copies(counts)
        if mixed and t.name == "0.weight":                              # ... sigma and fixed copied once
            assert as_is == [True, False, False, True] and copies == 2, (as_is, dict(counts))
        else:                                                           # ... the layer's own tensors
            assert as_is == [True] * 4 and copies == 0, (t.name, as_is, dict(counts))
        for kind in ("mu", "sigma"):
            got, want = getattr(t, kind).grad, getattr(r["ref"][t.name][{"mu": 0, "sigma": 1}[kind]], "grad")
            assert torch.allclose(got / 1024, want / 1024, rtol=1e-5, atol=1e-7), (t.name, kind)
            # the gradient lies like mu (strides of size-1 dimensions carry no layout: a sum of two
            # gradients may write them either way)
            seen = r["strides"][t.name][kind]
            assert len(seen) == 1 and _same_layout(seen[0], t.mu.stride(), t.mu.shape), (t.name, kind, seen)
    assert r["loss"].item() == pytest.approx(r["ref_loss"].item(), rel=1e-5)
    if not mixed:        # loss terms and backward copy nothing (conv backward gives channels_last grads)
        assert _copies(r["step"]) == 0, dict(r["step"])


def check_converted_layers_channels_last():
    """model.to(memory_format=torch.channels_last) on the fused path: the samples are the formula
    with materialise()'s noise and keep the parameters' layout, the forward kernels read the
    layers' own tensors (no copies), and the gradients of task + regulariser + decay (loss scaled
    by 1024) equal the torch formula's with the same noise, in the parameters' layout."""
    _check_channels_last(mixed=False)


def check_converted_layers_channels_last_mixed_sigma():
    """The same with one conv's sigma (its data replaced) and fixed mask row-major again."""
    _check_channels_last(mixed=True)


def check_sampling_module_seeds():
    """One draw_seeds launch gives the seeds of all tensors of a module: each fused_sample uses its
    one-element view as it is; the tensors get different noise; torch.manual_seed reproduces them."""
    from pwfn_viz.kernels.sampling import draw_seeds
    g = torch.Generator().manual_seed(16)
    weight, bias = _tensor_state((40, 30), g), _tensor_state((40,), g)

    def module_pass():
        with _counting_launches() as counts:
            seeds = draw_seeds(2, "cpu")
            (w, nw), (b, nb) = (kernels.fused_sample(*state, seed=seeds[i:i + 1])
                                for i, state in enumerate((weight, bias)))
        assert counts["torch.randint"] == 1 and _copies(counts) == 0, dict(counts)
        assert nw.seed.data_ptr() == seeds.data_ptr() and nb.seed.data_ptr() == seeds[1:].data_ptr()
        return w, b, nw, nb

    torch.manual_seed(21)
    w1, b1, nw, nb = module_pass()
    assert int(nw.seed) != int(nb.seed)
    assert not torch.equal(nw.materialise()[:40], nb.materialise())   # the same counters, other noise
    w2, b2, _, _ = module_pass()                                        # the next pass: other noise
    assert not torch.equal(w1, w2) and not torch.equal(b1, b2)
    torch.manual_seed(21)
    w3, b3, _, _ = module_pass()
    assert torch.equal(w1, w3) and torch.equal(b1, b3)
    for bad in (torch.zeros(2, dtype=torch.int64), torch.zeros(1), torch.zeros(1, dtype=torch.int32)):
        with pytest.raises(ValueError, match="one int64 element"):
            kernels.fused_sample(*bias, seed=bad)


def check_converted_layers_seeds():
    """A converted channels_last conv net: weight and bias of one module get different seeds and
    noise, torch.manual_seed(s) twice gives the same samples, the next pass other ones."""
    import torch.nn as nn
    from pwfn_viz.core.bayes import bayes_tensors, convert
    from pwfn_viz.kernels.sampling import FusedNoise, Layout
    model = convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(36, 3)))
    model.to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 5, 5)

    def one_pass():
        out = model(x)
        return out, {t.name: t.noise for t in bayes_tensors(model)}

    torch.manual_seed(3)
    out1, n1 = one_pass()
    seeds = [int(n.seed) for n in n1.values()]
    assert len(set(seeds)) == len(seeds)
    memory_order = FusedNoise(n1["0.weight"].seed, Layout((108,), (1,))).materialise()
    assert not torch.equal(memory_order[:4], n1["0.bias"].materialise())
    out2, _ = one_pass()
    torch.manual_seed(3)
    out3, n3 = one_pass()
    assert torch.equal(out1, out3) and not torch.equal(out1, out2)
    assert all(torch.equal(n1[k].materialise(), n3[k].materialise()) for k in n1)


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_forward_and_statistics():
    interpreted("check_sampling_forward_and_statistics")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_gradients_match_formula():
    interpreted("check_sampling_gradients_match_formula")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_loss_terms_match_torch_path():
    interpreted("check_sampling_loss_terms_match_torch_path")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_aborted_backward_hands_nothing_on():
    interpreted("check_sampling_aborted_backward_hands_nothing_on")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_loss_terms_launches():
    interpreted("check_sampling_loss_terms_launches")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_grad_scaler():
    interpreted("check_sampling_grad_scaler")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_converted_layers_train_like_torch_path():
    interpreted("check_converted_layers_train_like_torch_path")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_reproducible():
    interpreted("check_sampling_reproducible")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_converted_layers_mixed_paths():
    interpreted("check_converted_layers_mixed_paths")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_converted_layers_use_fused_path():
    interpreted("check_converted_layers_use_fused_path")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_memory_layouts():
    interpreted("check_sampling_memory_layouts")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_mixed_layouts():
    interpreted("check_sampling_mixed_layouts")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_converted_layers_channels_last():
    interpreted("check_converted_layers_channels_last")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_converted_layers_channels_last_mixed_sigma():
    interpreted("check_converted_layers_channels_last_mixed_sigma")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_sampling_module_seeds():
    interpreted("check_sampling_module_seeds")


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
def test_converted_layers_seeds():
    interpreted("check_converted_layers_seeds")


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
    from pwfn_viz.baselines.kmeans import _boundaries, kmeans_1d
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


@pytest.mark.slow   # the first of these runs every check in one interpreter subprocess
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
    from pwfn_viz.core.bayes import bayes_tensors, convert
    monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    layer = convert(nn.Linear(3, 2)).train()
    layer(torch.randn(4, 3))
    assert isinstance(bayes_tensors(layer)[0].noise, torch.Tensor)
