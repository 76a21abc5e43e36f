"""Tests for pwfn_viz.kmeans against scikit-learn, brute force and hand-worked examples."""

import doctest
import itertools
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

import pwfn_viz.baselines.kmeans as km
from pwfn_viz.baselines.kmeans import (init_centres, kmeans_1d, kmeans_quantize, list_inits, list_scopes,
                             optimal_kmeans_1d, register_init)


def weight_like(n=1500, seed=0):
    """Laplace bulk plus two side modes, like a trained layer's weights."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.laplace(0, 0.05, n), rng.normal(0.3, 0.02, n // 5),
                           rng.normal(-0.4, 0.1, n // 7)])


def sklearn_lloyd(x, start, *, max_iter=300, tol=0.0):
    model = KMeans(n_clusters=len(start), init=np.asarray(start).reshape(-1, 1), n_init=1,
                   algorithm="lloyd", tol=tol, max_iter=max_iter)
    return model.fit(np.asarray(x).reshape(-1, 1))


def assert_same_as_sklearn(res, x, **kwargs):
    sk = sklearn_lloyd(x, res.init_centres.numpy(), **kwargs)
    sk_centres = sk.cluster_centers_.ravel()
    np.testing.assert_allclose(res.centres.numpy(), np.sort(sk_centres), rtol=1e-9, atol=1e-12)
    assert res.inertia == pytest.approx(sk.inertia_, rel=1e-9, abs=1e-15)
    assert res.n_iter == sk.n_iter_
    # same quantised values element by element (labels index different orderings)
    np.testing.assert_allclose(res.centres.numpy()[res.labels.numpy()], sk_centres[sk.labels_],
                               rtol=1e-9, atol=1e-12)


def brute_force_optimum(x, k):
    """Smallest inertia over every assignment of the values to k labels (no contiguity assumed)."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.array(list(itertools.product(range(k), repeat=len(x))))
    total = np.zeros(len(labels))
    for c in range(k):
        mask = labels == c
        count = mask.sum(axis=1)
        mean = np.where(count > 0, (mask * x).sum(axis=1) / np.maximum(count, 1), 0.0)
        total += (mask * (x - mean[:, None]) ** 2).sum(axis=1)
    return total.min()


def naive_lloyd(x, centres, *, zero_fixed, max_iter=300):
    """O(N k) Lloyd with argmin assignment (ties to the lower of sorted centres)."""
    c, old = np.sort(np.asarray(centres, dtype=np.float64)), None
    for n_iter in range(1, max_iter + 1):
        labels = np.abs(x[:, None] - c[None, :]).argmin(axis=1)
        counts = np.bincount(labels, minlength=len(c))
        assert np.all(counts[c != 0] > 0), "twin has no empty-cluster rule; pick other data"
        new = np.where(counts > 0, np.bincount(labels, x, len(c)) / np.maximum(counts, 1), c)
        if zero_fixed:
            new[c == 0] = 0.0
        c = np.sort(new)
        if old is not None and np.array_equal(labels, old):
            break
        old = labels
    return c, n_iter


# ----------------------------------------------------------------------------- Lloyd vs sklearn

@pytest.mark.parametrize("init", list_inits())
@pytest.mark.parametrize("k", [1, 2, 7, 24])
def test_lloyd_matches_sklearn_for_every_init(init, k):
    x = weight_like()
    assert_same_as_sklearn(kmeans_1d(x, k, init=init, seed=5), x)


def test_empty_clusters_are_relocated_like_sklearn():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 0.01, 300), rng.normal(1, 0.01, 20), rng.normal(5, 0.5, 30)])
    k = 12
    res = kmeans_1d(x, k, init="linear")
    start = res.init_centres.numpy()
    first_counts = np.bincount(np.abs(x[:, None] - start).argmin(axis=1), minlength=k)
    assert np.any(first_counts == 0)  # the relocation path really runs
    assert_same_as_sklearn(res, x)


def test_duplicate_values_and_duplicate_initial_centres_match_sklearn():
    rng = np.random.default_rng(4)
    x = np.concatenate([np.zeros(600), rng.laplace(0, 0.1, 400)])  # a pruned layer
    res = kmeans_1d(x, 6, init="density")
    assert np.sum(res.init_centres.numpy() == 0) >= 2  # the quantiles repeat 0
    assert_same_as_sklearn(res, x)


@pytest.mark.parametrize("max_iter,tol", [(1, 0.0), (3, 0.0), (300, 1e-4)])
def test_stopping_rules_match_sklearn(max_iter, tol):
    x = weight_like(seed=1)
    res = kmeans_1d(x, 16, init="random", max_iter=max_iter, tol=tol)
    assert_same_as_sklearn(res, x, max_iter=max_iter, tol=tol)
    if tol == 0.0:
        assert res.n_iter == max_iter and not res.converged


def test_hand_worked_midpoint_tie_goes_to_lower_centre():
    # centres 0 and 2: the value 1 is equidistant and goes to 0 -> {0, 1}, {2, 3}
    res = kmeans_1d([3.0, 1.0, 0.0, 2.0], 2, init_centres=[2.0, 0.0], max_iter=1)
    assert res.init_centres.tolist() == [0.0, 2.0]
    assert res.centres.tolist() == [0.5, 2.5]
    assert res.labels.tolist() == [1, 0, 0, 1]
    assert res.inertia == 1.0


def test_boundaries_follow_exact_nearest_rule_near_rounded_midpoints():
    # float(0.2) lies above the exact midpoint of float(0.1) and float(0.3): nearer to 0.3
    assert kmeans_1d([0.1, 0.2, 0.3], 2, init_centres=[0.1, 0.3], max_iter=1).labels.tolist() \
        == [0, 1, 1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        c = np.sort(rng.normal(size=6)).round(rng.integers(1, 4))
        c[rng.integers(5)] = c[rng.integers(5)]  # sometimes a repeated centre
        c = np.sort(c)
        mids = c[:-1] / 2 + c[1:] / 2
        xs = np.sort(np.concatenate([mids, np.nextafter(mids, -np.inf), np.nextafter(mids, np.inf),
                                     c, rng.normal(size=20).round(2)]))
        expected = np.bincount(np.abs(xs[:, None] - c).argmin(axis=1), minlength=6).cumsum()[:-1]
        np.testing.assert_array_equal(km._boundaries(xs, c), expected)


def test_labels_keep_input_shape_and_pick_nearest_centre():
    x = torch.from_numpy(weight_like(seed=2)[:1200].reshape(30, 40)).float()
    res = kmeans_1d(x, 9)
    assert res.labels.shape == x.shape and res.labels.dtype == torch.int64
    values = x.double().numpy()
    nearest = np.abs(values[..., None] - res.centres.numpy()).argmin(axis=-1)
    np.testing.assert_array_equal(res.labels.numpy(), nearest)
    direct = np.sum((values - res.centres.numpy()[nearest]) ** 2)
    assert res.inertia == pytest.approx(direct, rel=1e-12)


# ----------------------------------------------------------------------------- exact optimum

grid_values = st.lists(st.integers(-40, 40).map(lambda i: i / 8), min_size=1, max_size=7)


@settings(max_examples=80, deadline=None)
@given(values=grid_values, k=st.integers(1, 4))
def test_dp_is_optimal_and_lloyd_never_beats_it(values, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # k above the distinct count is fine here
        best = optimal_kmeans_1d(values, k)
        lloyd = [kmeans_1d(values, k, init=init, seed=1).inertia for init in list_inits()]
    assert best.inertia == pytest.approx(brute_force_optimum(values, k), rel=1e-9, abs=1e-12)
    assert all(inertia >= best.inertia * (1 - 1e-9) - 1e-12 for inertia in lloyd)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1, 1), min_size=2, max_size=7), k=st.integers(2, 4))
def test_dp_is_optimal_on_arbitrary_floats_up_to_documented_rounding(values, k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        best = optimal_kmeans_1d(values, k)
    # the prefix-sum costs decide near-ties only up to rounding of order eps * scale^2
    slack = 1e-12 * len(values) * max(v * v for v in values)
    assert best.inertia <= brute_force_optimum(values, k) * (1 + 1e-9) + slack


def test_dp_hand_worked_and_labels():
    res = optimal_kmeans_1d(np.array([[30.0, 1.0, 11.0], [2.0, 10.0, 3.0]]), 3)
    assert res.centres.tolist() == [2.0, 10.5, 30.0]
    assert res.labels.tolist() == [[2, 0, 1], [0, 1, 0]]
    assert res.inertia == 2.5


def test_dp_beats_or_ties_lloyd_on_weight_like_data():
    x = weight_like(n=800, seed=6)
    best = optimal_kmeans_1d(x, 12)
    for init in list_inits():
        assert kmeans_1d(x, 12, init=init).inertia >= best.inertia * (1 - 1e-9)
    # the optimum is a Lloyd fixed point: one more Lloyd pass leaves it unchanged
    again = kmeans_1d(x, 12, init_centres=best.centres)
    np.testing.assert_allclose(again.centres.numpy(), best.centres.numpy(), rtol=1e-12)


def test_dp_refuses_large_problems(monkeypatch):
    monkeypatch.setattr(km.optimal, "OPTIMAL_MAX_CELLS", 100)
    with pytest.raises(ValueError, match="OPTIMAL_MAX_CELLS"):
        optimal_kmeans_1d(np.arange(60.0), 2)


# ----------------------------------------------------------------------------- inits, seeds, zero

@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_seeded_inits_are_reproducible_and_seed_dependent(init):
    x = weight_like(seed=7)
    a, b = kmeans_1d(x, 8, init=init, seed=11), kmeans_1d(x, 8, init=init, seed=11)
    assert torch.equal(a.centres, b.centres) and torch.equal(a.labels, b.labels)
    starts = {tuple(init_centres(x, 8, init=init, seed=s).tolist()) for s in range(6)}
    assert len(starts) > 1


def test_hand_worked_deterministic_inits():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert init_centres(x, 3, init="linear").tolist() == [0.0, 5.0, 10.0]
    assert init_centres(x, 1, init="linear").tolist() == [5.0]
    # quantiles at 1/6, 3/6, 5/6 of positions 0..10
    np.testing.assert_allclose(init_centres(x, 3, init="density").numpy(), [10 / 6, 5.0, 50 / 6])
    np.testing.assert_allclose(init_centres(x, 3, init="density").numpy(),
                               np.quantile(x, [1 / 6, 0.5, 5 / 6]))


@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_sampled_inits_pick_distinct_data_values(init):
    x = np.round(weight_like(seed=8), 2)  # many repeated values
    c = init_centres(x, 20, init=init, seed=3).numpy()
    assert len(np.unique(c)) == 20 and np.all(np.isin(c, x))


def test_kmeanspp_draws_proportional_to_squared_distance():
    rng = np.random.default_rng(0)
    d2 = np.zeros(16)  # blocks of 4, padded like the real sampler
    d2[:13] = rng.random(13) ** 2
    d2[[2, 7]] = 0.0  # values that are already centres
    block_sums = d2.reshape(4, 4).sum(axis=1)
    draws = np.bincount([km._draw_d2(d2, block_sums, 4, rng) for _ in range(20000)], minlength=16)
    assert draws[[2, 7]].sum() == 0 and draws[13:].sum() == 0
    np.testing.assert_allclose(draws / 20000, d2 / d2.sum(), atol=0.015)


@pytest.mark.parametrize("init", list_inits())
def test_keep_zero_pins_an_exact_zero_and_matches_naive_lloyd(init):
    x = weight_like(seed=9) + 0.02  # no value is exactly 0
    res = kmeans_1d(x, 5, init=init, keep_zero=True, seed=2)
    assert 0.0 in res.init_centres.tolist() and 0.0 in res.centres.tolist()
    expected, n_iter = naive_lloyd(x, res.init_centres.numpy(), zero_fixed=True)
    np.testing.assert_allclose(res.centres.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert res.n_iter == n_iter
    free = kmeans_1d(x, 5, init_centres=res.init_centres)
    assert 0.0 not in free.centres.tolist()  # without keep_zero the same start moves off 0


def test_register_init_is_used_and_names_are_unique():
    @register_init("test_outer")
    def _outer(xs, k, rng):
        return np.linspace(xs[0], xs[-1], k)[::-1]

    try:
        assert "test_outer" in list_inits()
        assert kmeans_1d([0.0, 1.0, 9.0, 10.0], 2, init="test_outer").centres.tolist() == [0.5, 9.5]
        with pytest.raises(ValueError, match="already registered"):
            register_init("linear")(_outer)
    finally:
        km._INITS.unregister("test_outer")


# ----------------------------------------------------------------------------- scopes

def model_weights():
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.1,
            "fc.weight": torch.randn(10, 20, generator=g, dtype=torch.float64) * 0.05,
            "fc.bias": torch.randn(10, generator=g).half()}


def test_global_scope_shares_one_codebook():
    w = model_weights()
    q, books, labels = kmeans_quantize(w, 4, scope="global", seed=1)
    all_values = np.concatenate([t.double().numpy().ravel() for t in w.values()])
    ref = kmeans_1d(all_values, 4, seed=1)
    assert all(books[n] is books["conv.weight"] for n in w)
    assert torch.equal(books["fc.weight"], ref.centres)
    for n, t in w.items():  # mixed dtypes round the shared codebook differently
        assert len(torch.unique(q[n])) <= 4 and int(labels[n].max()) < 4
        assert q[n].shape == t.shape and q[n].dtype == t.dtype
        assert torch.equal(q[n], ref.centres[labels[n]].to(t.dtype))


def test_layer_scope_has_one_codebook_per_tensor():
    w = model_weights()
    q, books, labels = kmeans_quantize(w, 3, scope="layer", init="density")
    for n, t in w.items():
        ref = kmeans_1d(t, 3, init="density")
        assert torch.equal(books[n], ref.centres) and torch.equal(labels[n], ref.labels)
        assert len(torch.unique(q[n])) <= 3 and q[n].dtype == t.dtype


def test_channel_scope_has_one_codebook_per_output_channel():
    w = model_weights()
    with pytest.warns(UserWarning, match="10 of 28 group"):  # each bias row holds one value
        q, books, labels = kmeans_quantize(w, 2, scope="channel")
    assert [len(books[n]) for n in w] == [8, 10, 10]
    for n, t in w.items():
        for r in range(t.shape[0]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the bias rows, as above
                ref = kmeans_1d(t[r], 2)
            assert len(torch.unique(q[n][r])) <= 2
            assert torch.equal(books[n][r], ref.centres)
            assert torch.equal(labels[n][r], ref.labels)
    assert torch.equal(q["fc.bias"], w["fc.bias"])


def test_optimal_algorithm_in_scopes():
    w = {"a": torch.tensor([0.0, 0.1, 0.2, 1.0, 1.1, 3.0], dtype=torch.float64)}
    q, books, _ = kmeans_quantize(w, 3, scope="layer", algorithm="optimal")
    assert books["a"].tolist() == pytest.approx([0.1, 1.05, 3.0])
    assert q["a"].tolist() == pytest.approx([0.1, 0.1, 0.1, 1.05, 1.05, 3.0])


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_bad_k_is_rejected(k):
    for fn in (lambda: kmeans_1d([1.0, 2.0], k), lambda: optimal_kmeans_1d([1.0, 2.0], k),
               lambda: kmeans_quantize({"w": torch.ones(3)}, k)):
        with pytest.raises(ValueError, match="k must be an integer"):
            fn()


def test_k_above_distinct_values_is_clamped_with_a_warning():
    x = [0.5, 0.5, -1.0, 2.0, 2.0]
    for fn in (kmeans_1d, optimal_kmeans_1d):
        with pytest.warns(UserWarning, match=r"k=5 exceeds the number of distinct values \(3\)"):
            res = fn(x, 5)
        assert res.centres.tolist() == [-1.0, 0.5, 2.0] and res.inertia == 0.0
        assert res.labels.tolist() == [1, 1, 0, 2, 2]
    with pytest.warns(UserWarning, match=r"\(4\)"):  # keep_zero adds 0 to the values
        assert kmeans_1d(x, 6, keep_zero=True).centres.tolist() == [-1.0, 0.0, 0.5, 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly k distinct values: no warning
        assert kmeans_1d(x, 3).inertia == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_rejected_by_name(bad):
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        kmeans_1d([0.0, bad, 1.0], 2)
    w = {"ok": torch.ones(3), "layer2.weight": torch.tensor([0.0, bad])}
    with pytest.raises(ValueError, match="'layer2.weight' has 1 non-finite"):
        kmeans_quantize(w, 2)


def test_empty_inputs_and_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="empty"):
        kmeans_1d([], 2)
    with pytest.raises(ValueError, match="empty"):
        optimal_kmeans_1d(torch.zeros(0), 2)
    with pytest.raises(ValueError, match="non-empty dict"):
        kmeans_quantize({}, 2)
    with pytest.raises(ValueError, match="'b' is empty"):
        kmeans_quantize({"a": torch.ones(2), "b": torch.zeros(0, 3)}, 2, scope="layer")
    with pytest.raises(ValueError, match=r"unknown k-means init 'kmeans\+\+x'.*available: density"):
        kmeans_1d([1.0, 2.0, 3.0], 2, init="kmeans++x")
    with pytest.raises(ValueError, match="unknown scope 'row'.*available: " + ", ".join(list_scopes())):
        kmeans_quantize({"a": torch.ones(2)}, 2, scope="row")
    with pytest.raises(ValueError, match="floating-point"):
        kmeans_quantize({"a": torch.ones(2, dtype=torch.int64)}, 2)
    with pytest.raises(ValueError, match="init_centres has 3 values but k=2"):
        kmeans_1d([1.0, 2.0, 3.0, 4.0], 2, init_centres=[1.0, 2.0, 3.0])


def test_documented_examples_run():
    assert doctest.testmod(km).failed == 0
