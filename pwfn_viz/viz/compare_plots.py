"""Plots over a :class:`~pwfn_viz.analysis.compare.Comparison` (PWFN against k-means at equal budgets).

Each function takes the comparison, the methods to show (rows of ``comparison.table``) and an
optional ``ax``, draws, and returns the Figure.

    >>> result = pwfn_viz.compare("runs/digits")                    # doctest: +SKIP
    >>> fig = plot_codebooks(result, ["pwfn", "kmeans@unique"])      # doctest: +SKIP
    >>> fig = plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique"])  # doctest: +SKIP
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_codebooks", "plot_moves_vs_sigma"]

COLOURS = ("#D55E00", "#0072B2", "#009E73", "#CC79A7", "#E69F00")   # Okabe-Ito
DEFAULT_METHODS = ("pwfn", "kmeans@unique")


def _methods(comparison, methods):
    methods = list(methods) if methods is not None else [m for m in DEFAULT_METHODS if m in comparison.weights]
    missing = [m for m in methods if m not in comparison.weights]
    if missing or not methods:
        raise ValueError(f"no method(s) {missing} in this comparison; it has {list(comparison.weights)}")
    return methods


def _axes(ax, figsize):
    return (ax.figure, ax) if ax is not None else plt.subplots(figsize=figsize, layout="constrained")


def plot_codebooks(comparison, methods=None, ax=None, log: bool = True):
    """Every shared value (x) and how many weights use it (y, log scale by default), one stem
    series per method: the codebooks that PWFN and k-means chose for the same budget."""
    fig, ax = _axes(ax, (7, 3.5))
    for i, method in enumerate(_methods(comparison, methods)):
        values, counts = torch.unique(comparison.weights[method], return_counts=True)
        colour = COLOURS[i % len(COLOURS)]
        ax.vlines(values.numpy(), 0.8 if log else 0, counts.numpy(), color=colour, alpha=0.6, lw=1)
        ax.plot(values.numpy(), counts.numpy(), "o^sdv"[i % 5], color=colour, ms=3.5,
                label=f"{method}: {values.numel()} values")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("shared value")
    ax.set_ylabel("weights using it")
    ax.legend(fontsize="small")
    return fig


def plot_moves_vs_sigma(comparison, methods=None, ax=None, max_points: int = 4000, seed: int = 0):
    """|w_final - w_start| against each weight's learned PWFN sigma (log-log), one colour per
    method, with the lines |change| = 1, 2, 3 sigma.  Points above a line moved more than that
    many sigma.  At most ``max_points`` random weights per method are drawn (the same ones for
    every method); weights that did not move at all cannot be shown on a log scale and are
    counted in the legend instead."""
    fig, ax = _axes(ax, (5, 4.5))
    sigma = comparison.sigma.numpy()
    rng = np.random.default_rng(seed)
    pick = rng.choice(sigma.size, size=min(max_points, sigma.size), replace=False)
    for i, method in enumerate(_methods(comparison, methods)):
        moved = (comparison.weights[method] - comparison.start).abs().numpy()
        beyond = float(np.mean(moved > sigma))
        shown = pick[moved[pick] > 0]
        still = int(np.sum(moved == 0))
        label = f"{method}: {beyond:.0%} > 1 sigma" + (f", {still} unmoved" if still else "")
        ax.scatter(sigma[shown], moved[shown], s=4, alpha=0.35, color=COLOURS[i % len(COLOURS)],
                   label=label, edgecolors="none")
    span = np.array([sigma[pick].min(), sigma[pick].max()])
    for s, style in zip((1, 2, 3), ("-", "--", ":")):
        ax.plot(span, s * span, style, color="grey", lw=0.8, label=f"{s} sigma")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learned sigma of the weight (PWFN)")
    ax.set_ylabel("|final weight - start weight|")
    ax.legend(fontsize="small", markerscale=3)
    return fig
