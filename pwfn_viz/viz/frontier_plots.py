"""The accuracy-against-entropy picture of :mod:`pwfn_viz.analysis.frontier` (learned against frozen
sigma, k-means, coremltools palettization), mean over seeds with one standard deviation as bars.

    >>> table = pd.read_csv("results/frontier/frontier.csv")     # doctest: +SKIP
    >>> fig = plot_accuracy_entropy(table)                        # doctest: +SKIP
"""
from __future__ import annotations

import pandas as pd

from ..analysis.frontier import summarise
from .style import PALETTE, legend_outside, new_axes, styled

__all__ = ["plot_accuracy_entropy"]

MARKERS = "os^Dv<>p"
LABELS = {"pwfn": r"PWFN, learned $\sigma$", "pwfn-frozen": r"PWFN, $\sigma$ frozen at init",
          "kmeans@unique+ft": "k-means at PWFN's unique count, fine-tuned",
          "kmeans@entropy+ft": "k-means at PWFN's entropy, fine-tuned",
          "kmeans@unique": "k-means at PWFN's unique count", "kmeans@entropy": "k-means at PWFN's entropy",
          "ptq": "coremltools post-training palettization", "dkm": "coremltools DKM palettization"}


@styled
def plot_accuracy_entropy(table: pd.DataFrame, methods=None, ax=None, annotate: bool = True):
    """Test top-1 (y) against whole-network entropy in bits (x), one series per method, each point
    a budget (mean over seeds, bars one standard deviation), the budget name beside it. Points on
    the accuracy-entropy front (no other point has both lower entropy and higher accuracy) are
    drawn filled, the others hollow."""
    summary = summarise(table)
    methods = list(methods) if methods is not None else list(dict.fromkeys(summary["method"]))
    unknown = [m for m in methods if m not in set(summary["method"])]
    if unknown:
        raise ValueError(f"no method(s) {unknown} in this table; it has {sorted(set(summary['method']))}")
    fig, ax = new_axes(ax, (6.5, 4.2))
    for i, method in enumerate(methods):
        rows = summary[summary["method"] == method].sort_values("entropy")
        colour, marker = PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]
        ax.errorbar(rows["entropy"], rows["top1"], xerr=rows["entropy_std"].fillna(0), yerr=rows["top1_std"].fillna(0),
                    color=colour, marker="", lw=1, capsize=2, label=None)
        for _, r in rows.iterrows():
            ax.plot(r["entropy"], r["top1"], marker, color=colour, ms=6,
                    markerfacecolor=colour if r["on_front"] else "white")
            if annotate:
                ax.annotate(str(r["budget"]), (r["entropy"], r["top1"]), fontsize="x-small",
                            xytext=(4, -8), textcoords="offset points", color=colour)
        ax.plot([], [], marker, color=colour, label=LABELS.get(method, method))
    seeds = int(summary["seeds"].max()) if len(summary) else 0
    ax.set_xlabel("entropy of the network's weight values (bits, zero included)")
    ax.set_ylabel(f"test top-1 (%), mean of {seeds} seed{'s' if seeds != 1 else ''}")
    legend_outside(ax, where="top", ncols=2, fontsize="x-small")
    return fig
