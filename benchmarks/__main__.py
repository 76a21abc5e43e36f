"""The benchmark suite: ``python -m benchmarks [--device cpu|cuda] [--quick] [--out FILE]``.

Sections (each prints its device, N and ratios measured side by side in one process run):

* ``clustering``: the paper's ten-round schedule on synthetic trained-like weights; the project
  (Triton kernels on CUDA, and the torch path) against the authors' dense K x N reference
  (``pwfn_viz.core.clustering_readable.readable_cluster_round``), each implementation in its own worker process
  (``benchmarks.bench_clustering``) so that its peak memory is its own. The dense reference is
  stopped after a time budget (or dies of memory); ratios then cover the rounds it completed.
* ``train``: a converted timm resnet18 training step (``benchmarks.bench_train_step``).
* ``whatif``: re-clustering latency for changed settings (``benchmarks.bench_whatif``).

A section that fails prints its traceback and the suite goes on. ``main(argv)`` runs the suite
from Python, ``argv`` as on the command line.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = [0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0]
CLUSTER_TARGET_X, CLUSTER_TARGET_S = 50.0, 2.0
PROJECT_BUDGET_S = 150.0   # safety stop for the project's own workers


@dataclass
class Sizes:
    """Problem sizes of one suite run."""
    cluster_n: list = field(default_factory=list)
    dense_budget_s: list = field(default_factory=list)   # per N
    train_batch: int = 8
    train_resolution: int = 64
    train_warmup: int = 2
    train_steps: int = 6
    whatif_n: int = 1_000_000
    whatif_repeats: int = 2


SIZES = {  # (device, quick) -> Sizes
    ("cuda", False): Sizes([1_000_000, 5_700_000, 11_700_000], [30, 30, 45], 128, 224, 5, 10, 11_700_000, 2),
    ("cuda", True): Sizes([1_000_000], [20], 32, 224, 3, 6, 1_000_000, 2),
    ("cpu", False): Sizes([100_000, 1_000_000], [120, 300], 8, 64, 2, 6, 1_000_000, 2),
    ("cpu", True): Sizes([20_000, 50_000], [20, 30], 8, 64, 1, 2, 1_000_000, 1),
}


_DEADLINE: float | None = None   # time.monotonic() by which the suite should be done
SECTION_MIN_S = 45.0


def _time_left(needed_s: float) -> bool:
    return _DEADLINE is None or time.monotonic() + needed_s <= _DEADLINE


class Output:
    """Lines go to stdout and, appended and flushed at once, to ``path`` (if any)."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def __call__(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            if self.path:
                with self.path.open("a") as f:
                    f.write(line + "\n")


# ---------------------------------------------------------------- clustering (worker processes)

def run_clustering_worker(impl: str, backend: str | None, n: int, device: str, budget: float | None,
                          seed: int = 0) -> dict:
    """One ``bench_clustering`` worker; returns its rounds and, if it stopped early, why."""
    from .bench_clustering import WorkerFailed, run_worker
    try:
        rounds, why = run_worker(impl, n, device, seed, budget, backend=backend)
    except WorkerFailed as failed:
        return dict(rounds=failed.rounds, stopped=str(failed))
    return dict(rounds=rounds, stopped=why or None)


def clustering_section(out: Output, device: str, sizes: Sizes) -> None:
    impls = [("project/triton", "project", "triton")] if device == "cuda" else []
    impls += [("project/torch", "project", "torch"), ("dense", "dense", None)]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    mem = "peak CUDA allocated growth" if device == "cuda" else "peak RSS growth"
    out(f"== clustering: full ten-round schedule, device: {name}; memory = {mem}",
        f"{'N':>10} | {'implementation':<15} | {'rounds':>6} | {'seconds':>8} | {'MiB (B/weight)':>17} | "
        f"{'dense s / this s':>16} | same result as")
    for n, budget in zip(sizes.cluster_n, sizes.dense_budget_s):
        if not _time_left(budget + 20 + 6e-6 * n * len(impls)):
            out(f"{n:>10} | skipped: not enough of the time budget left")
            continue
        res = {label: run_clustering_worker(impl, be, n, device, budget if impl == "dense" else PROJECT_BUDGET_S)
               for label, impl, be in impls}
        dense = res["dense"]["rounds"]
        k = len(dense)
        first = impls[0][0]
        for label, _, _ in impls:
            rounds = res[label]["rounds"]
            secs = sum(r["seconds"] for r in rounds)
            peak = max((r["peak_bytes"] for r in rounds), default=float("nan"))
            ratio = "-"
            if label != "dense" and k and len(rounds) >= k:
                ratio = f"{sum(r['seconds'] for r in dense) / sum(r['seconds'] for r in rounds[:k]):15.1f}x"
            same = []
            for other in (first, "dense"):
                if other != label and res[other]["rounds"]:
                    m = min(len(rounds), len(res[other]["rounds"]))
                    ok = all(a["fingerprint"] == b["fingerprint"] for a, b in zip(rounds[:m], res[other]["rounds"][:m]))
                    same.append(f"{other} {'yes' if ok else 'NO'} ({m} rounds)")
            out(f"{n:>10} | {label:<15} | {len(rounds):>3}/10 | {secs:8.2f} | "
                f"{peak / 2**20:8.1f} ({peak / n:5.1f}) | {ratio:>16} | {', '.join(same)}")
            if res[label]["stopped"]:
                out(f"{'':>10}   {label}: {res[label]['stopped']}")
        if k < len(SCHEDULE):
            out(f"{'':>10}   ratios compare rounds 1..{k} only (those the dense reference completed)")
        proj = res[first]["rounds"]
        if device == "cuda" and n >= 11_000_000 and len(proj) == len(SCHEDULE):
            total = sum(r["seconds"] for r in proj)
            ratio = (sum(r["seconds"] for r in dense) / sum(r["seconds"] for r in proj[:k])) if k else float("nan")
            out(f"{'':>10}   target (11.7M, GPU): >= {CLUSTER_TARGET_X:.0f}x dense and < {CLUSTER_TARGET_S} s: "
                f"{first} {total:.2f} s ({'MET' if total < CLUSTER_TARGET_S else 'NOT MET'}), "
                f"{ratio:.1f}x over {k} dense rounds ({'MET' if ratio >= CLUSTER_TARGET_X else 'NOT MET'})")
        per = "  ".join(f"{r['seconds']:.2f}({r['steps']})" for r in proj)
        out(f"{'':>10}   {first} per round, seconds(steps): {per}")


# ---------------------------------------------------------------- the suite

def train_section(out: Output, device: str, sizes: Sizes) -> None:
    """float32 NCHW (the target's measure); on a GPU also bf16 autocast with channels_last, the
    way one trains on a GPU, where the sampling overhead weighs more against a faster step."""
    from benchmarks import bench_train_step
    settings = [(None, False)] + ([("bf16", True)] if device == "cuda" else [])
    for i, (amp, channels_last) in enumerate(settings):
        res = bench_train_step.run(device, sizes.train_batch, sizes.train_resolution, sizes.train_warmup,
                                   sizes.train_steps, blocks=2 if sizes.train_steps >= 4 else 1, amp=amp,
                                   channels_last=channels_last)
        lines = bench_train_step.report(res)
        out(("== " if i == 0 else "") + lines[0], *lines[1:])


def whatif_section(out: Output, device: str, sizes: Sizes) -> None:
    from benchmarks import bench_whatif
    lines = bench_whatif.report(bench_whatif.run(device, sizes.whatif_n, repeats=sizes.whatif_repeats))
    out("== " + lines[0], *lines[1:])


SECTIONS = {"clustering": clustering_section, "train": train_section, "whatif": whatif_section}


def run_suite(out: Output, device: str, quick: bool, only=None, order=None, deadline: float | None = None,
              descending: bool = False) -> dict:
    """Run the sections (in ``order``); a failing one is reported with its traceback, and with a
    ``deadline`` (time.monotonic()) what would not fit is skipped. Returns name -> ok (None: skipped)."""
    global _DEADLINE
    _DEADLINE = deadline
    sizes = SIZES[(device, quick)]
    if descending:  # largest N first: the target sizes come before the time guard can bite
        pairs = sorted(zip(sizes.cluster_n, sizes.dense_budget_s), reverse=True)
        sizes = replace(sizes, cluster_n=[p[0] for p in pairs], dense_budget_s=[p[1] for p in pairs])
    out(f"pwfn_viz benchmark suite: device={device}, quick={quick}, torch {torch.__version__}, "
        f"python {platform.python_version()}, {platform.node()}",
        f"sizes: {sizes}")
    status = {}
    for name in order or SECTIONS:
        fn = SECTIONS[name]
        if only and name not in only:
            continue
        if not _time_left(SECTION_MIN_S):
            out(f"== {name}: skipped, the time budget is spent", "")
            status[name] = None
            continue
        t0 = time.perf_counter()
        try:
            fn(out, device, sizes)
            status[name] = True
        except Exception:
            out(f"== {name}: FAILED", *traceback.format_exc().rstrip().splitlines())
            status[name] = False
        if device == "cuda":
            torch.cuda.empty_cache()
        out(f"({name} took {time.perf_counter() - t0:.0f} s)", "")
    return status


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes on CPU)")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here; use --device cpu")
    status = run_suite(Output(args.out), args.device, args.quick, args.only)
    return 0 if all(v is not False for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
