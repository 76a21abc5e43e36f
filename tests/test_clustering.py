"""The clustering round: the fast ``cluster_round`` against the readable one in the package
(``pwfn_viz.core.clustering_readable``), and both against the brute-force twin in
tests/clustering_reference.py, which shares no code with the package.

On the CPU ``cluster_round`` runs its numpy path (``pwfn_viz.core.clustering_cpu``); the torch
path it replaced there is the one devices still take. Wherever the fast round is checked against
the readable one it is also checked against the torch path, run on the CPU: bit for bit, the
statistics and every joined sigma included.

Fast and readable: the fixed mask, the assignment, the centres, the snapped mu and the step
table's round / pass_index / step / P / delta / centre / n_fit / n_taken columns bitwise; sigma
bitwise for the joins that do not average (keep, divide). The std_mu join's sigma and the step
statistics sum the taken weights in another order: those agree to float64 rounding. Against the
brute force: the fixed mask, each weight's centre value, the snapped mu and the step table's exact
columns bitwise, sigma and the statistics to float64 rounding.

Hypothesis runs a fixed, modest number of derandomised examples; set
``PWFN_HYPOTHESIS_EXAMPLES=2000`` to explore with fresh random examples instead.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from clustering_reference import RefConfig, brute_force_cluster, ref_target_count, reference_candidates
from pwfn_viz import kernels
from pwfn_viz.core import clustering, clustering_cpu
from pwfn_viz.core.clustering import ClusterConfig, candidate_centres, cluster_round, mu_order, target_count
from pwfn_viz.core.clustering_readable import SIGMA_JOINS, readable_cluster_round

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = [0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0]
BUILT_IN_JOINS = ["std_mu", "keep", "divide"]   # the joins the brute force knows
STEP_COLUMNS = ["round", "pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken",
                "mu_mean", "mu_std", "sigma_mean", "sigma_std"]
EXACT_STEP_COLUMNS = ["round", "pass_index", "P", "delta", "centre", "n_fit", "n_taken"]
STAT_STEP_COLUMNS = ["mu_mean", "mu_std", "sigma_mean", "sigma_std"]

_EXPLORE = int(os.environ.get("PWFN_HYPOTHESIS_EXAMPLES", "0"))


def hyp_settings(examples: int):
    return settings(max_examples=_EXPLORE or examples, deadline=None, derandomize=not _EXPLORE,
                    database=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- comparison helpers

def centre_values(res) -> np.ndarray:
    """Per weight: the value of its centre (NaN where unassigned)."""
    centres = torch.as_tensor(res.centres, dtype=torch.float64).cpu().numpy()
    assign = res.assignment.cpu().numpy()
    out = np.full(assign.shape, np.nan)
    out[assign >= 0] = centres[assign[assign >= 0]]
    return out


def step_table(res) -> pd.DataFrame:
    return res.steps if isinstance(res.steps, pd.DataFrame) else pd.DataFrame(res.steps)


def _where(mu, sigma, bad: np.ndarray) -> str:
    i = int(np.flatnonzero(bad)[0])
    return (f"{int(bad.sum())} weights differ; first at index {i}: "
            f"mu={mu[i].item()!r}, sigma={sigma[i].item()!r}")


def assert_same_round(got, want, mu, sigma, label=""):
    """``got`` (project or reference) equals ``want`` (the brute-force reference)."""
    ctx = f"[{label}] " if label else ""
    fixed_got = got.fixed_mask.cpu().numpy().astype(bool)
    fixed_want = want.fixed_mask.cpu().numpy().astype(bool)
    assert fixed_got.shape == fixed_want.shape, f"{ctx}fixed_mask shape"
    bad = fixed_got != fixed_want
    assert not bad.any(), f"{ctx}fixed_mask: {_where(mu, sigma, bad)}"

    c_got, c_want = centre_values(got), centre_values(want)
    bad = ~((c_got == c_want) | (np.isnan(c_got) & np.isnan(c_want)))
    assert not bad.any(), (f"{ctx}centre per weight: {_where(mu, sigma, bad)}; "
                           f"expected {c_want[bad][:5]}, got {c_got[bad][:5]}")

    assert got.mu.dtype == mu.dtype and got.mu.shape == mu.shape, f"{ctx}mu dtype/shape"
    assert got.sigma.dtype == sigma.dtype and got.sigma.shape == sigma.shape, f"{ctx}sigma dtype/shape"
    mu_got, mu_want = got.mu.cpu(), want.mu.cpu()
    bad = ~(mu_got == mu_want).numpy()
    assert not bad.any(), (f"{ctx}new mu not bitwise equal: {_where(mu, sigma, bad)}; "
                           f"expected {mu_want.numpy()[bad][:5]}, got {mu_got.numpy()[bad][:5]}")

    rtol = 1e-12 if sigma.dtype == torch.float64 else 4 * torch.finfo(sigma.dtype).eps
    atol = 1e-13 * float(mu.double().abs().max())
    s_got, s_want = got.sigma.cpu().double().numpy(), want.sigma.cpu().double().numpy()
    bad = ~np.isclose(s_got, s_want, rtol=rtol, atol=atol)
    assert not bad.any(), (f"{ctx}new sigma: {_where(mu, sigma, bad)}; "
                           f"expected {s_want[bad][:5]}, got {s_got[bad][:5]}")

    t_got, t_want = step_table(got), step_table(want)
    assert len(t_got) == len(t_want), (
        f"{ctx}{len(t_got)} steps, expected {len(t_want)}:\n"
        f"got\n{t_got[EXACT_STEP_COLUMNS].head(12)}\nexpected\n{t_want[EXACT_STEP_COLUMNS].head(12)}")
    for col in EXACT_STEP_COLUMNS:
        a, b = t_got[col].to_numpy(), t_want[col].to_numpy()
        bad = a != b
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise AssertionError(f"{ctx}steps[{col!r}] differs first at step {k}: expected {b[k]!r}, "
                                 f"got {a[k]!r}\nexpected row {t_want.iloc[k].to_dict()}\n"
                                 f"got row {t_got.iloc[k].to_dict()}")
    scale = max(1.0, float(mu.double().abs().max()), float(sigma.double().abs().max()))
    for col in STAT_STEP_COLUMNS:
        a, b = t_got[col].to_numpy(float), t_want[col].to_numpy(float)
        assert np.allclose(a, b, rtol=1e-9, atol=1e-13 * scale), f"{ctx}steps[{col!r}] differs"


def invariants(res, mu, sigma, fraction):
    """What any correct round satisfies, whatever the centres chosen."""
    n = mu.numel()
    target = ref_target_count(fraction, n)
    fixed = res.fixed_mask.cpu()
    assert fixed.dtype == torch.bool and int(fixed.sum()) == target
    assert res.assignment.dtype == torch.int64
    assert torch.equal(res.assignment.cpu() >= 0, fixed)
    table = step_table(res)
    assert list(table.columns) == STEP_COLUMNS
    assert int(table["n_taken"].sum()) == target
    # `centres` holds one winner per greedy step, in the order chosen.
    assert isinstance(res.centres, torch.Tensor) and res.centres.dtype == torch.float64
    assert res.centres.cpu().tolist() == table["centre"].tolist()
    assert (table["n_taken"] <= table["n_fit"]).all() and (table["n_taken"] >= 1).all()
    # Unassigned weights keep mu and sigma exactly; assigned ones sit on their centre.
    assert torch.equal(res.mu.cpu()[~fixed], mu.cpu()[~fixed])
    assert torch.equal(res.sigma.cpu()[~fixed], sigma.cpu()[~fixed])
    want = torch.from_numpy(centre_values(res)).to(mu.dtype)
    assert torch.equal(res.mu.cpu()[fixed], want[fixed])


def assert_fast_equals_readable(fast, readable, sigma_join: str):
    """The fast round and the readable one: bitwise equal where the fast code is exact."""
    for name in ("mu", "fixed_mask", "assignment", "centres"):
        a, b = getattr(fast, name), getattr(readable, name)
        assert a.dtype == b.dtype and torch.equal(a, b), f"{name} differs: fast {a}, readable {b}"
    if sigma_join != "std_mu":
        assert torch.equal(fast.sigma, readable.sigma), "sigma differs"
    exact = ["round", "pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken"]
    assert list(fast.steps.columns) == list(readable.steps.columns) == STEP_COLUMNS
    assert fast.steps[exact].equals(readable.steps[exact]), (
        f"step tables differ:\nfast\n{fast.steps[exact].head(12)}\nreadable\n{readable.steps[exact].head(12)}")


def torch_path_round(mu, sigma, fraction, config: ClusterConfig | None = None, round_index=0, order=None):
    """The round through the torch path (what CUDA tensors take; on the CPU, the implementation
    the numpy path replaced, unchanged), on CPU tensors."""
    with kernels.use_backend("torch"):
        return clustering._device_round(mu.detach(), sigma.detach(), target_count(fraction, mu.numel()),
                                        config or ClusterConfig(), round_index, order)


def _bits(values) -> np.ndarray:
    """A float array's bit patterns (so that -0.0 and 0.0 differ), other arrays as they are."""
    values = np.ascontiguousarray(values)
    return values.view(f"u{values.itemsize}") if values.dtype.kind == "f" else values


def assert_bitwise_equal(got, want, label=""):
    """Every field and every step-table column equal bit for bit, dtypes included."""
    for name in ("mu", "sigma", "fixed_mask", "assignment", "centres"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, f"[{label}] {name}: {a.dtype} vs {b.dtype}"
        if a.is_floating_point():   # compare bit patterns
            as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            a, b = a.view(as_int), b.view(as_int)
        same = torch.equal(a, b)
        assert same, f"[{label}] {name} differs in {int((a != b).sum())} entries (or in the sign of a zero)"
    assert list(got.steps.columns) == list(want.steps.columns) and len(got.steps) == len(want.steps), label
    for column in got.steps.columns:
        a, b = got.steps[column].to_numpy(), want.steps[column].to_numpy()
        assert a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b)), (
            f"[{label}] steps[{column!r}]: {a[:8]} vs {b[:8]}")


def run_all(mu, sigma, fraction, config: dict, round_index=0):
    """The fast round equals the readable one, and both equal the brute force; on the CPU the
    fast round also equals the torch path bit for bit."""
    want = brute_force_cluster(mu, sigma, fraction, RefConfig(**config), round_index=round_index)
    got = cluster_round(mu, sigma, fraction, config=ClusterConfig(**config), round_index=round_index)
    readable = readable_cluster_round(mu, sigma, fraction, config=ClusterConfig(**config), round_index=round_index)
    assert_bitwise_equal(got, torch_path_round(mu, sigma, fraction, ClusterConfig(**config), round_index),
                         "numpy path vs torch path")
    assert_fast_equals_readable(got, readable, config.get("sigma_join", "std_mu"))
    assert_same_round(got, readable, mu, sigma, "fast vs readable")
    assert_same_round(readable, want, mu, sigma, "readable vs brute force")
    invariants(got, mu, sigma, fraction)
    return got, want


# ---------------------------------------------------------------- synthetic trained-like weights

def trained_like(n: int, seed: int, dtype=torch.float32):
    """mu ~ N(0, 0.05) with exact zeros and exact (sums of) powers of two; sigma log-uniform
    in [1e-4, 0.05] with a few entries at the 2^-30 floor of the layers."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 0.05, n)
    kind = rng.random(n)
    mu[kind < 0.05] = 0.0
    pot = (kind >= 0.05) & (kind < 0.12)
    mu[pot] = rng.choice([-1, 1], pot.sum()) * 2.0 ** -rng.integers(2, 9, pot.sum())
    sums = (kind >= 0.12) & (kind < 0.15)
    mu[sums] = rng.choice([-0.75, 0.375, -0.09375, 0.0234375, 0.01171875], sums.sum())
    sigma = np.exp(rng.uniform(math.log(1e-4), math.log(0.05), n))
    sigma[rng.random(n) < 0.01] = 2.0 ** -30
    return torch.tensor(mu, dtype=dtype), torch.tensor(sigma, dtype=dtype)


@pytest.mark.parametrize("sigma_join", BUILT_IN_JOINS)
@pytest.mark.parametrize("fraction", SCHEDULE)
def test_trained_like_weights_match_references(fraction, sigma_join):
    mu, sigma = trained_like(1500, seed=int(fraction * 1000))
    run_all(mu, sigma, fraction, {"sigma_join": sigma_join})


def test_full_schedule_chained_like_the_pipeline():
    """Each round starts from the previous round's output (sigma 0 for singleton groups etc.)."""
    mu, sigma = trained_like(1200, seed=7)
    for r, fraction in enumerate(SCHEDULE):
        got, _ = run_all(mu, sigma, fraction, {}, round_index=r)
        assert (step_table(got)["round"] == r).all()
        mu, sigma = got.mu, got.sigma
    assert len(torch.unique(mu)) <= 200


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_match_references(dtype):
    """mu / sigma keep their dtype; centres and joined sigmas are cast to it."""
    mu, sigma = trained_like(600, seed=3, dtype=dtype)
    for fraction in (0.6, 1.0):
        run_all(mu, sigma, fraction, {})


@pytest.mark.parametrize("config", [{}, {"zero_fix": False}, {"max_powers": 2, "delta": 0.5},
                                    {"b": 4, "sigma_join": "divide", "sigma_divisor": 4.0},
                                    {"delta_growth": 1.5, "delta": 0.25}, {"delta_growth": 3.0, "zero_fix": False}])
def test_other_configs_match_references(config):
    mu, sigma = trained_like(400, seed=11, dtype=torch.float64)
    for fraction in (0.2, 0.9, 1.0):
        run_all(mu, sigma, fraction, config)


def test_config_reads_the_former_max_order_key():
    """Run records written before max_powers was named so hold "max_order"; they still load."""
    assert ClusterConfig(max_order=2).max_powers == 2
    assert ClusterConfig(**{"b": 5, "max_order": 3}) == ClusterConfig(b=5, max_powers=3)
    assert ClusterConfig(max_order=2, max_powers=2).max_powers == 2
    assert "max_order" not in dataclasses.asdict(ClusterConfig(max_order=2))
    with pytest.raises(ValueError, match="max_order=2 and max_powers=3 disagree"):
        ClusterConfig(max_order=2, max_powers=3)
    with pytest.raises(ValueError, match="max_powers=5 must be between 1 and 4"):
        ClusterConfig(max_order=5)


def test_sigma_joins_are_a_registry_both_rounds_use():
    """An unknown join lists the registered ones; a join registered by the user runs in the fast
    round and the readable one alike."""
    assert list(SIGMA_JOINS) == sorted(BUILT_IN_JOINS) and "keep" in SIGMA_JOINS
    with pytest.raises(ValueError, match="unknown sigma join 'kepp'.*available: divide, keep, std_mu"):
        ClusterConfig(sigma_join="kepp")

    @SIGMA_JOINS.register("halve")
    def halve(taken_sigma, std_mu, config):
        return taken_sigma / 2

    try:
        mu, sigma = trained_like(500, seed=5)
        config = ClusterConfig(sigma_join="halve")
        fast = cluster_round(mu, sigma, 0.9, config=config)
        readable = readable_cluster_round(mu, sigma, 0.9, config=config)
        assert_fast_equals_readable(fast, readable, "halve")
        assert_bitwise_equal(fast, torch_path_round(mu, sigma, 0.9, config), "halve: numpy path vs torch path")
        fixed = fast.fixed_mask
        assert torch.equal(fast.sigma[fixed], sigma[fixed] / 2) and torch.equal(fast.sigma[~fixed], sigma[~fixed])
    finally:
        SIGMA_JOINS.unregister("halve")


# ---------------------------------------------------------------- hand-worked examples

def _implementations():
    return {
        "project": lambda mu, sigma, f, **cfg: cluster_round(mu, sigma, f, config=ClusterConfig(**cfg)),
        "readable": lambda mu, sigma, f, **cfg: readable_cluster_round(mu, sigma, f, config=ClusterConfig(**cfg)),
        "brute": lambda mu, sigma, f, **cfg: brute_force_cluster(mu, sigma, f, RefConfig(**cfg)),
    }


@pytest.mark.parametrize("impl", ["project", "readable", "brute"])
def test_hand_example_one_pass(impl):
    # M = 0.52 -> m = ceil(log2 0.52) = 0, P=1 candidates 0, +-2^-7 .. +-2^-1 (15 of them).
    # Bands (delta 1): w0 [0.49, 0.51], w1 [0.47, 0.57], w2 [0, 0.002] (and |0.001| < 2^-7:
    # zero band), w3 [-0.28, -0.24].  Counts: 0.5 -> 2 (w0, w1), 0 -> 1, -0.25 -> 1.
    # Step 0: 0.5 takes w0 (distance 0) and w1 (0.02/0.05 = 0.4); sigma := std(0.5, 0.52) = 0.01.
    # Step 1: 0 and -0.25 tie at 1; 0 comes first in (|c|, c) order: takes w2, sigma 0.
    # Step 2: -0.25 takes w3, sigma 0.
    mu = torch.tensor([0.5, 0.52, 0.001, -0.26], dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.05, 0.001, 0.02], dtype=torch.float64)
    res = _implementations()[impl](mu, sigma, 1.0)
    assert res.mu.tolist() == [0.5, 0.5, 0.0, -0.25]
    assert res.sigma.tolist() == pytest.approx([0.01, 0.01, 0.0, 0.0], abs=1e-15)
    assert res.fixed_mask.tolist() == [True] * 4
    assert res.assignment.tolist() == [0, 0, 1, 2]
    table = step_table(res)
    assert table["centre"].tolist() == [0.5, 0.0, -0.25]
    assert table["n_fit"].tolist() == [2, 1, 1] and table["n_taken"].tolist() == [2, 1, 1]
    assert table["pass_index"].tolist() == [0, 0, 0] and table["P"].tolist() == [1, 1, 1]
    assert table["mu_mean"].tolist() == pytest.approx([0.51, 0.001, -0.26])
    assert table["mu_std"].tolist() == pytest.approx([0.01, 0.0, 0.0], abs=1e-15)
    assert table["sigma_mean"].tolist() == pytest.approx([0.03, 0.001, 0.02])
    assert table["sigma_std"].tolist() == pytest.approx([0.02, 0.0, 0.0], abs=1e-15)


@pytest.mark.parametrize("impl", ["project", "readable", "brute"])
def test_hand_example_growth_and_repeated_centre(impl):
    # M = 0.3 -> m = -1, S = {0, 2^-7 .. 2^-2}.
    # Pass 0 (P=1, delta=1): bands [0.29,0.31], [-0.31,-0.29], [0.28,0.30] hold no power of two.
    # Grow -> pass 1 (P=2, delta=1): two-term sums near 0.3 are 0.28125 and 0.3125 (> M = 0.3,
    #   dropped). 0.28125 fits w2 only -> step 0.  Nothing else fits.
    # Grow -> pass 2 (P=2, delta=2): bands [0.28,0.32] and [-0.32,-0.28]; -0.28125 and 0.28125
    #   both fit one weight; -0.28125 comes first in (|c|, c) order -> step 1, then 0.28125 wins
    #   again (a new pass) -> step 2.  So the centre 0.28125 appears twice in `centres`.
    mu = torch.tensor([0.3, -0.3, 0.29], dtype=torch.float64)
    sigma = torch.full((3,), 0.01, dtype=torch.float64)
    res = _implementations()[impl](mu, sigma, 1.0)
    assert res.mu.tolist() == [0.28125, -0.28125, 0.28125]
    assert res.sigma.tolist() == [0.0, 0.0, 0.0]
    assert centre_values(res).tolist() == [0.28125, -0.28125, 0.28125]
    assert res.assignment.tolist() == [2, 1, 0]
    table = step_table(res)
    assert table["centre"].tolist() == [0.28125, -0.28125, 0.28125]
    assert table["pass_index"].tolist() == [1, 2, 2]
    assert table["P"].tolist() == [2, 2, 2] and table["delta"].tolist() == [1.0, 2.0, 2.0]


@pytest.mark.parametrize("impl", ["project", "readable", "brute"])
def test_hand_example_cap_and_tie_breaks(impl):
    # fraction 0.5 of 4 -> target 2. sigma = 2^-6 everywhere so distances are exact.
    # 0.25 fits w0, w1, w3 (all at distance 2^-8 / 2^-6 = 0.25); -0.25 fits w2 only.
    # Cap 2: equal distances -> smaller |mu| first: w1 (0.25 - 2^-8), then w0 before w3 by index.
    # sigma := std(0.25 + 2^-8, 0.25 - 2^-8) = 2^-8 exactly.
    e = 2.0 ** -8
    mu = torch.tensor([0.25 + e, 0.25 - e, -0.25, 0.25 + e], dtype=torch.float64)
    sigma = torch.full((4,), 2.0 ** -6, dtype=torch.float64)
    res = _implementations()[impl](mu, sigma, 0.5)
    assert res.fixed_mask.tolist() == [True, True, False, False]
    assert res.mu.tolist() == [0.25, 0.25, -0.25, 0.25 + e]
    assert res.sigma.tolist() == [e, e, 2.0 ** -6, 2.0 ** -6]
    table = step_table(res)
    assert table["n_fit"].tolist() == [3] and table["n_taken"].tolist() == [2]


@pytest.mark.parametrize("impl", ["project", "readable", "brute"])
@pytest.mark.parametrize("zero_fix", [True, False])
def test_hand_example_zero_fix_and_growth_schedule(impl, zero_fix):
    # mu = 0.001 < 2^-7, sigma at the 2^-20 floor. M < 2^-7 -> the only candidate is 0.
    # zero_fix: fits 0 at once (pass 0, P=1, delta=1).
    # No zero_fix: needs delta * 2^-20 >= 0.001, i.e. delta >= 1048.6 -> 2048 = 2^11.
    # Growth: pass 1 P2, 2 d2, 3 P3, 4 d4, 5 P4, 6 d8, then delta doubles every pass:
    # 7 d16, 8 d32, ..., 14 d2048.
    mu = torch.tensor([0.001], dtype=torch.float64)
    sigma = torch.tensor([1e-9], dtype=torch.float64)
    res = _implementations()[impl](mu, sigma, 1.0, zero_fix=zero_fix)
    table = step_table(res)
    assert res.mu.tolist() == [0.0]
    expected = (0, 1, 1.0) if zero_fix else (14, 4, 2048.0)
    assert (int(table["pass_index"][0]), int(table["P"][0]), float(table["delta"][0])) == expected


# ---------------------------------------------------------------- candidates and target counts

NEAR_POWERS = [1.0, math.nextafter(1.0, 2.0), math.nextafter(1.0, 0.0), 0.75, 0.5, 0.3,
               2.0 ** -7, math.nextafter(2.0 ** -7, 0.0), 1.5 * 2.0 ** -7, 3.0, 1024.0,
               1024.0 * (1 + 2.0 ** -52), math.nextafter(1024.0, 0.0), 1e3, 1e-12, 0.0]


def test_candidate_counts_by_hand():
    # P=1, M=1: S = {0, 2^-7..2^-1}: 0 and 7 powers mirrored -> 15.
    # P=2, M=1: 7 singles, 2^0 = 2^-1 + 2^-1, 21 sums of two distinct powers -> 29 positive -> 59.
    for impl in (candidate_centres, reference_candidates):
        assert len(impl(1, 1.0, 7)) == 15
        assert len(impl(2, 1.0, 7)) == 59
        assert len(impl(1, 2.0 ** -7, 7)) == 1          # m = -7: S = {0}
        assert len(impl(1, 1e-12, 7)) == 1
        assert [float(c) for c in impl(1, 1.0, 7)][:5] == [0.0, -2 ** -7, 2 ** -7, -2 ** -6, 2 ** -6]
    assert candidate_centres(1, 1.0).dtype == torch.float64


def with_examples(**grid):
    """@example(...) for every combination of the ``grid`` values (edge cases a property must
    always check, whatever hypothesis draws)."""
    def decorate(test):
        for values in itertools.product(*grid.values()):
            test = example(**dict(zip(grid, values)))(test)
        return test
    return decorate


@given(n_powers=st.integers(1, 4), b=st.integers(1, 10),
       max_abs=st.floats(1e-6, 3e3, allow_nan=False) | st.sampled_from(NEAR_POWERS))
@with_examples(n_powers=[1, 2, 3, 4], max_abs=NEAR_POWERS, b=[7, 3])
@hyp_settings(60)
def test_candidates_property(n_powers, max_abs, b):
    got = [float(c) for c in candidate_centres(n_powers, max_abs, b)]
    want = reference_candidates(n_powers, max_abs, b)
    assert got == want, (f"candidate_centres({n_powers}, {max_abs!r}, {b}): "
                         f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}")


def test_target_count():
    assert target_count(0.7, 10) == 7 and ref_target_count(0.7, 10) == 7
    assert target_count(0.1 + 0.2, 10) == 3
    assert target_count(0.975, 40) == 39 and target_count(0.99, 100) == 99
    assert target_count(0.2, 1) == 1 and target_count(1.0, 13) == 13
    for n in (1, 7, 10, 40, 1000, 11_689_512):
        for f in SCHEDULE:
            assert target_count(f, n) == ref_target_count(f, n) == min(n, math.ceil(f * n - 1e-9))


# ---------------------------------------------------------------- invalid inputs

@pytest.mark.parametrize("mu, sigma, fraction", [
    (torch.tensor([]), torch.tensor([]), 0.5),
    (torch.tensor([0.1, float("nan")]), torch.tensor([0.1, 0.1]), 0.5),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.1, float("inf")]), 0.5),
    (torch.tensor([0.1, float("-inf")]), torch.tensor([0.1, 0.1]), 0.5),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.1, 0.1]), 0.5),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.1]), 0.0),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.1]), -0.2),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.1]), 1.5),
    (torch.tensor([0.1, 0.2]), torch.tensor([0.1, 0.1]), float("nan")),
])
def test_invalid_inputs_raise(mu, sigma, fraction):
    with pytest.raises(ValueError, match=r"\w"):
        cluster_round(mu, sigma, fraction)
    with pytest.raises(ValueError, match=r"\w"):
        readable_cluster_round(mu, sigma, fraction)
    with pytest.raises(ValueError):
        brute_force_cluster(mu, sigma, fraction)


# ---------------------------------------------------------------- hypothesis: adversarial inputs

_CENTRES = [0.0] + [s * 2.0 ** -k for k in range(0, 8) for s in (1, -1)] + [0.75, -0.375, 0.28125]
_HALFWAY = [(a + b) / 2 for a, b in zip(_CENTRES[1::2], _CENTRES[3::2])] + [0.75 * 2.0 ** -7, 2.0 ** -8]
_TIE_VALUES = _CENTRES + _HALFWAY + [-x for x in _HALFWAY] + [1e-12, -1e-12, 2.0 ** -7 - 2.0 ** -30]
_POW2_SIGMAS = [2.0 ** -k for k in range(0, 31, 3)] + [0.0, 1e-12]


def _configs():
    return st.fixed_dictionaries({
        "zero_fix": st.booleans(),
        "max_powers": st.integers(1, 4),
        "delta": st.sampled_from([1.0, 0.5, 2.0, 0.75]),
        "b": st.sampled_from([7, 7, 4, 10]),
        "sigma_join": st.sampled_from(BUILT_IN_JOINS),
        "delta_growth": st.sampled_from([2.0, 2.0, 1.5, 3.0]),
    })


_FRACTIONS = st.sampled_from(SCHEDULE) | st.floats(0.01, 1.0)


@st.composite
def _on_boundary(draw):
    """(mu, sigma) with mu = c + j*u and sigma = j*u / d: c sits exactly on the band edge
    mathematically, but decimal u makes `mu - delta*sigma <= c` and `|mu - c| / sigma <= delta`
    round differently. The spec's test is the former."""
    c = draw(st.sampled_from(_CENTRES))
    j = draw(st.integers(1, 30))
    u = draw(st.sampled_from([0.01, 0.001, 0.1, 1 / 3, 0.003]))
    d = draw(st.sampled_from([1.0, 0.5, 2.0, 0.75, 4.0]))
    sign = draw(st.sampled_from([1, -1]))
    return c + sign * j * u, j * u / d


@st.composite
def tie_prone(draw):
    n = draw(st.integers(1, 30))
    pairs = draw(st.lists(
        st.tuples(st.sampled_from(_TIE_VALUES) | st.floats(-1.0, 1.0, width=32),
                  st.sampled_from(_POW2_SIGMAS) | st.floats(0.0, 0.1)) | _on_boundary(),
        min_size=n, max_size=n))
    return [p[0] for p in pairs], [p[1] for p in pairs]


@given(data=tie_prone(), fraction=_FRACTIONS, config=_configs(),
       dtype=st.sampled_from([torch.float64, torch.float32]))
@hyp_settings(150)
def test_property_ties_and_exact_boundaries(data, fraction, config, dtype):
    mu, sigma = (torch.tensor(x, dtype=dtype) for x in data)
    run_all(mu, sigma, fraction, config)


@st.composite
def extreme(draw):
    regime = draw(st.sampled_from(["zeros", "one", "huge", "tiny", "negative", "tiny_sigma"]))
    n = 1 if regime == "one" else draw(st.integers(1, 25))
    if regime == "zeros":
        mu = [0.0] * n
    elif regime == "huge":
        mu = draw(st.lists(st.floats(-1e6, 1e6) | st.sampled_from([1e6, -1e6, 2.0 ** 19]),
                           min_size=n, max_size=n))
    elif regime == "tiny":
        mu = draw(st.lists(st.floats(-1e-12, 1e-12) | st.just(1e-12), min_size=n, max_size=n))
    elif regime == "negative":
        mu = draw(st.lists(st.floats(-2.0, -1e-6) | st.sampled_from([-0.5, -0.375, -2 ** -7]),
                           min_size=n, max_size=n))
    else:
        mu = draw(st.lists(st.floats(-1.0, 1.0) | st.sampled_from(_TIE_VALUES), min_size=n, max_size=n))
    if regime == "huge":
        sigma_values = st.floats(1e-3, 1e4) | st.sampled_from([2.0 ** 10, 1e-12])
    elif regime == "tiny_sigma":
        sigma_values = st.sampled_from([1e-12, 0.0, 2.0 ** -21, 2.0 ** -20])
    else:
        sigma_values = st.sampled_from(_POW2_SIGMAS) | st.floats(0.0, 0.1)
    sigma = draw(st.lists(sigma_values, min_size=n, max_size=n))
    return mu, sigma


@given(data=extreme(), fraction=_FRACTIONS, config=_configs())
@hyp_settings(80)
def test_property_extreme_values(data, fraction, config):
    mu, sigma = (torch.tensor(x, dtype=torch.float64) for x in data)
    run_all(mu, sigma, fraction, config)


# ---------------------------------------------------------------- memory: nothing K x N

_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pwfn_viz.core.clustering import ClusterConfig, cluster_round

    def rss_kib(field="VmRSS"):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field))

    n = int(sys.argv[1])
    g = torch.Generator().manual_seed(0)
    cluster_round(torch.randn(500, generator=g) * 0.05, torch.full((500,), 0.01), 1.0)  # warm-up
    mu = torch.randn(n, generator=g).mul_(0.05)
    sigma = torch.empty(n).uniform_(-9.2, -3.0, generator=g).exp_()
    before = rss_kib()
    with open("/proc/self/clear_refs", "w") as f:   # reset the peak (VmHWM): ru_maxrss would
        f.write("5")                                # include the parent's size from before exec
    res = cluster_round(mu, sigma, 1.0, config=ClusterConfig(max_powers=4))
    peak = rss_kib("VmHWM")
    print(int(res.fixed_mask.sum()), int(res.steps["P"].max()), (peak - before) * 1024)
""")


@pytest.mark.slow
def test_memory_is_linear_not_k_by_n():
    n = 2_000_000
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="65536")   # RSS follows live memory (see bench_clustering)
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(n)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    fixed, max_powers_used, growth = (int(x) for x in out.stdout.split())
    assert fixed == n and max_powers_used == 4  # the round reached the largest candidate set
    limit = 64 * n + 16 * 2 ** 20
    # A K x N bool matrix alone would be >= 100 * n bytes at P = 4 (K ~ 100-200 here).
    assert growth < limit, (f"peak RSS grew by {growth / 2**20:.0f} MiB ({growth / n:.0f} B/weight) "
                            f"for N={n}; limit {limit / 2**20:.0f} MiB (64 B/weight + 16 MiB)")


def test_reused_order_gives_the_same_round_and_a_stale_one_raises():
    """cluster_round(order=mu_order(mu)) (the WhatIf widget sorts once) equals the plain call; an
    order of another mu, of the wrong length or with repeated indices is refused."""
    from pwfn_viz.core.clustering import mu_order
    g = torch.Generator().manual_seed(11)
    mu = torch.randn(4000, generator=g) * 0.05
    mu[:300] = 0.25                                   # ties: the order among them must not matter
    sigma = torch.rand(4000, generator=g) * 0.01
    order = mu_order(mu)
    assert order.dtype == torch.int32 and torch.equal(mu[order], torch.sort(mu).values)
    for fraction, cfg in [(0.6, ClusterConfig()), (1.0, ClusterConfig(delta=0.5, b=9))]:
        want = cluster_round(mu, sigma, fraction, config=cfg)
        other_ties = torch.flip(torch.argsort(-mu, stable=True), [0])   # tied mu in reverse index order
        assert not torch.equal(other_ties.int(), order)
        for supplied in (order, order.long(), other_ties):
            got = cluster_round(mu, sigma, fraction, config=cfg, order=supplied)
            assert_bitwise_equal(got, torch_path_round(mu, sigma, fraction, cfg, order=supplied), "order supplied")
            for field in ("mu", "sigma", "fixed_mask", "assignment", "centres"):
                assert torch.equal(getattr(got, field), getattr(want, field)), field
            stats = ["mu_mean", "mu_std", "sigma_mean", "sigma_std"]
            assert got.steps.drop(columns=stats).equals(want.steps.drop(columns=stats))
            # the statistics sum the taken weights in sorted order: exact for the same order,
            # to rounding for another order of ties
            np.testing.assert_allclose(got.steps[stats], want.steps[stats], rtol=0 if supplied is not other_ties else 1e-12)
    other = mu_order(mu.flip(0))
    with pytest.raises(ValueError, match="does not sort mu"):
        cluster_round(mu, sigma, 0.5, order=other)
    repeated = order.clone()
    repeated[1] = repeated[0]                          # mu[order] may still be sorted (ties): not a permutation
    with pytest.raises(ValueError, match="does not sort mu"):
        cluster_round(mu, sigma, 0.5, order=repeated)
    with pytest.raises(ValueError, match="integer tensor of mu's shape"):
        cluster_round(mu, sigma, 0.5, order=order[:-1])
    with pytest.raises(ValueError, match="integer tensor of mu's shape"):
        cluster_round(mu, sigma, 0.5, order=order.float())


# ---------------------------------------------------------------- the CPU path: bitwise, sort, band runs, threads

def test_schedule_on_many_weights_equals_the_torch_path_bitwise():
    """The ten rounds on 60k trained-like weights, each fed the previous round's output (steps of
    thousands of weights, passes up to four powers of two), and capped rounds full of ties: the
    numpy path and the torch path agree bit for bit, statistics included."""
    mu, sigma = trained_like(60_000, seed=21)
    for r, fraction in enumerate(SCHEDULE):
        got = cluster_round(mu, sigma, fraction, round_index=r)
        assert_bitwise_equal(got, torch_path_round(mu, sigma, fraction, round_index=r), f"round {r}")
        mu, sigma = got.mu, got.sigma
    assert int(got.steps["P"].max()) == 4 and int(got.steps["n_taken"].max()) > 1000
    g = torch.Generator().manual_seed(4)
    tied = (torch.randint(-8, 9, (20_000,), generator=g) / 64).float()   # on and between centres
    tied_sigma = torch.randint(0, 4, (20_000,), generator=g).float() / 128   # band ends on centres; 0 floored
    for fraction, config in [(0.37, ClusterConfig()), (0.81, ClusterConfig(zero_fix=False, delta=2.0)),
                             (0.5, ClusterConfig(b=3, sigma_join="divide"))]:
        got = cluster_round(tied, tied_sigma, fraction, config=config)
        assert (got.steps["n_fit"] > got.steps["n_taken"]).iloc[-1]   # the cap bit
        assert_bitwise_equal(got, torch_path_round(tied, tied_sigma, fraction, config), f"ties {fraction}")


_SORT_VALUES = st.floats(width=32, allow_nan=False) | st.sampled_from(
    [0.0, -0.0, 1e-45, -1e-45, 2.0 ** -7, -(2.0 ** -7), 3.4e38, -3.4e38, float("inf"), float("-inf")])


@given(values=st.lists(_SORT_VALUES, min_size=1, max_size=300))
@hyp_settings(100)
def test_stable_order_is_torchs_stable_argsort(values):
    """The sort of int64 keys orders as a stable argsort: ties (-0.0 with 0.0 too) in index order."""
    for dtype in (np.float32, np.float64):
        x = np.array(values, dtype)
        want = torch.argsort(torch.from_numpy(x), stable=True).numpy()
        assert np.array_equal(clustering_cpu.stable_order(x), want), dtype
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        t = torch.tensor(values).clamp(-60000.0, 60000.0).to(dtype)   # finite in every dtype
        assert torch.equal(mu_order(t).long(), torch.argsort(t, stable=True)), dtype


@given(n_powers=st.integers(1, 4), b=st.sampled_from([0, 3, 7, 12]),
       max_abs=st.sampled_from([1e-3, 0.3, 1.0, 4.8, 1000.0]) | st.floats(1e-4, 50.0),
       delta=st.sampled_from([1.0, 0.5, 3.0, 2.0 ** 40, 1e300]), seed=st.integers(0, 2 ** 16),
       storage=st.sampled_from([np.float32, np.float64]))
@hyp_settings(120)
def test_band_runs_are_the_binary_searches(n_powers, b, max_abs, delta, seed, storage):
    """The lookup table on the 2^-b grid gives each band's run of candidates exactly as two
    binary searches of its float64 ends, and the coverage counts as the K x N test, for weights
    on, next to and between candidates, band ends exactly on candidates, zero and overflowing
    widths; so does the binary search the round keeps for candidate sets too wide for a table."""
    candidates = np.sort(candidate_centres(n_powers, max_abs, b).numpy())
    rng = np.random.default_rng(seed)
    n = 400
    near = rng.choice(candidates, n)
    step = 2.0 ** -(b + 1)
    mu = near + rng.choice([0.0, step, -step, 1e-9, -1e-9, 3 * step], n)
    mu[: n // 4] = rng.uniform(-2 * max_abs, 2 * max_abs, n // 4)
    sigma = np.abs(mu - rng.choice(candidates, n)) / delta       # an end on (or next to) a candidate
    sigma[rng.random(n) < 0.2] = 0.0
    sigma[rng.random(n) < 0.1] = 1e10
    mu, sigma = mu.astype(storage), sigma.astype(storage)
    with np.errstate(over="ignore"):   # widths overflowing to inf are part of the test
        lower = mu.astype(np.float64) - delta * sigma.astype(np.float64)
        upper = mu.astype(np.float64) + delta * sigma.astype(np.float64)
    want_first = np.searchsorted(candidates, lower, side="left")
    want_stop = np.searchsorted(candidates, upper, side="right")
    want_coverage = ((lower[:, None] <= candidates) & (candidates <= upper[:, None])).sum(0)
    for table_limit in (clustering_cpu.MAX_GRID_TABLE, 0):   # 0: the binary search
        limit, clustering_cpu.MAX_GRID_TABLE = clustering_cpu.MAX_GRID_TABLE, table_limit
        try:
            first, stop, coverage = clustering_cpu._band_runs(mu, sigma, delta, candidates, b)
        finally:
            clustering_cpu.MAX_GRID_TABLE = limit
        assert np.array_equal(first, want_first) and np.array_equal(stop, want_stop), table_limit
        assert np.array_equal(coverage, want_coverage), table_limit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_weights_on_large_centres_with_tiny_sigma_fit_their_window(dtype):
    """A weight sitting on a large centre (here 100 = 64 + 32 + 4, and 2^20 + 2^10) with its sigma
    at the floor fits only that centre, by less than the spacing of floats there: the window of
    sorted mu searched for the centre's weights must still hold it (rounded to nearest, its ends
    fell on the centre and the window came out empty)."""
    mu = torch.tensor([100.0, -100.0, 0.3, 1.0, 96.0], dtype=dtype)
    sigma = torch.tensor([0.0, 1e-12, 0.01, 0.0, 0.0], dtype=dtype)
    if dtype != torch.float16:
        mu = torch.cat([mu, torch.tensor([2.0 ** 20 + 2.0 ** 10], dtype=dtype)])
        sigma = torch.cat([sigma, torch.zeros(1, dtype=dtype)])
    for config in ({}, {"delta": 1e-3, "sigma_floor": 1e-12}, {"zero_fix": False, "max_powers": 3}):
        for fraction in (0.5, 1.0):
            run_all(mu, sigma, fraction, config)


def test_histogram_is_bincount():
    """The interleaved count equals np.bincount, below and above the size where it interleaves,
    for nearly sorted ranks and random ones."""
    rng = np.random.default_rng(3)
    for n in (0, 1, 4095, 4096, 4111, 70_001):
        for values in (np.sort(rng.integers(0, 600, n)).astype(np.int16), rng.integers(0, 600, n).astype(np.int32)):
            assert np.array_equal(clustering_cpu._histogram(values, 601), np.bincount(values, minlength=601)), n


def test_threads_default_to_one_for_the_call_and_are_restored():
    """cluster_round runs on ``threads`` torch threads (1 unless told otherwise; None: the
    caller's), seen here from inside a sigma join, and restores the caller's setting after,
    also when it raises."""
    seen = []

    @SIGMA_JOINS.register("record_threads")
    def record_threads(taken_sigma, std_mu, config):
        seen.append(torch.get_num_threads())
        return taken_sigma

    before = torch.get_num_threads()
    mu, sigma = trained_like(300, seed=1)
    config = ClusterConfig(sigma_join="record_threads")
    try:
        for outer, threads, inside in [(2, 1, 1), (2, None, 2), (1, 2, 2), (1, 1, 1)]:
            torch.set_num_threads(outer)
            seen.clear()
            cluster_round(mu, sigma, 0.5, config=config, **({} if threads == 1 else {"threads": threads}))
            assert seen and set(seen) == {inside}, (outer, threads, seen)
            assert torch.get_num_threads() == outer
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match="finite"):
            cluster_round(torch.tensor([float("nan")]), torch.tensor([0.1]), 1.0)
        assert torch.get_num_threads() == 2
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match="threads"):
                cluster_round(mu, sigma, 0.5, threads=bad)
        assert torch.get_num_threads() == 2
    finally:
        SIGMA_JOINS.unregister("record_threads")
        torch.set_num_threads(before)


def test_results_do_not_depend_on_the_callers_thread_count():
    """With the default one thread a round is the same, bit for bit, whatever the caller set;
    with two threads the decisions are the same and the statistics of steps larger than torch's
    parallel grain (32768 weights) equal to float64 rounding."""
    mu, sigma = trained_like(150_000, seed=9)
    before = torch.get_num_threads()
    try:
        by_caller = {}
        for outer in (1, 2):
            torch.set_num_threads(outer)
            by_caller[outer] = cluster_round(mu, sigma, 0.95)
        assert_bitwise_equal(by_caller[2], by_caller[1], "caller 2 threads vs 1")
        assert int(by_caller[1].steps["n_taken"].max()) > 32768
        two = cluster_round(mu, sigma, 0.95, threads=2)
    finally:
        torch.set_num_threads(before)
    one = by_caller[1]
    for name in ("mu", "fixed_mask", "assignment", "centres"):
        assert torch.equal(getattr(two, name), getattr(one, name)), name
    stats = ["mu_mean", "mu_std", "sigma_mean", "sigma_std"]
    assert two.steps.drop(columns=stats).equals(one.steps.drop(columns=stats))
    np.testing.assert_allclose(two.steps[stats], one.steps[stats], rtol=1e-12)
    torch.testing.assert_close(two.sigma, one.sigma, rtol=1e-6, atol=0)
