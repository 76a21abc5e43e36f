"""Benchmark: export sizes (the size table) and entropy-decoding speed, side by side in one run.

1. The main job (``pwfn-viz run --preset digits-demo``; made in a temporary folder unless ``--run``
   names a finished run): the size table of ``pwfn-viz export``, and the whole-network frequency
   table against per-tensor tables (the choice the format makes).
2. A synthetic network of 1.2M weights on 300 shared values with skewed (Zipf-like) frequencies:
   the size table.
3. Loading speed: a synthetic 11.7M-weight stream (ResNet-18's converted tensors' shapes, ~300
   values, skewed) decoded to float32 tensors, entropy-coded against fixed-width bit-packed.

    python -m benchmarks.bench_export                    # a few minutes on a 2-core CPU
    python -m benchmarks.bench_export --run runs/digits  # an existing run instead of a new main job
    python -m benchmarks.bench_export --quick            # no main job, smaller streams

Targets: the entropy-coded index payload (table + stream) within 2 % of N * H / 8 on the main job
and at 1M+ weights; an 11.7M-weight model decoded in under a second on a CPU.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_kmeans import timed
from pwfn_viz.analysis import export_entropy as ans
from pwfn_viz.analysis.export import (bits_for, codebook_indices, decode_tensors, decode_tensors_ans,
                                      encode_tensors, encode_tensors_ans)
from pwfn_viz.analysis.export_sizes import format_size_table, size_table

RESNET18_SHAPES = [(64, 3, 7, 7)] + [(64, 64, 3, 3)] * 4 + [(128, 64, 3, 3), (128, 128, 3, 3), (128, 64, 1, 1),
                                                              (128, 128, 3, 3), (128, 128, 3, 3)] \
    + [(256, 128, 3, 3), (256, 256, 3, 3), (256, 128, 1, 1), (256, 256, 3, 3), (256, 256, 3, 3)] \
    + [(512, 256, 3, 3), (512, 512, 3, 3), (512, 256, 1, 1), (512, 512, 3, 3), (512, 512, 3, 3), (1000, 512), (1000,)]


def synthetic_weights(shapes, k: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes whose values are k shared float32 values, drawn with Zipf-like
    frequencies (p_i proportional to 1 / (i + 1)**1.2), the frequent values near zero as in a
    trained network."""
    rng = np.random.default_rng(seed)
    values = np.sort(rng.normal(0, 0.05, k)).astype(np.float32)
    by_size = values[np.argsort(np.abs(values))]                  # most frequent: smallest magnitude
    p = 1.0 / np.arange(1, k + 1) ** 1.2
    out = {}
    for i, shape in enumerate(shapes):
        n = int(np.prod(shape))
        out[f"t{i}"] = torch.from_numpy(by_size[rng.choice(k, size=n, p=p / p.sum())].reshape(shape))
    return out


def payload_line(weights) -> str:
    _, indices = codebook_indices(weights)
    k = int(indices.max()) + 1
    table, stream = ans.encode_indices(indices.numpy(), k)
    bound = ans.entropy_bound_bytes(np.bincount(indices.numpy(), minlength=k))
    total = len(table) + len(stream)
    return (f"entropy-coded index payload {total:,} bytes (table {len(table):,} + stream {len(stream):,}) "
            f"vs bound N*H/8 = {bound:,.0f}: {total / bound - 1:+.2%} (target <= +2 %)")


def per_tensor_line(weights) -> str:
    """The payload had each tensor its own table (plus which indices it uses) and stream."""
    _, indices = codebook_indices(weights)
    idx, k, offset, total, bound = indices.numpy(), int(indices.max()) + 1, 0, 0, 0.0
    for w in weights.values():
        part = idx[offset:offset + w.numel()]
        offset += w.numel()
        counts = np.bincount(part, minlength=k)
        used = np.flatnonzero(counts)
        table, stream = ans.encode_indices(np.searchsorted(used, part), used.size)
        total += len(ans.encode_table(np.diff(np.concatenate([[-1], used])) - 1)) + len(table) + len(stream)
        bound += ans.entropy_bound_bytes(counts)
    whole = ans.entropy_bound_bytes(np.bincount(idx, minlength=k))
    t, s = ans.encode_indices(idx, k)
    return (f"whole-network table: {len(t) + len(s):,} bytes ({(len(t) + len(s)) / whole - 1:+.2%} vs bound); "
            f"per-tensor tables: {total:,} bytes ({total / whole - 1:+.2%}; their own bound {bound:,.0f})")


def decode_speed(weights) -> None:
    n = sum(w.numel() for w in weights.values())
    shapes = {name: list(w.shape) for name, w in weights.items()}
    codebook, table, stream = encode_tensors_ans(weights)
    t_ans, out = timed(lambda: decode_tensors_ans(codebook, table, stream, shapes), repeat=3)
    assert all(torch.equal(out[k].view(torch.int32), w.view(torch.int32)) for k, w in weights.items())
    _, packed, bits = encode_tensors(weights)
    t_fix, _ = timed(lambda: decode_tensors(codebook, packed, shapes, bits), repeat=1)
    size = len(table) + len(stream)
    print(f"decode of {n:,} weights ({codebook.numel()} values, {size:,} bytes coded, "
          f"{8 * size / n:.3f} bits per weight; fixed width {bits_for(codebook.numel())} bits):")
    for label, t, coded in (("entropy-coded (ANS)", t_ans, size),
                            ("fixed-width bit-packed", t_fix, sum(p.numel() for p in packed.values()))):
        print(f"  {label:<24} {t:6.3f} s   {n / t / 1e6:6.1f} M weights/s   {4 * n / t / 1e6:7.1f} MB/s of float32 out"
              f"   {coded / t / 1e6:6.1f} MB/s coded in")
    print(f"  target: an 11.7M-weight model in under 1 s: {'met' if t_ans < 1 else 'NOT met'} ({t_ans:.3f} s)")


def main_job(run_dir: str | None) -> dict:
    from pwfn_viz.record.rundir import load_run
    if run_dir is None:
        run_dir = str(Path(tempfile.mkdtemp(prefix="bench-export-")) / "main")
        print(f"making the main job in {run_dir} (pwfn-viz run --preset digits-demo) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pwfn_viz", "run", "--preset", "digits-demo", "--out", run_dir,
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
    return load_run(run_dir).rounds[-1].mu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a finished run to measure instead of a new main job")
    parser.add_argument("--quick", action="store_true", help="no main job (unless --run), 300k and 2M weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    machine = platform.processor() or platform.machine()
    print(f"python {platform.python_version()}, torch {torch.__version__}, {machine}, one torch thread")
    if args.run or not args.quick:
        weights = main_job(args.run)
        print("\n## main job")
        print(format_size_table(size_table(weights)))
        print(payload_line(weights))
        print(per_tensor_line(weights))
    n_synth = 300_000 if args.quick else 1_200_000
    weights = synthetic_weights([(n_synth // 1000, 1000)], seed=1)
    print(f"\n## synthetic, {n_synth:,} weights on 300 values (Zipf-like)")
    print(format_size_table(size_table(weights)))
    print(payload_line(weights))
    shapes = RESNET18_SHAPES if not args.quick else [(2000, 1000)]
    print("\n## loading speed" + (" (quick: 2M weights)" if args.quick else " (ResNet-18's shapes)"))
    decode_speed(synthetic_weights(shapes, seed=2))


if __name__ == "__main__":
    main()
