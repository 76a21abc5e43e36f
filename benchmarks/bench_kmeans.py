"""Benchmark: pwfn_viz's sorted-prefix-sum 1-D k-means against scikit-learn's KMeans.

Both run Lloyd's algorithm on the same values from the same initial centres (k-means++ from
pwfn_viz, handed to scikit-learn as an explicit ``init`` array) with the same stopping rule:
``tol=0`` (stop when the assignment repeats) and ``max_iter=300``.  Both timings are end to end
from a float64 NumPy array: pwfn_viz's includes its sort, scikit-learn's its input checks.
The init itself is timed separately and is not part of either.  A third column times pwfn_viz
again on values sorted once beforehand (:class:`SortedValues`, what an explorer that re-clusters
the same weights at many k does): the same result, without the sort and the prefix sums.

    python -m benchmarks.bench_kmeans            # N = 1M, k = 16 and 256 (a few minutes)
    python -m benchmarks.bench_kmeans --quick    # N = 100k

scikit-learn's Lloyd is multi-threaded (OpenMP); the thread count it used is printed.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import sklearn
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

from pwfn_viz.baselines.kmeans import SortedValues, init_centres, kmeans_1d

TARGET_SPEEDUP = 20.0  # at the largest k
INERTIA_SLACK = 1e-9  # relative: ours may be worse than scikit-learn's by at most this


def weight_like(n: int, seed: int = 0) -> np.ndarray:
    """n float32-representable values like a trained network's weights, as float64.

    Twenty "layers" of very different sizes and scales: a Laplace bulk per layer, plus a wider
    Gaussian component (10%) for the tails.
    """
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, rng.dirichlet(np.full(20, 0.8)))
    scales = np.exp(rng.uniform(np.log(0.005), np.log(0.1), size=20))
    parts = [np.where(rng.random(m) < 0.9, rng.laplace(0, s, m), rng.normal(0, 3 * s, m))
             for m, s in zip(sizes, scales)]
    return np.concatenate(parts).astype(np.float32).astype(np.float64)


def timed(fn, repeat: int = 1):
    """(best wall time over `repeat` runs, result of the last run)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench(x: np.ndarray, k: int, max_iter: int, seed: int) -> dict:
    t_init, start = timed(lambda: init_centres(x, k, init="kmeans++", seed=seed).numpy())
    t_ours, ours = timed(lambda: kmeans_1d(x, k, init_centres=start, max_iter=max_iter), repeat=3)
    values = SortedValues(x)
    t_sorted, again = timed(lambda: kmeans_1d(values, k, init_centres=start, max_iter=max_iter), repeat=3)
    if not (np.array_equal(again.centres, ours.centres) and np.array_equal(again.labels, ours.labels)):
        raise AssertionError(f"k={k}: the sorted-once values gave another result")
    sk_model = KMeans(n_clusters=k, init=start.reshape(-1, 1), n_init=1, algorithm="lloyd",
                      tol=0.0, max_iter=max_iter)
    t_sk, sk = timed(lambda: sk_model.fit(x.reshape(-1, 1)))
    sk_centres = np.sort(sk.cluster_centers_.ravel())
    return {"k": k, "n": len(x), "init_s": t_init, "ours_s": t_ours, "sorted_s": t_sorted, "sklearn_s": t_sk,
            "speedup": t_sk / t_ours, "inertia_ours": ours.inertia, "inertia_sklearn": sk.inertia_,
            "rel_diff": (ours.inertia - sk.inertia_) / sk.inertia_,
            "max_centre_diff": float(np.max(np.abs(ours.centres.numpy() - sk_centres))),
            "iter_ours": ours.n_iter, "iter_sklearn": sk.n_iter_, "converged": ours.converged}


def print_table(rows: list[dict]) -> None:
    head = ("| N | k | pwfn_viz (s) | sorted once (s) | sklearn (s) | speed-up | inertia pwfn_viz | inertia sklearn "
            "| rel. diff | max centre diff | iters (ours / sklearn) | converged |")
    print(head)
    print("|" + "---|" * head.count(" | ") + "---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['k']} | {r['ours_s']:.3f} | {r['sorted_s']:.3f} | {r['sklearn_s']:.2f} "
              f"| {r['speedup']:.0f}x | {r['inertia_ours']:.10g} | {r['inertia_sklearn']:.10g} "
              f"| {r['rel_diff']:+.2e} | {r['max_centre_diff']:.1e} "
              f"| {r['iter_ours']} / {r['iter_sklearn']} | {r['converged']} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100k instead of 1M")
    parser.add_argument("--n", type=int, default=None, help="number of values (overrides --quick)")
    parser.add_argument("--k", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.n or (100_000 if args.quick else 1_000_000)

    threads = [f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()]
    print(f"# bench_kmeans: N={n:,}, k={args.k}, max_iter={args.max_iter}, tol=0, seed={args.seed}")
    print(f"# {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"sklearn {sklearn.__version__} thread pools: {', '.join(threads)}")
    x = weight_like(n, args.seed)
    rows = [bench(x, k, args.max_iter, args.seed) for k in args.k]
    print_table(rows)
    print("# kmeans++ init time (not in either column): "
          + ", ".join(f"k={r['k']}: {r['init_s']:.3f}s" for r in rows))
    last = rows[-1]
    ok = last["speedup"] >= TARGET_SPEEDUP and last["rel_diff"] <= INERTIA_SLACK
    print(f"# target at k={last['k']}: >= {TARGET_SPEEDUP:.0f}x and inertia no worse than "
          f"sklearn's (+{INERTIA_SLACK:g} rel.): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
