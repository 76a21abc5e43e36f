"""Plots of :func:`pwfn_viz.analysis.noise` results: a reliability diagram and accuracy under noise.

Each function takes an optional ``ax``, draws, and returns the Figure:

    >>> result = pwfn_viz.analyse(run)                                  # doctest: +SKIP
    >>> plot_reliability(result).savefig("reliability.pdf")             # doctest: +SKIP
    >>> plot_noise_accuracy(result).savefig("noise.pdf")                # doctest: +SKIP
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .style import SYMBOL, legend_outside, new_axes, styled

COLORS = {"mean weights": "#0072B2", "learned sigma samples": "#D55E00", "learned ensemble": "#D55E00",
          "isotropic samples": "#009E73", "isotropic ensemble": "#009E73"}   # Okabe-Ito


@styled
def plot_reliability(result, ax=None, keys=("mean weights", "learned ensemble")):
    """Reliability diagram: accuracy per confidence bin (bars, one group per entry of ``keys``)
    against the diagonal of perfect calibration; the legend gives each ECE.

    ``result`` is an :class:`~pwfn_viz.analysis.noise.AnalysisResult` or one reliability table (a
    DataFrame with bin_lower, bin_upper, confidence, accuracy, count)."""
    from ..analysis.noise import _ece_from_table
    if not isinstance(result, pd.DataFrame) and not result.reliability:
        raise ValueError(f"no reliability diagram for this result: {' '.join(result.notes)}")
    tables = {"predictions": result} if isinstance(result, pd.DataFrame) else \
        {k: result.reliability[k] for k in keys}
    fig, ax = new_axes(ax, (4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="perfect calibration")
    for i, (key, t) in enumerate(tables.items()):
        width = (t["bin_upper"] - t["bin_lower"]).to_numpy() / len(tables)
        left = t["bin_lower"].to_numpy() + i * width
        acc = np.nan_to_num(t["accuracy"].to_numpy())
        ax.bar(left, acc, width=width, align="edge", color=COLORS.get(key, f"C{i}"), alpha=0.75,
               edgecolor="white", lw=0.5, label=f"{key} (ECE {100 * _ece_from_table(t):.2f}%)")
        used = t["count"].to_numpy() > 0
        ax.plot(t["confidence"].to_numpy()[used], t["accuracy"].to_numpy()[used], "o", ms=3,
                color=COLORS.get(key, f"C{i}"), mec="black", mew=0.4)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    legend_outside(ax, where="top", ncols=1, fontsize="small")
    return fig


@styled
def plot_noise_accuracy(result, ax=None):
    """Test top-1 (or the primary metric of a run of your own model) of every weight sample, learned
    sigma against isotropic noise of the same total variance (box plot with the samples as points),
    the two ensembles (diamonds; classification only) and the mean-weight network (dotted line)."""
    from ..record.rundir import metric_label
    fig, ax = new_axes(ax, (4.2, 3.6))
    s, p = result.samples, getattr(result, "primary", "top1")
    data = [s[f"learned_{p}"].to_numpy(), s[f"isotropic_{p}"].to_numpy()]
    labels = [f"learned {SYMBOL['sigma']}", "isotropic"]
    box = ax.boxplot(data, positions=[0, 1], widths=0.5, patch_artist=True, showfliers=False)
    for patch, key in zip(box["boxes"], ("learned sigma samples", "isotropic samples")):
        patch.set(facecolor=COLORS[key], alpha=0.35)
    rng = np.random.default_rng(0)
    for pos, (values, key) in enumerate(zip(data, ("learned sigma samples", "isotropic samples"))):
        ax.plot(pos + rng.uniform(-0.08, 0.08, len(values)), values, "o", ms=3.5, color=COLORS[key],
                label="samples" if pos == 0 else None)
    if "learned ensemble" in result.summary.index:
        ens = [result.summary.at["learned ensemble", p], result.summary.at["isotropic ensemble", p]]
        ax.plot([0, 1], ens, "D", ms=7, color="black", mfc="white", ls="none", label="ensemble")
    ax.axhline(result.summary.at["mean weights", p], color=COLORS["mean weights"], lw=1, ls=":",
               label="mean weights")
    ax.set_xticks([0, 1], labels)
    ax.set_ylabel("test top-1 (%)" if p == "top1" else f"test {metric_label(p)}")
    ax.set_title(f"{result.n_samples} weight samples, equal total variance", fontsize="medium")
    legend_outside(ax, fontsize="small")
    return fig


def save_figures(result, out_dir, formats=("png", "pdf")) -> list:
    """Write ``reliability.<fmt>`` (classification only) and ``noise.<fmt>`` for ``result`` into
    ``out_dir``; returns the paths."""
    from pathlib import Path
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, plot in (("reliability", plot_reliability), ("noise", plot_noise_accuracy)):
        if stem == "reliability" and not result.reliability:
            continue
        fig = plot(result)
        for fmt in formats:
            fig.savefig(out / f"{stem}.{fmt}", dpi=150)
            paths.append(out / f"{stem}.{fmt}")
        plt.close(fig)
    return paths
