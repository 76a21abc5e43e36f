"""Accuracy against entropy: does learned sigma buy anything? An ablation over budgets and seeds.

For every seed and every PWFN budget (a cap on the powers of two summed in a shared value, and for
the smallest budget a wider zero band 2^-5, which set how few values the network ends with) it runs, from the same pre-trained network:

* ``pwfn``: PWFN with learned sigma (the configuration given, e.g. the demo preset);
* ``pwfn-frozen``: the same schedule and training budget with sigma frozen at its initial value
  (``sigma_lr_mult = 0``): the clustering then sees the initialisation formula only;
* ``kmeans@unique+ft`` / ``kmeans@entropy+ft``: value-only whole-network k-means at the learned
  run's unique count / entropy, fine-tuned for as many steps as PWFN trained (:func:`compare`);

and, once per seed and bit width, coremltools palettization of the same pre-trained network
(``ptq``: post-training, ``dkm``: differentiable k-means trained for ``dkm_steps``), when
coremltools is installed. Every row is measured the same way: test top-1, and unique values and
entropy (bits, zero included) over all converted weights and biases of the network.

Rows are appended to ``frontier.csv`` in ``out_dir`` as they finish (atomic rewrite), and rows
already there are skipped, so an interrupted ablation continues where it stopped.

Example:
    >>> table = run_frontier("results/frontier", FrontierConfig(seeds=(0, 1)))   # doctest: +SKIP
    >>> summarise(table)                                                        # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..core.metrics import codebook_stats, evaluate
from ..data.datasets import create_dataset, make_loader
from ..files import reading
from ..record.storage import atomic_write_text
from ..train.config import RunConfig
from ..train.loop import run as run_pwfn
from .compare import compare
from .palettize import coremltools_available, palettize_dkm, palettize_post_training, palettized_weights

COLUMNS = ["method", "budget", "seed", "top1", "unique", "entropy", "sigma_rank_corr", "sigma_median_change", "seconds"]


@dataclass
class FrontierConfig:
    """What the ablation runs. ``base`` is the PWFN configuration (a ``RunConfig`` as a dict of
    overrides of the demo preset); ``budgets`` maps a budget name to cluster overrides."""
    base: dict = field(default_factory=dict)
    seeds: tuple = (0, 1, 2)
    budgets: dict = field(default_factory=lambda: {"P4": {"max_powers": 4}, "P2": {"max_powers": 2},
                                                   "P1": {"max_powers": 1},
                                                   "P1-b5": {"max_powers": 1, "b": 5}})
    bits: tuple = (2, 3, 4)                 # coremltools look-up table sizes, 2 ** bits values per tensor
    dkm_steps: int = 120
    frozen: bool = True                     # also run the frozen-sigma ablation
    kmeans: bool = True                     # also run fine-tuned k-means at each learned run's budget

    def run_config(self, budget: str, seed: int, frozen: bool) -> RunConfig:
        cfg = RunConfig.from_preset("digits-demo", **{**self.base, "seed": seed})
        cluster = {**dataclasses.asdict(cfg.cluster), **self.budgets[budget]}
        return dataclasses.replace(cfg, cluster=type(cfg.cluster)(**cluster),
                                   **({"sigma_lr_mult": 0.0} if frozen else {}))


def _row(method: str, budget: str, seed: int, top1: float, unique: int, entropy: float, seconds: float,
         learning: dict | None = None) -> dict:
    learning = learning or {}
    return {"method": method, "budget": budget, "seed": seed, "top1": top1, "unique": int(unique),
            "entropy": float(entropy), "sigma_rank_corr": learning.get("sigma_rank_corr", math.nan),
            "sigma_median_change": learning.get("sigma_median_change", math.nan), "seconds": round(seconds, 1)}


class _Table:
    """The rows so far, saved atomically after each addition; ``has`` tells what is done."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = []
        if path.exists():
            with reading(path, "frontier table (CSV)"):
                self.rows = pd.read_csv(path).to_dict("records")

    def has(self, method: str, budget: str, seed: int) -> bool:
        return any((r["method"], str(r["budget"]), int(r["seed"])) == (method, budget, seed) for r in self.rows)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        atomic_write_text(self.path, self.frame().to_csv(index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)


def _pwfn(config: FrontierConfig, budget: str, seed: int, frozen: bool, out: Path):
    """The PWFN run of one (budget, seed), continued when interrupted, reused when complete."""
    run_dir = out / "runs" / f"{'pwfn-frozen' if frozen else 'pwfn'}-{budget}-seed{seed}"
    started = (run_dir / "run.json").exists()
    return run_pwfn(config.run_config(budget, seed, frozen), None if started else run_dir,
                    resume=run_dir if started else None, progress=False, verbose=False)


def run_frontier(out_dir, config: FrontierConfig | None = None, *, progress: bool = True) -> pd.DataFrame:
    """Run (or continue) the ablation into ``out_dir``; returns the table (one row per result)."""
    config = config or FrontierConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _Table(out / "frontier.csv")
    palettize = config.bits and coremltools_available()
    bar = tqdm(total=len(config.seeds) * (len(config.budgets) + bool(palettize)), desc="frontier",
               disable=not progress)
    for seed in config.seeds:
        learned = None
        for budget in config.budgets:
            for frozen in (False, True) if config.frozen else (False,):
                method = "pwfn-frozen" if frozen else "pwfn"
                kmeans_done = not config.kmeans or table.has("kmeans@entropy+ft", budget, seed)
                if table.has(method, budget, seed) and (frozen or kmeans_done):
                    continue
                t0 = time.time()
                run = _pwfn(config, budget, seed, frozen, out)
                if not frozen:
                    learned = run
                if not table.has(method, budget, seed):
                    final = run.meta["rounds"][-1]
                    last_told = [m for m in run.meta["rounds"] if m.get("sigma_learned") is not None]
                    table.add(_row(method, budget, seed, final["top1_after"], final["unique"], final["entropy"],
                                   time.time() - t0, last_told[-1] if last_told else None))
            if config.kmeans and not table.has("kmeans@entropy+ft", budget, seed):
                t0 = time.time()
                learned = learned or _pwfn(config, budget, seed, False, out)
                result = compare(learned, seed=seed).table
                for _, r in result[result["method"].str.endswith("+ft")].iterrows():
                    table.add(_row(r["method"], budget, seed, r["top1"], r["unique"], r["entropy"], time.time() - t0))
            bar.update()
        if palettize:
            learned = learned or _pwfn(config, next(iter(config.budgets)), seed, False, out)
            _palettize_rows(learned, config, seed, table)
            bar.update()
    bar.close()
    return table.frame()


def _palettize_rows(run, config: FrontierConfig, seed: int, table: _Table) -> None:
    """coremltools on the network PWFN started from (the same pre-trained weights)."""
    cfg = run.config
    data = create_dataset(cfg["dataset"], root=cfg["data_root"], image_size=cfg["image_size"],
                          in_chans=cfg["in_chans"], seed=cfg["seed"])
    test_loader = make_loader(data.test, batch_size=max(256, cfg["batch_size"]))
    train_loader = make_loader(data.train, cfg["batch_size"], shuffle=True, seed=seed)
    for bits in config.bits:
        for method in ("ptq", "dkm"):
            if table.has(method, f"{bits}bit", seed):
                continue
            t0 = time.time()
            start = run.plain_model_at(None)
            model = palettize_post_training(start, bits) if method == "ptq" else \
                palettize_dkm(start, bits, train_loader, config.dkm_steps, lr=cfg["lr"], seed=seed)
            stats = codebook_stats(torch.cat([w.flatten() for w in palettized_weights(model).values()]))
            table.add(_row(method, f"{bits}bit", seed, evaluate(model, test_loader)["top1"], stats["unique"],
                           stats["entropy"], time.time() - t0))


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of top-1 and entropy per (method, budget), with a
    column ``on_front``: no other (method, budget) has both lower mean entropy and higher mean top-1."""
    g = table.groupby(["method", "budget"], sort=False)
    out = g.agg(top1=("top1", "mean"), top1_std=("top1", "std"), entropy=("entropy", "mean"),
                entropy_std=("entropy", "std"), unique=("unique", "mean"), seeds=("seed", "nunique")).reset_index()
    out["on_front"] = [not ((out["entropy"] <= e) & (out["top1"] >= a) & ((out["entropy"] < e) | (out["top1"] > a))).any()
                       for e, a in zip(out["entropy"], out["top1"])]
    return out
