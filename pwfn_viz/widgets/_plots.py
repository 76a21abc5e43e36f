"""Small plots the widgets need that :mod:`pwfn_viz.viz` does not draw: one selection of weights
(sigma against value and against position), one weight's trajectory, per-layer error bars and
a codebook stem plot. Same conventions as the package plots: ``ax`` in, Figure out, the
package style and colours.
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm

from ..viz.style import COLOURS, ROLE, SEQUENTIAL_CMAP, styled
from ..viz.uncertainty import STATUS_LABELS

_STATUS_COLOURS = (ROLE["fixed_earlier"], ROLE["fixed_now"], ROLE["free"])
_METHOD_COLOURS = (COLOURS["vermillion"], COLOURS["blue"], COLOURS["green"], COLOURS["purple"])


@styled
def plot_selection_scatter(mu, sigma, status, ax, pick: int | None = None, title: str = ""):
    """Pre-snap sigma against mu of a selection of weights, coloured by what the round did to
    them (viz's STATUS_LABELS); ``pick`` (position in the selection) is ringed."""
    mu, sigma, status = np.asarray(mu, float), np.asarray(sigma, float), np.asarray(status)
    for s in (0, 2, 1):
        idx = status == s
        if idx.any():
            ax.scatter(mu[idx], sigma[idx], s=10 if mu.size < 5000 else 3, color=_STATUS_COLOURS[s],
                       alpha=0.7, edgecolors="none", label=f"{STATUS_LABELS[s]} ({int(idx.sum())})")
    if pick is not None:
        ax.scatter([mu[pick]], [sigma[pick]], s=90, facecolors="none", edgecolors="black", lw=1.5,
                   label=f"weight {pick}", zorder=5)
    ax.set_xlabel("mu (before the snap)")
    ax.set_ylabel("sigma (before the snap)")
    ax.set_title(title, fontsize="small")
    ax.legend(fontsize="x-small", loc="upper right")
    return ax.figure


@styled
def plot_selection_position(sigma, ax, pick: int | None = None, title: str = "", dims=None):
    """Sigma by position in the selection: a heatmap (rows: first dimension, columns: the rest,
    row-major; log colour scale) for a 2-D or larger selection, a line over the index for 1-D.
    ``pick`` (flat position in the selection) is marked; ``dims`` names the dimensions."""
    sigma = np.asarray(sigma, float)
    dims = list(dims) if dims is not None else [f"dim {i}" for i in range(sigma.ndim)]
    if sigma.ndim <= 1:
        flat = sigma.reshape(-1)
        ax.plot(np.arange(flat.size), flat, "o-", ms=3, lw=0.8, color=ROLE["free"])
        if pick is not None:
            ax.plot([pick], [flat[pick]], "o", ms=9, mfc="none", mec="black", mew=1.5)
        ax.set_yscale("log")
        ax.set_xlabel(dims[0] if sigma.ndim == 1 else "position in the selection")
        ax.set_ylabel("sigma")
    else:
        grid = sigma.reshape(sigma.shape[0], -1)
        positive = grid[grid > 0]
        lo = positive.min() if positive.size else 1e-30
        image = ax.imshow(np.maximum(grid, lo), aspect="auto", interpolation="nearest", cmap=SEQUENTIAL_CMAP,
                          norm=LogNorm(vmin=lo, vmax=max(grid.max(), lo * 1.0001)))
        ax.figure.colorbar(image, ax=ax, label="sigma")
        if pick is not None:
            r, c = divmod(pick, grid.shape[1])
            ax.plot([c], [r], "s", ms=8, mfc="none", mec=COLOURS["vermillion"], mew=1.5)
        ax.set_xlabel(dims[1] if len(dims) == 2 else f"({', '.join(dims[1:])}), row-major")
        ax.set_ylabel(dims[0])
    ax.set_title(title, fontsize="small")
    return ax.figure


@styled
def plot_trajectory(traj, ax):
    """A weight's mu over the rounds (start, then before and after each snap) with a +-sigma band,
    and the value it was fixed to (dashed) from the round that fixed it."""
    t = traj.table
    x = [-0.5]
    mu, sigma = [traj.start_mu], [traj.start_sigma]
    for _, row in t.iterrows():
        x += [row["round"] - 0.15, row["round"] + 0.15]
        mu += [row["pre_mu"], row["mu"]]
        sigma += [row["pre_sigma"], row["sigma"]]
    x, mu, sigma = np.array(x), np.array(mu), np.array(sigma)
    ax.fill_between(x, mu - sigma, mu + sigma, color=ROLE["pre"], alpha=0.2, lw=0, label="mu +- sigma")
    ax.plot(x, mu, "-", color=ROLE["pre"], lw=1)
    ax.plot(x[1::2], mu[1::2], "o", color=ROLE["pre"], ms=5, label="before the snap")
    ax.plot(x[2::2], mu[2::2], "s", color=ROLE["post"], ms=5, label="after the snap")
    ax.plot(x[:1], mu[:1], "D", color="black", ms=5, label="start")
    if traj.fixed_round is not None:
        ax.axhline(traj.fixed_value, color=ROLE["centre"], ls="--", lw=0.8,
                   label=f"fixed to {traj.fixed_value:.5g} (round {traj.fixed_round})")
        ax.axvline(traj.fixed_round, color=ROLE["centre"], ls=":", lw=0.8)
    ax.set_xticks(list(t["round"]))
    ax.set_xlabel("round")
    ax.set_ylabel("mu")
    ax.set_title(f"{traj.name}[{', '.join(map(str, traj.index))}] over the rounds", fontsize="small")
    ax.legend(fontsize="x-small", loc="best")
    return ax.figure


@styled
def plot_layer_error(layers, ax, methods=None):
    """Relative weight error per layer (grouped bars, one colour per method) from a table with
    columns layer, method, weight_error (``Comparison.layers``)."""
    pivot = layers.pivot(index="layer", columns="method", values="weight_error")
    pivot = pivot.reindex(list(dict.fromkeys(layers["layer"])))
    methods = list(methods) if methods is not None else list(dict.fromkeys(layers["method"]))
    width = 0.8 / max(1, len(methods))
    pos = np.arange(len(pivot))
    for i, m in enumerate(methods):
        ax.bar(pos + (i - (len(methods) - 1) / 2) * width, pivot[m].to_numpy(), width,
               color=_METHOD_COLOURS[i % len(_METHOD_COLOURS)], label=m)
    ax.set_xticks(pos, pivot.index, rotation=40, ha="right", fontsize="x-small")
    ax.set_ylabel("||w - w_start|| / ||w_start||")
    ax.set_title("weight error per layer", fontsize="small")
    ax.legend(fontsize="x-small")
    return ax.figure


@styled
def plot_value_counts(series: dict, ax):
    """Shared values (x) and how many weights use each (y, log), one stem series per entry of
    ``series`` (label -> (values, counts))."""
    for i, (label, (values, counts)) in enumerate(series.items()):
        colour = _METHOD_COLOURS[i % len(_METHOD_COLOURS)]
        ax.vlines(values, 0.8, counts, color=colour, alpha=0.6, lw=1)
        ax.plot(values, counts, "o^sd"[i % 4], color=colour, ms=3.5, label=f"{label}: {len(values)} values")
    ax.set_yscale("log")
    ax.set_xlabel("value")
    ax.set_ylabel("weights holding it")
    ax.legend(fontsize="x-small")
    return ax.figure
