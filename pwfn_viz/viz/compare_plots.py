"""Plots over a :class:`~pwfn_viz.analysis.compare.Comparison` (PWFN against k-means at equal budgets).

Each function takes the comparison, the methods to show (rows of ``comparison.table``) and an
optional ``ax``, draws, and returns the Figure.

    >>> result = pwfn_viz.compare("runs/digits")                    # doctest: +SKIP
    >>> fig = plot_codebooks(result, ["pwfn", "kmeans@unique"])      # doctest: +SKIP
    >>> fig = plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique"])  # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import torch

from ..constants import SAMPLING_SIGMA_FLOOR
from .style import SYMBOL, legend_outside, new_axes, styled

__all__ = ["plot_codebooks", "plot_moves_vs_sigma"]

COLOURS = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00")   # Okabe-Ito
DEFAULT_METHODS = ("pwfn", "kmeans@unique")


def _methods(comparison, methods):
    methods = list(methods) if methods is not None else [m for m in DEFAULT_METHODS if m in comparison.weights]
    missing = [m for m in methods if m not in comparison.weights]
    if missing or not methods:
        raise ValueError(f"no method(s) {missing} in this comparison; it has {list(comparison.weights)}")
    return methods


@styled
def plot_codebooks(comparison, methods=None, ax=None, log: bool = True, title: str | None = None):
    """Every shared value (x) and how many weights use it (y, log scale by default), one stem
    series per method: the codebooks that PWFN and k-means chose for the same budget."""
    fig, ax = new_axes(ax, (7, 3.5))
    for i, method in enumerate(_methods(comparison, methods)):
        values, counts = torch.unique(comparison.weights[method], return_counts=True)
        colour = COLOURS[i % len(COLOURS)]
        ax.vlines(values.numpy(), 0.8 if log else 0, counts.numpy(), color=colour, alpha=0.6, lw=1)
        ax.plot(values.numpy(), counts.numpy(), "o^sdv"[i % 5], color=colour, ms=3.5,
                label=f"{method}: {values.numel()} values")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("shared value")
    ax.set_ylabel("weights using it" + (" (log)" if log else ""))
    if title:
        ax.set_title(title)
    legend_outside(ax, fontsize="small")
    return fig


@styled
def plot_moves_vs_sigma(comparison, methods=None, ax=None, max_points: int = 4000, seed: int = 0,
                        title: str | None = None):
    """|w_final - w_start| against each weight's learned PWFN sigma (log-log), one colour per
    method, with the lines |change| = 1, 2, 3 sigma.  Points above a line moved more than that
    many sigma.  At most ``max_points`` random weights per method are drawn (the same ones for
    every method); weights that did not move at all cannot be shown on a log scale and are
    counted in the legend instead. Sigma is the value the method uses, ``max(sigma, 2^-30)``.
    ``title`` heads the legend above the plot."""
    fig, ax = new_axes(ax, (5, 4.5))
    sigma = np.maximum(comparison.sigma.double().numpy(), SAMPLING_SIGMA_FLOOR)
    rng = np.random.default_rng(seed)
    pick = rng.choice(sigma.size, size=min(max_points, sigma.size), replace=False)
    for i, method in enumerate(_methods(comparison, methods)):
        moved = (comparison.weights[method] - comparison.start).abs().numpy()
        beyond = float(np.mean(moved > sigma))
        shown = pick[moved[pick] > 0]
        still = int(np.sum(moved == 0))
        label = f"{method}: {beyond:.0%} > 1{SYMBOL['sigma']}" + (f", {still} unmoved" if still else "")
        ax.scatter(sigma[shown], moved[shown], s=4, alpha=0.35, color=COLOURS[i % len(COLOURS)],
                   label=label, edgecolors="none")
    span = np.array([sigma[pick].min(), sigma[pick].max()])
    for s, style in zip((1, 2, 3), ("-", "--", ":")):   # labelled where they end, not in the legend
        ax.plot(span, s * span, style, color="grey", lw=0.8, gid=f"{s} sigma")
        ax.annotate(f"{s}{SYMBOL['sigma']}", (span[1], s * span[1]), xytext=(2, 0), textcoords="offset points",
                    fontsize="x-small", color="grey", va="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"learned {SYMBOL['sigma']} of the weight (PWFN)")
    ax.set_ylabel(r"$|w_\mathrm{final} - w_\mathrm{start}|$")
    if title:
        ax.set_title(title)
    legend_outside(ax, where="top", ncols=1, fontsize="small", markerscale=3)
    return fig
