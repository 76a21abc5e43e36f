"""What the :class:`~pwfn_viz.train.fixer.Fixer` writes and prints for a round: the round's files
(tensors, rows of steps.csv and layers.csv, then run.json, the commit point), the log line, and
how a metric's value and direction are read.

    >>> format_round({"round": 3, "fraction": 0.8, "top1_before": 98.5, "top1_after": 98.25, "unique": 40,
    ...               "unique_nonzero": 39, "entropy": 3.5, "entropy_nonzero": 3.4})
    'round  3 | fixed  80.0% | top-1  98.50 ->  98.25 | unique   40 (  39 w/o 0) | entropy 3.50 bits (3.40 w/o 0)'
"""
from __future__ import annotations

import datetime
import numbers
import platform
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..core.metrics import layer_table
from ..record import strict_json
from ..record.rundir import metric_label, round_file
from ..record.storage import atomic_append_csv, atomic_save_tensors, atomic_write_text, snapshot_tensors

# Metric names whose lower values are better (any other name is taken as higher-is-better only
# when it looks like an accuracy; otherwise Fixer asks for higher_is_better).
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "nll", "perplexity", "ppl", "error", "err", "ece", "wer", "cer")
HIGHER_IS_BETTER = ("top1", "top5", "acc", "accuracy", "f1", "auc", "r2", "psnr", "bleu", "iou", "map")
# RunConfig fields that say where and how fast a run computes, not what it computes: a resume may
# change them (another machine, the same data at another path); the record keeps the original's.
RUNTIME_FIELDS = ("device", "threads", "data_root")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("pwfn_viz", "torch", "timm", "numpy", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def number_text(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"


def format_round(m: dict, primary: str = "top1") -> str:
    """The first log line of a round: fraction fixed, the primary metric before -> after, codebook."""
    before, after = m[f"{primary}_before"], m[f"{primary}_after"]
    width = 6 if primary in ("top1", "top5") else 0
    return (f"round {m['round']:2d} | fixed {m['fraction']:6.1%} | {metric_label(primary)} "
            f"{number_text(before):>{width}} -> {number_text(after):>{width}} | unique {m['unique']:4d} "
            f"({m['unique_nonzero']:4d} w/o 0) | entropy {m['entropy']:.2f} bits ({m['entropy_nonzero']:.2f} w/o 0)")


class RunLog:
    """Prints a line and appends it to the run's log.txt."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo

    def __call__(self, line: str):
        if self.echo:
            tqdm.write(line)
        with open(self.path, "a") as f:
            f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {line}\n")


def write_round(out: Path, r: int, model: nn.Module, pre: dict, steps: pd.DataFrame, learning: pd.DataFrame,
                 meta: dict) -> None:
    """Round ``r``'s record: its tensors, then its rows of steps.csv and layers.csv (the layer
    table with the per-layer sigma diagnostic ``learning``), then run.json last (the commit point
    for resuming: a round is recorded once run.json lists it), with the sha256 of each file."""
    sums = meta.setdefault("checksums", {})
    sums[round_file(r)] = atomic_save_tensors(out / round_file(r), snapshot_tensors(model, pre))
    sums["steps.csv"] = atomic_append_csv(out / "steps.csv", steps)
    per_layer = learning[learning["layer"] != "all"].rename(columns={"layer": "name"})
    sums["layers.csv"] = atomic_append_csv(out / "layers.csv", layer_table(model).merge(per_layer, on="name", how="left")
                                           .assign(round=r))
    atomic_write_text(out / "run.json", strict_json.dumps(meta, indent=1))


def guess_higher_is_better(primary: str) -> bool:
    name = primary.lower()
    if name in LOWER_IS_BETTER or name.endswith(("loss", "error", "mse", "mae")):
        return False
    if name in HIGHER_IS_BETTER or "acc" in name or name.startswith("top"):
        return True
    raise ValueError(f"is a higher {primary!r} better? Pass higher_is_better=True or False to Fixer")



def as_number(value, name: str) -> float:
    """A plain Python number from a metric value (int, float, numpy or 0-d tensor)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"metric {name!r} is {type(value).__name__} {value!r:.60}; evaluate must return numbers "
                         "(int, float, or a one-element tensor)")
    return value if type(value) in (int, float) else float(value)
