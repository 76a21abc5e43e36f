"""Benchmark: one WhatIf update on the CPU at about a million weights.

An update of :class:`pwfn_viz.widgets.WhatIf` is :func:`pwfn_viz.widgets.whatif_snap` from the
round's inputs sorted once (``SortedInputs``: ``cluster_sorted``, then the codebook counted from
the centres); the "plain s" column times the plain calls it replaces (``cluster_round`` with the
order, then ``codebook_stats`` of the snapped values), whose results it equals. The accuracy after
the snap is timed separately, as the widget computes it (``PlainNetwork.accuracy``: the snapped
values copied into the plain network, the test batches read once) and as the plain calls do
(:func:`pwfn_viz.widgets.snapped_accuracy`: ``load_flat_state`` into the converted network,
``evaluate`` over the loader); the widget runs it while the panels draw. The weights are synthetic: a
digits CNN widened to 136 channels (1,011,274 converted weights) at its random initialisation,
converted with the paper's sigma init. Two inputs:

* "fresh": nothing fixed yet (a round-0 what-if),
* "late": 80% of the weights already on centres (the output of a 0.8 round), as in a later round.

Each (input, fraction, threads) is timed ``--repeats`` times after one warm-up; the verdict uses
the median wall-clock time and the 0.5 s target (BENCHMARKS.md). The machine's load is printed too:
timings on a shared 2-core machine vary with what else runs; the "cpu s" column (process CPU
time) is, for one thread, close to what the update takes on an otherwise idle core. The widget
re-clusters on one thread (``WhatIf(cluster_threads=1)``).

    .venv/bin/python -m benchmarks.bench_whatif_cpu                 # one thread, about a minute
    .venv/bin/python -m benchmarks.bench_whatif_cpu --threads 1 2   # also two threads (slow on 2 cores)
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pwfn_viz.core.bayes import convert, flat_state
from pwfn_viz.core.clustering import ClusterConfig, cluster_round, mu_order
from pwfn_viz.core.clustering_cpu import SortedInputs, cluster_sorted
from pwfn_viz.data.datasets import create_dataset, make_loader
from pwfn_viz.core.metrics import counted_codebook_stats
from pwfn_viz.models.factory import create_model
from pwfn_viz.widgets import snapped_accuracy, whatif_snap
from pwfn_viz.widgets._common import torch_threads
from pwfn_viz.widgets._whatif_data import PlainNetwork, snapped_value_counts

TARGET_S = 0.5
WIDTH = 136   # digits_cnn(width=136): 1,011,274 converted weights


def synthetic_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return convert(create_model("digits_cnn", num_classes=10, in_chans=1, width=WIDTH)).eval()


def _time(fn, repeats: int, cpu: list | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after one warm-up; their process CPU seconds are
    appended to ``cpu`` (with one thread, CPU time is what the call costs without contention)."""
    fn()   # warm-up
    out = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        out.append(time.perf_counter() - t0)
        if cpu is not None:
            cpu.append(time.process_time() - c0)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 0.9, 1.0])
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="torch CPU threads to try (default: 1, what the widget uses; e.g. --threads 1 2)")
    args = p.parse_args(argv)
    default_threads = torch.get_num_threads()
    threads = args.threads

    model = synthetic_model()
    mu, sigma, _ = flat_state(model)
    n = mu.numel()
    config = ClusterConfig()
    late = cluster_round(mu, sigma, 0.8, config=config)
    inputs = {"fresh": (mu, sigma), "late": (late.mu, late.sigma)}
    load = os.getloadavg()
    print(f"WhatIf update on CPU: N = {n:,} weights, {os.cpu_count()} cores, torch default threads "
          f"{default_threads}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"{'input':6} {'fraction':>8} {'threads':>7} {'median s':>9} {'min s':>7} {'cpu s':>6} {'cluster s':>9} "
          f"{'stats s':>7} {'plain s':>7}  unique  < {TARGET_S} s")
    verdicts = []
    for name, (m, s) in inputs.items():
        for fraction in args.fractions:
            if name == "late" and fraction <= 0.8:
                continue
            for t in threads:
                cpu = []
                with torch_threads(t):   # the widget sorts its mu once and reuses it
                    inputs, order = SortedInputs.of(m, s), mu_order(m)
                    total = _time(lambda: whatif_snap(m, s, fraction, config, inputs=inputs), args.repeats, cpu)
                    parts = _time(lambda: cluster_sorted(inputs, fraction, config), 1)
                    result, stats = whatif_snap(m, s, fraction, config, inputs=inputs)
                    stats_t = _time(lambda: counted_codebook_stats(*snapped_value_counts(inputs, result)), 1)
                    plain = _time(lambda: whatif_snap(m, s, fraction, config, order=order), 1)
                med = statistics.median(total)
                ok = med < TARGET_S
                verdicts.append((name, fraction, t, med, ok))
                print(f"{name:6} {fraction:8.2f} {t:7d} {med:9.3f} {min(total):7.3f} {statistics.median(cpu):6.3f} "
                      f"{parts[0]:9.3f} {stats_t[0]:7.3f} {plain[0]:7.3f}  {stats['unique']:6d}  "
                      f"{'yes' if ok else 'NO'}")

    data = create_dataset("digits")
    loader = make_loader(data.test, 512)
    result, _ = whatif_snap(mu, sigma, 0.9, config)
    network = PlainNetwork(synthetic_model(), loader)   # the same weights: a network of its own, made plain
    for t in threads:
        with torch_threads(t):
            acc_t = _time(lambda: network.accuracy(result), args.repeats)
            plain_t = _time(lambda: snapped_accuracy(model, result, loader), args.repeats)
        print(f"accuracy after the snap ({len(data.test)} digits test images), threads {t}: the widget's "
              f"PlainNetwork median {statistics.median(acc_t):.3f} s (min {min(acc_t):.3f}); load_flat_state + "
              f"evaluate median {statistics.median(plain_t):.3f} s (min {min(plain_t):.3f})")
    worst = max(verdicts, key=lambda v: v[3])
    slowest = {t: max(v[3] for v in verdicts if v[2] == t) for t in threads}
    print("slowest update per thread count: " + ", ".join(f"{t} thread(s) {s:.3f} s" for t, s in slowest.items()))
    all_ok = {t: all(v[4] for v in verdicts if v[2] == t) for t in threads}
    print("every update under 0.5 s: "
          + ", ".join(f"{t} thread(s): {'yes' if ok else 'NO'}" for t, ok in all_ok.items()))
    print(f"slowest case: {worst[0]} input, fraction {worst[1]}, {worst[2]} thread(s): {worst[3]:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
