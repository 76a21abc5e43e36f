"""Benchmark: the project's clustering round against the authors' dense K x N approach.

Runs the paper's ten-round schedule (0.2 ... 1.0) on synthetic weights shaped like a trained
network's, with no training between rounds: each round's output mu / sigma is the next round's
input, as in the pipeline. Each implementation runs in a fresh subprocess so that its peak
memory can be read on its own (CPU: the largest over the rounds of a round's peak RSS minus the RSS
when it started, the inputs being held already; CUDA: peak
allocated minus allocated before the first round).

    python -m benchmarks.bench_clustering                 # N = 100k and 1M, CPU
    python -m benchmarks.bench_clustering --quick         # N = 5k, about half a minute
    python -m benchmarks.bench_clustering --n 1000000 --device cuda --dense-budget 300

The dense baseline is the package's readable round (``readable_cluster_round`` in
``pwfn_viz.core.clustering_readable``): the same result from a K x N "fits" matrix built at every
greedy step, as the authors do. It can take very long at large N. It is timed honestly, round by round; if it has not finished the schedule within
``--dense-budget`` seconds it is stopped, and the ratio then compares the two implementations
over the rounds the dense one completed (the output says so).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from pwfn_viz.constants import SAMPLING_SIGMA_FLOOR, SIGMA_CAP, SIGMA_INIT_SCALE

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = [0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99, 1.0]


# ---------------------------------------------------------------- synthetic weights

def init_sigma(mu: np.ndarray) -> np.ndarray:
    """docs/method.md, section 2: r = (t-1)(2-t)/t^2 for |mu| = t 2^k, sigma0 = clip(0.0025 r / q75(r),
    2^-30, 0.05) (``SIGMA_INIT_SCALE``, ``SAMPLING_SIGMA_FLOOR``, ``SIGMA_CAP``), in numpy; exact
    zeros get r = 0 (the floor)."""
    a = np.abs(mu.astype(np.float64))
    r = np.zeros_like(a)
    nz = a > 0
    t = a[nz] / np.exp2(np.floor(np.log2(a[nz])))
    r[nz] = (t - 1.0) * (2.0 - t) / t ** 2
    q75 = np.quantile(r, 0.75)
    scale = SIGMA_INIT_SCALE / q75 if q75 > 0 else 1.0
    return np.clip(r * scale, SAMPLING_SIGMA_FLOOR, SIGMA_CAP)


def synthetic_weights(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 mu, sigma like a trained CNN's: ~40 layers of very different sizes and scales,
    a spike of exact zeros, heavy (Student-t) tails, sigma from the paper's init formula."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(40, 0.7)) * n
    sizes = np.maximum(1, np.floor(sizes)).astype(np.int64)
    sizes[-1] += n - sizes.sum()
    if sizes[-1] < 1:  # tiny n: fall back to one layer
        sizes = np.array([n])
    mus, sigmas = [], []
    for size in sizes:
        scale = math.exp(rng.uniform(math.log(0.004), math.log(0.15)))
        layer = rng.normal(0.0, scale, size)
        tail = rng.random(size) < 0.08
        layer[tail] = rng.standard_t(3, tail.sum()) * scale * 1.5
        layer[rng.random(size) < 0.03] = 0.0
        layer = layer.astype(np.float32)
        mus.append(layer)
        sigmas.append(init_sigma(layer).astype(np.float32))
    return torch.from_numpy(np.concatenate(mus)), torch.from_numpy(np.concatenate(sigmas))


# ---------------------------------------------------------------- worker (one subprocess each)

def _implementation(name: str):
    if name == "project":
        from pwfn_viz.core.clustering import cluster_round
        return lambda mu, sigma, f, r: cluster_round(mu, sigma, f, round_index=r)
    from pwfn_viz.core.clustering_readable import readable_cluster_round
    return lambda mu, sigma, f, r: readable_cluster_round(mu, sigma, f, round_index=r)


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def _hwm_kib() -> int:
    """Peak resident set size since the last reset through /proc/self/clear_refs (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def _fingerprint(res) -> str:
    """Hash of what a round decided: fixed mask, each weight's centre value, the new mu."""
    assign = res.assignment.cpu().numpy()
    centres = torch.as_tensor(res.centres, dtype=torch.float64).cpu().numpy()
    value = np.full(assign.shape, np.nan)
    value[assign >= 0] = centres[assign[assign >= 0]]
    h = hashlib.sha1(res.fixed_mask.cpu().numpy().astype(np.uint8).tobytes())
    h.update(value.tobytes())
    h.update(res.mu.cpu().numpy().tobytes())
    return h.hexdigest()


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))


def worker(impl: str, n: int, device: str, seed: int, mem_limit_gb: float) -> None:
    """Run the schedule, printing one JSON line per finished round (read by the parent).
    With ``mem_limit_gb`` (CPU only) the process may allocate at most that much more address
    space; a round that needs more stops the run with a "stopped" line instead of swapping or
    taking the machine's memory from everyone else."""
    run = _implementation(impl)
    dev = torch.device(device)
    warm_mu, warm_sigma = synthetic_weights(2000, seed + 1)
    run(warm_mu.to(dev), warm_sigma.to(dev), 1.0, 0)  # load kernels, lazy imports
    if mem_limit_gb > 0 and dev.type == "cpu":
        limit = _vm_size() + int(mem_limit_gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    mu, sigma = (t.to(dev) for t in synthetic_weights(n, seed))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    base_cuda = torch.cuda.memory_allocated() if dev.type == "cuda" else 0
    for r, fraction in enumerate(SCHEDULE):
        before_round = _rss_kib()
        if dev.type == "cpu":   # reset the peak RSS (VmHWM), so the peak below is this round's
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        t0 = time.perf_counter()
        try:
            res = run(mu, sigma, fraction, r)
        except (MemoryError, RuntimeError) as err:  # torch reports a failed allocation as RuntimeError
            print(json.dumps({"stopped": f"round {r + 1}: {type(err).__name__}: {str(err)[:120]}"}),
                  flush=True)
            return
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        # extra memory of this round: its peak above what was held when it started (inputs included
        # in neither); the report takes the largest over the rounds
        peak = (torch.cuda.max_memory_allocated() - base_cuda if dev.type == "cuda"
                else (_hwm_kib() - before_round) * 1024)
        print(json.dumps({"round": r, "seconds": seconds, "peak_bytes": peak, "steps": len(res.steps),
                          "fingerprint": _fingerprint(res)}), flush=True)
        mu, sigma = res.mu.to(dev), res.sigma.to(dev)  # the next round starts from this one


class WorkerFailed(RuntimeError):
    """A worker exited with an error; ``rounds`` holds the rounds it finished before."""

    def __init__(self, message: str, rounds: list[dict]):
        super().__init__(message)
        self.rounds = rounds


def run_worker(impl: str, n: int, device: str, seed: int, budget: float | None,
               mem_limit_gb: float = 0.0, live_memory: bool = False,
               backend: str | None = None) -> tuple[list[dict], str]:
    """Start a worker; collect its per-round lines; kill it once ``budget`` seconds have passed.
    Returns the finished rounds and why it stopped early ("" if it ran the whole schedule); raises
    :class:`WorkerFailed` (with the last line it wrote to stderr) if it crashed.
    ``backend`` sets PWFN_BACKEND (torch or triton) for the worker."""
    cmd = [sys.executable, "-m", "benchmarks.bench_clustering", "--worker", impl,
           "--n", str(n), "--device", device, "--seed", str(seed), "--mem-limit-gb", str(mem_limit_gb)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if backend:
        env["PWFN_BACKEND"] = backend
    if live_memory:
        # Large blocks through mmap, returned on free: the RSS then follows live memory instead of
        # what glibc's heap keeps after a free (which would hide or inflate a round's own peak).
        # It slows allocation down, so times come from a separate run without it.
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    err: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    deadline = None if budget is None else time.monotonic() + budget
    rounds, why = [], ""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()  # our own child, by its handle
            why = f"stopped at its time budget of {budget:.0f} s"
            break
        if line is None:
            break
        if not line.startswith("{"):   # a library's own print, not one of the worker's records
            continue
        record = json.loads(line)
        if "stopped" in record:
            why = f"stopped, {record['stopped']} (memory limit {mem_limit_gb:.1f} GiB)"
        else:
            rounds.append(record)
    proc.wait()
    if proc.returncode != 0 and not why:
        last = [x.strip() for x in err if x.strip()]
        raise WorkerFailed(f"{impl} worker failed (exit {proc.returncode}): "
                           f"{last[-1][:160] if last else 'no message'}", rounds)
    return rounds, why


# ---------------------------------------------------------------- report

def compare(n: int, device: str, seed: int, dense_budget: float, dense_mem_gb: float) -> dict:
    project, why = run_worker("project", n, device, seed, budget=None)
    if why:
        raise RuntimeError(f"the project implementation {why}")
    if device == "cpu":  # the project's memory from a second run that measures live memory
        memory, _ = run_worker("project", n, device, seed, budget=None, live_memory=True)
        for timed, measured in zip(project, memory):
            timed["peak_bytes"] = measured["peak_bytes"]
    dense, why = run_worker("dense", n, device, seed, budget=dense_budget, mem_limit_gb=dense_mem_gb)
    k = len(dense)
    t_proj_k = sum(r["seconds"] for r in project[:k])
    t_dense = sum(r["seconds"] for r in dense)
    return {
        "n": n, "rounds_dense": k, "dense_stopped": why,
        "t_project_all": sum(r["seconds"] for r in project),
        "t_project": t_proj_k, "t_dense": t_dense,
        "ratio": t_dense / t_proj_k if k and t_proj_k > 0 else float("nan"),
        "mem_project": max((r["peak_bytes"] for r in project[:k]), default=float("nan")),
        "mem_project_all": max(r["peak_bytes"] for r in project),
        "mem_dense": max((r["peak_bytes"] for r in dense), default=float("nan")),
        "identical": k > 0 and all(p["fingerprint"] == d["fingerprint"] for p, d in zip(project, dense)),
        "per_round": [(p["seconds"], d["seconds"] if i < k else None, p["steps"])
                      for i, (p, d) in enumerate(zip(project, dense + [None] * (10 - k)))],
    }


def print_report(rows: list[dict], device: str) -> None:
    mib = 2 ** 20
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    mem_kind = "peak CUDA allocated" if device == "cuda" else "peak RSS growth (project: live memory, separate run)"
    print(f"\nclustering round benchmark, device: {name}; memory = {mem_kind}; schedule {SCHEDULE}")
    header = (f"{'N':>10} | {'rounds':>6} | {'project s':>9} | {'dense s':>9} | {'ratio':>7} | "
              f"{'project MiB (B/w)':>18} | {'dense MiB (B/w)':>18} | identical")
    print(header + "\n" + "-" * len(header))
    for r in rows:
        n = r["n"]
        print(f"{n:>10} | {r['rounds_dense']:>3}/10 | {r['t_project']:>9.2f} | {r['t_dense']:>9.2f} | "
              f"{r['ratio']:>6.1f}x | {r['mem_project'] / mib:>8.1f} ({r['mem_project'] / n:>6.1f}) | "
              f"{r['mem_dense'] / mib:>8.1f} ({r['mem_dense'] / n:>6.1f}) | "
              f"{'yes' if r['identical'] else 'NO'}")
    for r in rows:
        if r["rounds_dense"] < len(SCHEDULE):
            print(f"N={r['n']}: the dense baseline {r['dense_stopped']}; it completed only "
                  f"rounds 1..{r['rounds_dense']} of 10, and the times, ratio, memory and identity "
                  f"check cover those rounds only (project, all ten rounds: "
                  f"{r['t_project_all']:.2f} s, {r['mem_project_all'] / 2**20:.1f} MiB).")
    for r in rows:
        per = "  ".join(f"{p:.2f}/{'-' if d is None else f'{d:.1f}'}({s})" for p, d, s in r["per_round"])
        print(f"N={r['n']} per round, project s / dense s (steps): {per}")


def bench_outliers(magnitudes=(1e10, 1e30), n: int = 3) -> list[dict]:
    """One round (fraction 1) of ``n`` weights, one of them an absurd outlier, in both the fast and the
    readable implementation: the candidate set is bounded (constants.MAX_CENTRE_EXPONENT) and
    passes that fit nothing are skipped, so each takes well under a second."""
    from pwfn_viz.core.clustering import cluster_round
    from pwfn_viz.core.clustering_readable import readable_cluster_round
    rows = []
    for big in magnitudes:
        mu = torch.tensor([big] + [0.3 * (-1) ** i / (i + 1) for i in range(n - 1)])
        sigma = torch.full((n,), 0.01)
        for name, fn in (("fast", cluster_round), ("readable", readable_cluster_round)):
            start = time.perf_counter()
            res = fn(mu, sigma, 1.0)
            rows.append(dict(magnitude=big, implementation=name, seconds=time.perf_counter() - start,
                             steps=len(res.steps), passes=int(res.steps["pass_index"].max()) + 1))
    for r in rows:
        print(f"outlier {r['magnitude']:.0e}  {r['implementation']:<8}  {r['seconds']:.3f} s  "
              f"{r['steps']} greedy steps over {r['passes']} passes")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outliers", action="store_true",
                    help="only time one round with a 1e10 and a 1e30 weight (bounded candidate set)")
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="N = 5000 only, dense budget 60 s")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dense-budget", type=float, default=600.0,
                    help="seconds the dense baseline may run per N before it is stopped")
    ap.add_argument("--dense-mem-gb", type=float, default=None,
                    help="CPU only: address space the dense baseline may add (default: 70%% of "
                         "MemAvailable, at most 16); a round needing more stops it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-limit-gb", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["project", "dense"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.outliers:
        bench_outliers()
        return None
    if args.worker:
        return worker(args.worker, args.n[0], args.device, args.seed, args.mem_limit_gb)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    ns, budget = ([5_000], min(args.dense_budget, 60.0)) if args.quick else (args.n, args.dense_budget)
    mem_gb = args.dense_mem_gb
    if mem_gb is None:
        mem_gb = min(16.0, 0.7 * _mem_available() / 2 ** 30) if args.device == "cpu" else 0.0
    rows = [compare(n, args.device, args.seed, budget, mem_gb) for n in ns]
    print_report(rows, args.device)


if __name__ == "__main__":
    main()
