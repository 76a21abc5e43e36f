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
    python -m benchmarks.bench_clustering --one-thread    # CPU, one thread: N = 100k, 200k, 1M, 10M

``--one-thread`` times ``cluster_round`` on one CPU thread per round and per greedy step, in this
process, against the torch path (what CUDA tensors take, and what CPU tensors took before their
round moved to numpy, :mod:`pwfn_viz.core.clustering_cpu`), the two run alternately on the same
inputs and checked to agree bit for bit; above ``--before-max-n`` weights only ``cluster_round`` runs.

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
    name = (torch.cuda.get_device_name() if device == "cuda" else
            f"CPU, project on 1 thread (cluster_round's default), dense on {torch.get_num_threads()} threads")
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


# ---------------------------------------------------------------- one thread: old and new, per greedy step

def _schedule(round_fn, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[list[float], float, list]:
    """The ten rounds, each fed the last one's output: wall seconds per round, the process's CPU
    seconds for the whole schedule (on a loaded machine, what the wall time would be on an idle
    one, roughly) and the results."""
    seconds, results = [], []
    cpu_start = time.process_time()
    for r, fraction in enumerate(SCHEDULE):
        start = time.perf_counter()
        res = round_fn(mu, sigma, fraction, round_index=r)
        seconds.append(time.perf_counter() - start)
        results.append(res)
        mu, sigma = res.mu, res.sigma
    return seconds, time.process_time() - cpu_start, results


def _same_round(a, b) -> bool:
    """Bit for bit (floats by their bit patterns: -0.0 is not 0.0): mu, sigma, fixed mask,
    assignment, centres and every column of the step table, dtypes included."""
    def bits(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            return t
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])

    def same_column(x: np.ndarray, y: np.ndarray) -> bool:
        return x.dtype == y.dtype and np.array_equal(x.view(f"u{x.itemsize}") if x.dtype.kind == "f" else x,
                                                     y.view(f"u{y.itemsize}") if y.dtype.kind == "f" else y)

    return (all(getattr(a, f).dtype == getattr(b, f).dtype and torch.equal(bits(getattr(a, f)), bits(getattr(b, f)))
                for f in ("mu", "sigma", "fixed_mask", "assignment", "centres"))
            and list(a.steps.columns) == list(b.steps.columns) and len(a.steps) == len(b.steps)
            and all(same_column(a.steps[c].to_numpy(), b.steps[c].to_numpy()) for c in a.steps.columns))


def one_thread(ns: list[int], repeats: int, before_max_n: int, seed: int = 0) -> list[dict]:
    """For each N: the schedule on one thread, best of ``repeats`` runs (one run above 1M
    weights), for ``cluster_round`` and, up to ``before_max_n`` weights, the torch path ("before":
    the CPU round before numpy; run alternately, so that both see the same machine load)."""
    from pwfn_viz import kernels
    from pwfn_viz.core import clustering
    torch.set_num_threads(1)   # the torch path follows torch's setting; cluster_round uses 1 thread by default

    def torch_path(mu, sigma, fraction, *, config=None, round_index=0):
        with kernels.use_backend("torch"):
            return clustering._device_round(mu.detach(), sigma.detach(), clustering.target_count(fraction, mu.numel()),
                                            config or clustering.ClusterConfig(), round_index, None)
    implementations = {"current": clustering.cluster_round, "before": torch_path}
    warm_mu, warm_sigma = synthetic_weights(2000, seed + 1)
    for fn in implementations.values():
        _schedule(fn, warm_mu, warm_sigma)
    rows = []
    for n in ns:
        mu, sigma = synthetic_weights(n, seed)
        names = [name for name in implementations if name == "current" or n <= before_max_n]
        best: dict[str, list[float]] = {}
        best_cpu: dict[str, float] = {}
        first_results: dict[str, list] = {}
        load_before = os.getloadavg()[0]
        for _ in range(repeats if n <= 1_000_000 else 1):
            for name in names:
                seconds, cpu_seconds, results = _schedule(implementations[name], mu, sigma)
                first_results.setdefault(name, results)
                if name not in best or sum(seconds) < sum(best[name]):
                    best[name] = seconds
                best_cpu[name] = min(best_cpu.get(name, math.inf), cpu_seconds)
                del results
        load_after = os.getloadavg()[0]
        n_steps = sum(len(res.steps) for res in first_results["current"])
        identical = (all(_same_round(a, b) for a, b in zip(first_results["current"], first_results["before"]))
                     if "before" in first_results else None)
        for name in names:
            total = sum(best[name])
            rows.append(dict(n=n, implementation=name, seconds=total, cpu_seconds=best_cpu[name],
                             per_round=best[name], steps=n_steps, ms_per_step=1e3 * total / n_steps,
                             identical=identical, load=(load_before, load_after)))
        del first_results
    return rows


def print_one_thread(rows: list[dict]) -> None:
    print(f"\nclustering schedule {SCHEDULE} on one CPU thread ({os.cpu_count()} cores, torch {torch.__version__}); "
          "best of the runs; 'ms / step': the schedule's seconds over its greedy steps; 'CPU s': the process's "
          "CPU time for the schedule")
    header = (f"{'N':>10} | {'implementation':<14} | {'schedule s':>10} | {'CPU s':>7} | {'s / round':>9} | "
              f"{'steps':>5} | {'ms / step':>9} | {'before / current':>16} | bitwise equal | load average")
    print(header + "\n" + "-" * len(header))
    current = {r["n"]: r["seconds"] for r in rows if r["implementation"] == "current"}
    for r in rows:
        ratio = "" if r["implementation"] == "current" else f"{r['seconds'] / current[r['n']]:.1f}x"
        same = "-" if r["identical"] is None else ("yes" if r["identical"] else "NO")
        print(f"{r['n']:>10} | {r['implementation']:<14} | {r['seconds']:>10.3f} | {r['cpu_seconds']:>7.3f} | "
              f"{r['seconds'] / 10:>9.3f} | "
              f"{r['steps']:>5} | {r['ms_per_step']:>9.3f} | {ratio:>16} | {same:<13} | "
              f"{r['load'][0]:.2f} -> {r['load'][1]:.2f}")
    for r in rows:
        print(f"N={r['n']} {r['implementation']}, s per round: " + " ".join(f"{x:.3f}" for x in r["per_round"]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outliers", action="store_true",
                    help="only time one round with a 1e10 and a 1e30 weight (bounded candidate set)")
    ap.add_argument("--n", type=int, nargs="+", default=None,
                    help="sizes (default: 100k and 1M; with --one-thread 100k, 200k, 1M and 10M)")
    ap.add_argument("--one-thread", action="store_true",
                    help="CPU, one thread: seconds per round and per greedy step, current code against the code before")
    ap.add_argument("--repeats", type=int, default=3, help="--one-thread: best of this many runs (one above 1M)")
    ap.add_argument("--before-max-n", type=int, default=1_000_000,
                    help="--one-thread: run the code before only up to this N (it is slow at 10M)")
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
    if args.one_thread:
        print_one_thread(one_thread(args.n or [100_000, 200_000, 1_000_000, 10_000_000], args.repeats,
                                    args.before_max_n, args.seed))
        return None
    args.n = args.n or [100_000, 1_000_000]
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
