"""The one prepared GPU run: ``python -m benchmarks.gpu_suite`` from the repository root.

Needs only the repository and an environment with torch (CUDA), triton and timm (``pip install
-e .`` of this project). Writes everything to ``$OUT/gpu_results.txt`` (``OUT`` defaults to
``./gpu_results``) as it goes, and to stdout. Steps, each guarded so that a failure prints its
traceback and the run goes on:

1. the device and versions;
2. kernel self-checks on CUDA tensors: every Triton kernel against its torch path on the same
   data (coverage counts, fit masks, a ten-round schedule bitwise, k-means exactly; sampling
   statistics, fixed values and gradients to float32 rounding), and the host syncs of a round
   (one per greedy step, counted by torch's sync debug mode);
3. compile every kernel variant the benchmarks meet (so compile time is not timed);
4. the suite of ``python -m benchmarks --device cuda`` (WhatIf, training step, clustering at
   11.7M, 5.7M and 1M weights), with a time guard that skips what would not fit in
   ``--budget-s`` (default 420 s) and says so;
5. if time is left, ``bench_train_gpu`` (training through timm's ImageFolder pipeline).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import __main__ as suite

F64 = torch.float64


def _sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def _check(out, name: str, fn) -> bool:
    t0 = time.perf_counter()
    try:
        detail = fn()
        out(f"  PASS {name} ({time.perf_counter() - t0:.1f} s){': ' + detail if detail else ''}")
        return True
    except Exception:
        out(f"  FAIL {name} ({time.perf_counter() - t0:.1f} s)", *traceback.format_exc().rstrip().splitlines())
        return False


DEV = torch.device("cuda")
SCALE = 1.0   # --dry-run: CPU tensors under the Triton interpreter, sizes scaled down


def _n(n: int) -> int:
    return max(1000, int(n * SCALE))


def check_coverage_and_fit() -> str:
    from pwfn_viz import kernels
    from pwfn_viz.core.clustering import _coverage, _fitting
    dev = DEV
    g = torch.Generator(device=dev).manual_seed(0)
    n = _n(2_000_000)
    pm = torch.sort(torch.randn(n, generator=g, device=dev, dtype=F64) * 0.2).values
    ps = torch.rand(n, generator=g, device=dev, dtype=F64) * 0.05 + 2.0 ** -20
    grid = torch.arange(-64, 65, device=dev, dtype=F64) / 64
    pm_d = torch.sort(grid[torch.randint(0, 129, (n,), generator=g, device=dev)]).values
    ps_d = torch.randint(0, 8, (n,), generator=g, device=dev).to(F64) / 64   # ends exactly on centres
    cases = [(pm_d, ps_d, 1.0, grid), (pm_d, ps_d, 2.0, grid)]
    for k in (25, 200, 1000, 3000, 5000):
        cases.append((pm, ps, 1.0, torch.sort(torch.randn(k, generator=g, device=dev, dtype=F64) * 0.2).values))
    checked = 0
    for m, s, delta, c in cases:
        with kernels.use_backend("torch"):
            want = _coverage(m, s, delta, c)
        for strategy in (None, "atomic") + (("histogram",) if c.numel() < 4096 else ()):
            got = kernels.coverage_counts(m, s, delta, c, strategy=strategy)
            assert torch.equal(got, want), f"coverage differs: K={c.numel()} strategy={strategy}"
            checked += 1
    alive = torch.rand(n, generator=g, device=dev) < 0.7
    for m, s in ((pm, ps), (pm_d, ps_d)):
        for a, z, c, delta, band in [(0, n, 0.25, 1.0, None), (1000, n - 5000, 0.0, 1.0, (n // 3, n // 2)),
                                     (5, 7, 0.5, 2.0, None), (0, n, 0.0, 0.5, (0, n))]:
            with kernels.use_backend("torch"):
                want = _fitting(m, s, alive, a, z, c, delta, band)
            got = kernels.fitting_positions(m, s, alive, a, z, c, delta, band)
            assert torch.equal(got, want), f"fit mask differs: {(a, z, c, delta, band)}"
            checked += 1
    return f"{checked} comparisons exact at N={n:,}"


def check_schedule_bitwise() -> str:
    from benchmarks.bench_clustering import SCHEDULE, synthetic_weights
    from pwfn_viz import kernels
    from pwfn_viz.core.clustering import cluster_round
    mu0, sigma0 = (t.to(DEV) for t in synthetic_weights(_n(300_000), seed=5))
    results, times = {}, {}
    for backend in ("triton", "torch"):
        mu, sigma, rounds = mu0, sigma0, []
        _sync()
        t0 = time.perf_counter()
        with kernels.use_backend(backend):
            for r, f in enumerate(SCHEDULE):
                res = cluster_round(mu, sigma, f, round_index=r)
                mu, sigma = res.mu, res.sigma
                rounds.append(res)
        _sync()
        results[backend], times[backend] = rounds, time.perf_counter() - t0
    for r, (a, b) in enumerate(zip(results["triton"], results["torch"])):
        for fld in ("mu", "sigma", "fixed_mask", "assignment", "centres"):
            assert torch.equal(getattr(a, fld).cpu(), getattr(b, fld).cpu()), f"round {r}: {fld} differs"
        assert a.steps.equals(b.steps), f"round {r}: step tables differ"
    return (f"10 rounds at N={mu0.numel():,} identical; triton {times['triton']:.2f} s, torch {times['torch']:.2f} s "
            "(first use, includes compiles)")


def check_host_syncs() -> str:
    """A round on the Triton path synchronises with the host once per greedy step (the winner and
    its count) plus a few times per pass: counted by torch's CUDA sync debug mode."""
    from benchmarks.bench_clustering import synthetic_weights
    from benchmarks.bench_whatif import count_host_syncs
    from pwfn_viz import kernels
    from pwfn_viz.core.clustering import cluster_round
    mu, sigma = (t.to(DEV) for t in synthetic_weights(_n(1_000_000), seed=6))
    with kernels.use_backend("triton"):
        cluster_round(mu, sigma, 0.9)   # compile
        res, syncs = count_host_syncs(lambda: cluster_round(mu, sigma, 0.9))
    steps, passes = len(res.steps), int(res.steps.pass_index.max()) + 1
    if syncs is None:
        return f"not counted (no CUDA); {steps} steps, {passes} passes"
    budget = steps + 10 * passes + 10   # per pass: extent, windows, last read, compaction; the cap
    assert syncs <= budget, f"{syncs} host syncs for {steps} steps in {passes} passes (at most {budget} expected)"
    return f"{syncs} host syncs for {steps} greedy steps in {passes} passes"


def _sampling_inputs(seed: int, sigma_max: float):
    """A flat converted tensor on DEV: mu and sigma leaves, 30 % fixed with their own values."""
    g = torch.Generator(device=DEV).manual_seed(seed)
    n = _n(1 << 20)
    mu = (torch.randn(n, generator=g, device=DEV) * 0.1).requires_grad_()
    sigma = (torch.rand(n, generator=g, device=DEV) * sigma_max).requires_grad_()
    fixed = torch.rand(n, generator=g, device=DEV) < 0.3
    return g, n, mu, sigma, fixed, torch.where(fixed, torch.randn(n, generator=g, device=DEV), 0)


def _grad_sigma_formula(upstream, eps, sigma, fixed, lam: float, cap: float, scale: float = 1.0):
    """The torch path's sigma gradient (task term, floor at 2^-30, regulariser), 0 on fixed."""
    task = upstream * eps * (sigma > 2.0 ** -30)
    return torch.where(fixed, 0, scale * (task - lam * (cap - sigma).clamp(min=0) * eps.abs()))


def check_sampling() -> str:
    from pwfn_viz import kernels
    from pwfn_viz.kernels.sampling import reference_sample
    dev = DEV
    g, n, mu, sigma, fixed, fixed_value = _sampling_inputs(1, sigma_max=0.1)
    with kernels.use_backend("triton"):
        torch.manual_seed(7)
        w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
        torch.manual_seed(7)
        w_again, _ = kernels.fused_sample(mu, sigma, fixed, fixed_value)
        eps = noise.materialise()
        noise.arm(2.0 ** -11, 0.05)
        up = torch.randn(n, generator=g, device=dev)
        w.backward(up)
    assert torch.equal(w, w_again), "same torch seed, different sample"
    assert torch.equal(w[fixed], fixed_value[fixed]), "fixed entries are not exactly their value"
    ref = reference_sample(mu.detach(), sigma.detach(), fixed, fixed_value, eps)
    err = (w - ref).abs().max().item()
    assert err <= 1e-6, f"w differs from the torch formula by {err}"
    m, sd = eps.mean().item(), eps.std().item()
    assert abs(m) < 5 / n ** 0.5 and abs(sd - 1) < 5 / (2 * n) ** 0.5, f"noise mean {m}, std {sd}"
    want = _grad_sigma_formula(up, eps, sigma.detach(), fixed, 2.0 ** -11, 0.05)
    assert torch.equal(mu.grad, torch.where(fixed, 0, up)), "grad mu"
    gerr = (sigma.grad - want).abs().max().item()
    assert torch.allclose(sigma.grad, want, rtol=1e-5, atol=1e-7), f"grad sigma off by {gerr}"
    return f"max |w - formula| {err:.1e}, max |grad_sigma - formula| {gerr:.1e}, noise mean {m:+.4f} std {sd:.4f}"


def check_loss_terms() -> str:
    """The regulariser and decay through a scaled loss (as under a GradScaler), on the device's
    autograd thread: gradients equal the formula times the scale, and both terms hand their
    gradient to the sampling backward instead of a pass of their own."""
    from pwfn_viz import kernels
    from pwfn_viz.kernels import loss_terms, sampling
    dev, lam, cap, wd, scale = DEV, 2.0 ** -11, 0.05, 1e-4, 1024.0
    g, n, mu, sigma, fixed, fixed_value = _sampling_inputs(3, sigma_max=0.06)
    x = torch.randn(n, generator=g, device=dev)
    handed = []
    hand_over = sampling.FusedNoise._hand_over
    sampling.FusedNoise._hand_over = lambda self, *a: handed.append(hand_over(self, *a)) or handed[-1]
    try:
        with kernels.use_backend("triton"):
            w, noise = kernels.fused_sample(mu, sigma, fixed, fixed_value)
            loss = (w * x).sum() + loss_terms.fused_regulariser([sigma], [fixed], [noise], lam, cap) \
                + loss_terms.fused_weight_decay([mu], [fixed], [noise], wd)
            (scale * loss).backward()
            eps = noise.materialise()
    finally:
        sampling.FusedNoise._hand_over = hand_over
    m, s = mu.detach(), sigma.detach()
    want_mu = torch.where(fixed, 0, scale * (x + wd * m))
    want_sigma = _grad_sigma_formula(x, eps, s, fixed, lam, cap, scale)
    assert torch.allclose(mu.grad, want_mu, rtol=1e-5, atol=1e-6), "grad mu"
    assert torch.allclose(sigma.grad, want_sigma, rtol=1e-5, atol=1e-6), "grad sigma"
    assert handed == [True, True], f"hand-over results {handed} (False: the term computed its own gradient)"
    return (f"loss x {scale:.0f}: grads within float32 rounding of the formula, both terms handed over "
            f"(max |d grad_sigma| {(sigma.grad - want_sigma).abs().max().item():.1e})")


def check_kmeans() -> str:
    import numpy as np
    from pwfn_viz import kernels
    from pwfn_viz.kernels.kmeans import assign_torch, boundaries_torch
    from pwfn_viz.baselines.kmeans import _boundaries
    rng = np.random.default_rng(2)
    ties = np.repeat(np.arange(-8, 9) / 8, 50)   # values exactly half-way between centres
    xs = np.sort(np.concatenate([rng.laplace(0, 0.05, _n(1_000_000)), np.zeros(1000), ties]))
    for c in (np.sort(rng.choice(xs, 256, replace=False)), np.array([-1.0, -0.5, 0.0, 0.0, 0.5, 1.0])):
        xs_t, c_t = torch.from_numpy(xs).to(DEV), torch.from_numpy(c).to(DEV)
        with kernels.use_backend("triton"):
            pos, lab = kernels.kmeans_boundaries(xs_t, c_t), kernels.kmeans_assign(xs_t, c_t)
        assert pos.tolist() == _boundaries(xs, c).tolist() == boundaries_torch(xs_t, c_t).tolist(), "boundaries"
        assert torch.equal(lab, assign_torch(xs_t, c_t)), "assignment"
    return f"boundaries and labels exact at N={len(xs):,}, k=256 and with duplicate centres"


def warm_kernels() -> str:
    """Compile each coverage variant (histogram sizes 32..4096, atomics) once."""
    from pwfn_viz import kernels
    dev = DEV
    pm = torch.linspace(-1, 1, 4096, device=dev, dtype=F64)
    ps = torch.full_like(pm, 0.01)
    with kernels.use_backend("triton"):
        for k in [31, 63, 127, 255, 511, 1023, 2047, 4095, 5000]:
            kernels.coverage_counts(pm, ps, 1.0, torch.linspace(-1, 1, k, device=dev, dtype=F64))
    _sync()
    return "coverage kernel: 9 variants"


def pipeline_section(out, deadline: float, dry_run: bool):
    """``bench_train_gpu``: images per second of a converted resnet18 against the plain
    one through timm's ImageFolder pipeline, bf16, channels_last, 100 timed steps; run only when
    at least 90 s of the budget are left. Returns ok (None: skipped)."""
    if time.monotonic() + 90 > deadline:
        out("== training through timm's ImageFolder pipeline: skipped, the time budget is spent", "")
        return None
    from benchmarks import bench_train_gpu
    out("== training through timm's ImageFolder pipeline (bench_train_gpu)")
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # main() prints its text too: once is enough
            text = bench_train_gpu.main(["--quick"] if dry_run else ["--steps", "100"])
        out(*text.splitlines())
        return True
    except Exception:
        out("FAILED", *traceback.format_exc().rstrip().splitlines())
        return False
    finally:
        out(f"(took {time.perf_counter() - t0:.0f} s)", "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip benchmarks that would end later")
    ap.add_argument("--quick", action="store_true", help="the suite's quick sizes (a smoke test)")
    ap.add_argument("--dry-run", action="store_true",
                    help="test this script without a GPU: TRITON_INTERPRET=1 python -m benchmarks.gpu_suite --dry-run")
    args = ap.parse_args(argv)
    global DEV, SCALE
    start = time.monotonic()
    out_dir = Path(os.environ.get("OUT") or "gpu_results")
    out = suite.Output(str(out_dir / "gpu_results.txt"))
    out(f"pwfn_viz GPU suite, {time.strftime('%Y-%m-%d %H:%M:%S')}, host {platform.node()}, "
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    if args.dry_run:
        DEV, SCALE = torch.device("cpu"), 0.002
        out("DRY RUN on CPU (Triton interpreter, small sizes, CPU quick suite): not a measurement")
    elif not torch.cuda.is_available():
        out("no CUDA device visible: nothing to run")
        return 2
    else:
        props = torch.cuda.get_device_properties(0)
        out(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, {props.multi_processor_count} SMs")
    try:
        import timm
        import triton
        out(f"triton {triton.__version__}, timm {timm.__version__}")
    except Exception:
        out("import failed:", *traceback.format_exc().splitlines())
    out("", "== kernel self-checks (Triton vs torch path on the same CUDA tensors)")
    ok = [_check(out, name, fn) for name, fn in [("coverage counts and fit masks", check_coverage_and_fit),
                                                 ("ten-round schedule, both paths", check_schedule_bitwise),
                                                 ("host syncs per greedy step", check_host_syncs),
                                                 ("fused sampling", check_sampling),
                                                 ("fused loss terms, scaled loss", check_loss_terms),
                                                 ("k-means kernels", check_kmeans),
                                                 ("compile kernel variants", warm_kernels)]]
    out(f"self-checks: {sum(ok)}/{len(ok)} passed ({time.monotonic() - start:.0f} s so far)", "")
    if DEV.type == "cuda":
        torch.cuda.empty_cache()
    status = suite.run_suite(out, DEV.type, args.quick or args.dry_run, order=["whatif", "train", "clustering"],
                             deadline=start + args.budget_s, descending=True)
    status["train through timm's ImageFolder pipeline"] = pipeline_section(out, start + args.budget_s, args.dry_run)
    out(f"GPU suite finished in {time.monotonic() - start:.0f} s; sections: "
        + ", ".join(f"{k} {({True: 'ok', False: 'FAILED', None: 'skipped'})[v]}" for k, v in status.items()))
    return 0 if all(ok) and all(v is not False for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
