"""The quick paths of k-means and of the k-means comparison give exactly the old numbers.

References: the previous implementations, kept here verbatim (the k-means boundaries and Lloyd
loop, the random init, ``measure_method`` and CompareExplorer's k-means call), and the plain
inputs of the same public functions (a :class:`SortedValues` against the values themselves).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import pwfn_viz
from pwfn_viz.analysis.codebook_weights import CodebookWeights
from pwfn_viz.analysis.compare import CLAMP_WARNING, converted_weights, flatten_named, measure_method
from pwfn_viz.baselines.kmeans import SortedValues, init_centres, kmeans_1d, kmeans_quantize, list_inits
from pwfn_viz.baselines.kmeans.init import _init_random
from pwfn_viz.baselines.kmeans.lloyd import _boundaries, _relocate
from pwfn_viz.core.metrics import codebook_stats, evaluate
from pwfn_viz.data.datasets import make_loader
from pwfn_viz.widgets._common import held_batches
from pwfn_viz.widgets.compare_explorer import HELD_BATCHES_BYTES, KMeansAtK

CONFIG = dict(model="digits_cnn", pretrain_epochs=2, first_round_epochs=0.1, epochs_per_round=0.2,
              fractions=(0.5, 1.0), threads=1)


def weight_like(n, seed=0, decimals=None):
    """Float32-representable values like a layer's weights; ``decimals`` rounds them (many ties)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.laplace(0, 0.05, n), rng.normal(0.3, 0.02, n // 5)])
    if decimals is not None:
        x = np.round(x, decimals)
    return x.astype(np.float32).astype(np.float64)


# ----------------------------------------------------------------------------- the previous k-means

def old_boundaries(xs, c):
    n = len(xs)
    lo, hi = c[:-1], c[1:]
    pos = np.searchsorted(xs, lo / 2 + hi / 2, side="right")
    while True:
        up = pos < n
        up[up] = (xs[pos[up]] - lo[up]) <= (hi[up] - xs[pos[up]])
        down = pos > 0
        down[down] = (xs[pos[down] - 1] - lo[down]) > (hi[down] - xs[pos[down] - 1])
        if not (up.any() or down.any()):
            break
        pos[up] = np.searchsorted(xs, xs[pos[up]], side="right")
        pos[down] = np.searchsorted(xs, xs[pos[down] - 1], side="left")
    dup = lo == hi
    if dup.any():
        kept = np.flatnonzero(~dup)
        pos = np.append(pos[kept], n)[np.searchsorted(kept, np.arange(len(pos)))]
    return np.maximum.accumulate(pos)


def old_kmeans(x, c, *, zero_fixed=False, max_iter=300, tol=0.0):
    """The previous Lloyd loop and final pass: (centres, labels, inertia, n_iter, converged)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    xs = np.sort(flat)
    c, n, tol_abs = np.array(c, dtype=np.float64), len(xs), tol * float(np.var(xs))
    shift = xs.mean()
    prefix = np.concatenate([[0.0], np.cumsum(xs - shift, dtype=np.longdouble)])
    prev_pos, n_iter, converged = None, 0, False
    for n_iter in range(1, max_iter + 1):
        pos = old_boundaries(xs, c)
        edges = np.concatenate([[0], pos, [n]])
        counts = np.diff(edges)
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        zero = np.searchsorted(c, 0.0) if zero_fixed else -1
        empty = counts == 0
        if zero >= 0:
            empty[zero] = False
        if empty.any():
            _relocate(xs - shift, c - shift, edges, counts, sums, np.flatnonzero(empty))
        new = c.copy()
        filled = counts > 0
        new[filled] = (sums[filled] / counts[filled]).astype(np.float64) + shift
        if zero >= 0:
            new[zero] = 0.0
        centre_shift = float(np.sum((new - c) ** 2))
        c = np.sort(new)
        if prev_pos is not None and np.array_equal(pos, prev_pos):
            converged = True
            break
        if centre_shift <= tol_abs:
            converged = True
            break
        prev_pos = pos
    pos = old_boundaries(xs, c)
    counts = np.diff(np.concatenate([[0], pos, [len(xs)]]))
    residual = xs - np.repeat(c, counts)
    upper = np.where(pos > 0, xs[np.maximum(pos - 1, 0)], -np.inf)
    labels = np.searchsorted(upper, flat, side="left")
    return c, labels, float(np.sum(residual * residual)), n_iter, converged


def old_init_random(xs, k, rng):
    shuffled = xs[rng.permutation(len(xs))]
    _, first_seen = np.unique(shuffled, return_index=True)
    return shuffled[np.sort(first_seen)[:k]]


def assert_same_result(a, b):
    assert torch.equal(a.centres, b.centres) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia and (a.n_iter, a.converged) == (b.n_iter, b.converged)
    assert torch.equal(a.init_centres, b.init_centres)


@pytest.mark.parametrize("decimals", [None, 3])
@pytest.mark.parametrize("k", [2, 7, 40])
def test_boundaries_and_lloyd_equal_the_previous_loop(k, decimals):
    x = weight_like(3000, seed=k, decimals=decimals)
    xs = np.sort(x)
    rng = np.random.default_rng(k)
    for c in (np.sort(rng.choice(xs, k)), np.sort(np.repeat(rng.choice(xs, k // 2 + 1), 2))[:k],
              xs[np.linspace(0, len(xs) - 1, k).astype(int)] / 2 + xs[-1] / 2):
        assert np.array_equal(_boundaries(xs, c), old_boundaries(xs, c))
    for keep_zero in (False, True):
        start = init_centres(x, k, init="kmeans++", seed=k, keep_zero=keep_zero)
        new = kmeans_1d(x, k, init_centres=start, keep_zero=keep_zero)
        centres, labels, inertia, n_iter, converged = old_kmeans(x, start.numpy(), zero_fixed=keep_zero)
        assert np.array_equal(new.centres.numpy(), centres) and np.array_equal(new.labels.numpy(), labels)
        assert (new.inertia, new.n_iter, new.converged) == (inertia, n_iter, converged)


def test_lloyd_with_a_cluster_that_stays_empty_equals_the_previous_loop():
    x = 1 + weight_like(2000, seed=4, decimals=3) ** 2      # all >= 1: the pinned zero holds nothing
    start = init_centres(x, 6, init="linear", keep_zero=True)
    new = kmeans_1d(x, 6, init_centres=start, keep_zero=True)
    centres, labels, inertia, n_iter, converged = old_kmeans(x, start.numpy(), zero_fixed=True)
    assert 0.0 in centres and not (new.labels == 0).any()
    assert np.array_equal(new.centres.numpy(), centres) and np.array_equal(new.labels.numpy(), labels)
    assert (new.inertia, new.n_iter, new.converged) == (inertia, n_iter, converged)


@pytest.mark.parametrize("decimals", [None, 2])
def test_random_init_equals_sorting_the_whole_permutation(decimals):
    x = weight_like(2000, seed=3, decimals=decimals)
    xs = np.sort(x)
    distinct = len(np.unique(xs))
    for k in (1, 2, 5, 50, distinct - 1):
        for seed in range(3):
            new = _init_random(xs, k, np.random.default_rng(seed))
            old = old_init_random(xs, k, np.random.default_rng(seed))
            assert np.array_equal(new, old) and len(new) == k


@pytest.mark.parametrize("init", list_inits())
def test_sorted_values_give_the_plain_result(init):
    x = torch.from_numpy(weight_like(2500, seed=1, decimals=3)).float().reshape(50, -1)
    values = SortedValues(x)
    assert values.n_distinct == torch.unique(x).numel()
    for k in (1, 3, 24):
        for keep_zero in (False, True):
            for seed in (0, 5):
                assert_same_result(kmeans_1d(values, k, init=init, seed=seed, keep_zero=keep_zero),
                                   kmeans_1d(x, k, init=init, seed=seed, keep_zero=keep_zero))
    with pytest.warns(UserWarning, match="exceeds the number of distinct values"):
        clamped = kmeans_1d(values, values.n_distinct + 5)
    assert torch.equal(clamped.labels, kmeans_1d(x, values.n_distinct, init="linear").labels)


def test_sorted_values_keep_their_own_copy():
    x = torch.tensor([3.0, 1.0, 2.0, 10.0], dtype=torch.float64)
    values = SortedValues(x)
    x[0] = 100.0
    assert kmeans_1d(values, 2, init="linear").centres.tolist() == [2.0, 10.0]


# ----------------------------------------------------------------------------- codebook counts

def reference_counts(stored, sizes):
    values, counts = torch.unique(stored.double(), return_counts=True)
    return values, counts, codebook_stats(stored), [int(torch.unique(t).numel()) for t in stored.split(sizes)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_codebook_counts_equal_sorting_the_weights(dtype):
    # centres 1 and 1 + 1e-12 are one float32 value; 2.0 and 7.5 are never used; 0 is a value
    centres = torch.tensor([-0.5, 0.0, 1.0, 1.0 + 1e-12, 2.0, 3.25, 7.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 5])[torch.randint(0, 5, (500,), generator=g)]
    labels[200:260] = 3          # the second tensor holds one stored value only
    sizes = [200, 60, 240]
    book = CodebookWeights(centres, labels, dtype, sizes)
    stored = centres[labels].to(dtype)
    assert torch.equal(book.stored, stored) and torch.equal(book.flat, stored.double())
    values, counts, stats, per_tensor = reference_counts(stored, sizes)
    got_values, got_counts = book.distinct()
    assert torch.equal(got_values, values) and torch.equal(got_counts, counts)
    assert book.stats() == stats and book.per_tensor_unique() == per_tensor
    assert per_tensor[1] == 1
    shapes = [(20, 10), (60,), (4, 6, 10)]
    assert [t.shape for t in book.tensors(shapes)] == [torch.Size(s) for s in shapes]


def test_moved_fractions_equal_the_mean_of_the_comparisons():
    g = torch.Generator().manual_seed(1)
    moved = torch.rand(100_003, generator=g, dtype=torch.float64) * 4
    moved[:5000] = 2.0   # exactly on a threshold
    for s in (1, 2, 3):
        assert int(torch.count_nonzero(moved > s)) / moved.numel() == float((moved > s).double().mean())


# ----------------------------------------------------------------------------- the comparison at k

def old_measure_method(method, k, model, names, w_start, sigma, loader):
    tensors = converted_weights(model, names)
    w = flatten_named(tensors, names)
    acc = evaluate(model, loader, "cpu")
    acc = {"top1": acc["top1"], "top5": acc["top5"]}
    moved = (w - w_start).abs() / sigma
    row = {"method": method, "k": int(k), "finetuned": False, **acc,
           **codebook_stats(torch.cat([t.reshape(-1).cpu() for t in tensors.values()])),
           "weight_error": float((w - w_start).norm() / w_start.norm()),
           **{f"moved_gt_{s}sigma": float((moved > s).double().mean()) for s in (1, 2, 3)}}
    layers, at = [], 0
    for n, t in tensors.items():
        ws, wf = w_start[at:at + t.numel()], w[at:at + t.numel()]
        at += t.numel()
        layers.append({"layer": n, "method": method, "numel": t.numel(), "unique": int(torch.unique(t).numel()),
                       "weight_error": float((wf - ws).norm() / ws.norm())})
    return row, layers, w


def old_kmeans_at_k(session, loader, k, init, seed=0):
    """CompareExplorer's k-means side as it was: quantise, build a network, measure it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", CLAMP_WARNING, UserWarning)
        quantized = kmeans_quantize(session.start, k, scope="global", init=init, seed=seed).quantized
    model = session.run.plain_model_at(None)
    with torch.no_grad():
        for n, p in converted_weights(model, session.names).items():
            p.copy_(quantized[n])
    return old_measure_method(f"kmeans@{k}", k, model, session.names, session.w_start, session.sigma, loader)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speedups") / "run"
    pwfn_viz.run(pwfn_viz.RunConfig(**CONFIG), out_dir=out, progress=False, verbose=False)
    return pwfn_viz.load_run(out)


@pytest.fixture(scope="module")
def loader():
    return make_loader(pwfn_viz.create_dataset("digits").test, 97)   # several batches


@pytest.fixture(scope="module")
def session(run, loader):
    return KMeansAtK(run, loader)


def test_held_batches_are_the_loaders_batches(loader):
    held = held_batches(loader, HELD_BATCHES_BYTES)
    assert isinstance(held, list) and len(held) == len(loader) > 1
    for (x, y), (x0, y0) in zip(held, loader):
        assert torch.equal(x, x0) and torch.equal(y, y0)
    assert held_batches(loader, limit=1000) is loader


def test_pwfn_row_equals_the_previous_measure(session, run, loader):
    row, layers, w = old_measure_method(session.method, 0, run.plain_model_at(-1), session.names, session.w_start,
                                        session.sigma, loader)
    row["k"] = row["unique"]
    assert session.pwfn[0] == row and session.pwfn[1] == layers and torch.equal(session.pwfn[2], w)
    assert session.k_max == torch.unique(session.w_start).numel()


@pytest.mark.parametrize("init", list_inits())
def test_kmeans_at_k_equals_the_previous_computation(session, loader, init):
    for k in (1, 6, 37, 6):      # 6 twice: the network reused between calls keeps nothing from before
        comparison = session(k, init)
        row, layers, w = old_kmeans_at_k(session, loader, k, init)
        expected = pd.DataFrame([session.pwfn[0], row], columns=session.columns)
        pd.testing.assert_frame_equal(comparison.table, expected, check_exact=True)
        pd.testing.assert_frame_equal(comparison.layers, pd.DataFrame(session.pwfn[1] + layers), check_exact=True)
        method = f"kmeans@{k}"
        assert torch.equal(comparison.weights[method], w)
        for m in (session.method, method):
            values, counts = comparison.value_counts(m)
            ref_values, ref_counts = torch.unique(comparison.weights[m], return_counts=True)
            assert torch.equal(values, ref_values) and torch.equal(counts, ref_counts)


def test_mixed_dtypes_are_measured_from_the_tensors(session, loader):
    dtype = session.dtype
    session.dtype = None    # as for a network whose converted tensors differ in dtype
    try:
        comparison = session(9, "density")
    finally:
        session.dtype = dtype
    row, _, w = old_kmeans_at_k(session, loader, 9, "density")
    assert comparison.table.iloc[1].to_dict() == pd.Series(row)[session.columns].to_dict()
    assert torch.equal(comparison.weights["kmeans@9"], w)


def test_measure_method_with_a_codebook_equals_sorting(session, run, loader):
    result = kmeans_1d(session.sorted_start, 11, init="kmeans++")
    book = CodebookWeights(result.centres, result.labels, session.dtype, session.sizes)
    model = run.plain_model_at(None)
    with torch.no_grad():
        for p, values in zip(converted_weights(model, session.names).values(), book.tensors(session.shapes)):
            p.copy_(values)
    args = ("kmeans@11", 11, False, model, session.names, session.w_start, session.sigma, loader, "cpu")
    fast, plain = measure_method(*args, codebook=book), measure_method(*args)
    assert fast[0] == plain[0] and fast[1] == plain[1] and torch.equal(fast[2], plain[2])
