"""Paper-quality plots over run records. Each function takes a :class:`~pwfn_viz.record.Run` (or
its table) and an optional ``ax``, draws, and returns the Figure, so it can be composed into a
multi-panel figure and saved as PDF/SVG/PNG.

    >>> fig = plot_timeline(pwfn_viz.load_run("runs/x"))     # doctest: +SKIP
    >>> fig.savefig("timeline.pdf")                          # doctest: +SKIP
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

PALETTE = {"before": "#0072B2", "after": "#D55E00", "unique": "#009E73", "entropy": "#CC79A7"}  # Okabe-Ito


def _table(run_or_table) -> pd.DataFrame:
    return run_or_table if isinstance(run_or_table, pd.DataFrame) else run_or_table.table()


def plot_timeline(run, ax=None, baseline: float | None = None):
    """Round timeline: test top-1 before and after each snap (left axis) and unique values (right
    axis, log scale) against the cumulative fraction fixed."""
    table = _table(run)
    if baseline is None and not isinstance(run, pd.DataFrame):
        baseline = run.baseline["top1"]
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3.5), layout="constrained")
    x = table["fraction"] * 100
    ax.plot(x, table["top1_before"], "o-", color=PALETTE["before"], label="top-1 before snap")
    ax.plot(x, table["top1_after"], "s--", color=PALETTE["after"], label="top-1 after snap")
    if baseline is not None:
        ax.axhline(baseline, color="grey", lw=0.8, ls=":", label="unquantised")
    ax.set_xlabel("weights fixed (%)")
    ax.set_ylabel("test top-1 (%)")
    right = ax.twinx()
    right.plot(x, table["unique"], "^-", color=PALETTE["unique"], alpha=0.7, label="unique values")
    right.set_yscale("log")
    right.set_ylabel("unique values")
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower left", fontsize="small")
    return fig
