"""Uncertainty against value for one round: every weight's pre-snap (mu, sigma), the centres the
round chose and the band of weights each centre accepts.

A weight fits centre ``c`` when ``|mu - c| <= delta * sigma``; in the (mu, sigma) plane that is
the wedge ``sigma >= |mu - c| / delta`` with its apex at ``(c, 0)``: the more uncertain a weight,
the further it may travel. Each wedge is drawn with the ``delta`` at which its centre won (delta
doubles in later passes of a round, so late wedges are wider).

    >>> run = pwfn_viz.load_run("runs/digits")                       # doctest: +SKIP
    >>> fig = plot_sigma_vs_mu(run, round_index=0)                    # doctest: +SKIP
    >>> fig = plot_sigma_vs_mu(run.rounds[0], layer="conv2.weight")   # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.collections import PolyCollection

from ..constants import SAMPLING_SIGMA_FLOOR, ZERO_BAND_EXPONENT
from .style import DENSITY_CMAP, ROLE, SYMBOL, legend_outside, new_axes, order_colour, styled
from ..analysis.tables import check_layer, resolve_round, weight_status

__all__ = ["plot_sigma_vs_mu", "STATUS_LABELS"]

BANDS = ("auto", "fill", "outline", False)
STATUS_LABELS = ("fixed in an earlier round", "fixed by this snap", "still free")
_STATUS_COLOURS = (ROLE["fixed_earlier"], ROLE["fixed_now"], ROLE["free"])


def _pre_values(rnd, layer):
    mu, sigma = rnd.pre_mu, rnd.pre_sigma
    names = [check_layer(mu, layer)] if layer is not None else list(mu)
    flat = lambda d: torch.cat([d[n].detach().double().flatten() for n in names]).numpy()  # noqa: E731
    return flat(mu), flat(sigma)


@styled
def plot_sigma_vs_mu(source, round_index: int | None = None, ax=None, *, layer: str | None = None,
                     bands: str | bool = "auto", steps=None, hexbin_above: int = 100_000, sample: int = 5000,
                     zero_band: float | None = 2.0 ** -ZERO_BAND_EXPONENT, seed: int = 0, gridsize: int = 120):
    """Pre-snap sigma against mu for a round (a Run with ``round_index``, default the last, or a
    Round), weights coloured by what the round did to them (:data:`STATUS_LABELS`), one vertical
    line per greedy step at its centre (coloured by the order P of the step) and its
    acceptance wedge ``sigma >= |mu - c| / delta``.

    ``bands``: "fill" (translucent wedges), "outline" (the wedges' two edges), "auto" (fill for
    up to 40 steps, else outline: many wide wedges would wash the plot out) or False.
    ``steps`` picks greedy steps to draw (a slice, or a list of step numbers; default all),
    e.g. ``steps=slice(0, 5)`` for the first five centres.

    Up to ``hexbin_above`` weights every weight is a point; past it a hexbin shows the density of
    all weights and at most ``sample`` random weights per status (seeded) are drawn on top.
    ``zero_band`` shades ``|mu| < zero_band`` (zero_fix: those weights fit the zero centre
    whatever their sigma) when a step chose zero; None turns it off. ``layer`` restricts the
    points to one tensor (the centres stay the network's: clustering is global). Sigma is drawn
    as the method uses it, ``max(sigma, 2^-30)`` (:data:`~pwfn_viz.constants.SAMPLING_SIGMA_FLOOR`):
    a raw parameter at or below zero sits on the floor, never below the axis.
    """
    rnd = resolve_round(source, round_index)
    mu, sigma = _pre_values(rnd, layer)
    sigma = np.maximum(sigma, SAMPLING_SIGMA_FLOOR)
    status = weight_status(rnd, layer)
    fig, ax = new_axes(ax, (7.6, 4.2))
    rng = np.random.default_rng(seed)
    dense = mu.size > hexbin_above
    if dense:
        ax.hexbin(mu, sigma, gridsize=gridsize, bins="log", cmap=DENSITY_CMAP, mincnt=1, linewidths=0)
        ax.fill([], [], color="0.55", label=f"density of all {mu.size:,} weights (log)")   # legend entry
    for s in (0, 2, 1):   # earlier-fixed under free under just-fixed
        idx = np.flatnonzero(status == s)
        if idx.size == 0:
            continue
        if dense and idx.size > sample:
            idx = np.sort(rng.choice(idx, size=sample, replace=False))
        label = f"{STATUS_LABELS[s]} ({int((status == s).sum()):,})" + (" (sample)" if dense else "")
        size = 30 if mu.size <= 50 else 6 if mu.size < 20_000 else 2
        ax.scatter(mu[idx], sigma[idx], s=size, color=_STATUS_COLOURS[s], alpha=0.8 if mu.size <= 50 else 0.6,
                   edgecolors="none", label=label, rasterized=mu.size > 20_000, zorder=3)
    if mu.size <= 50:   # toy data: name every weight
        for i, xy in enumerate(zip(mu, sigma)):
            ax.annotate(f"w{i}", xy, xytext=(3, 3), textcoords="offset points", fontsize="x-small")

    top = float(sigma.max()) * 1.08 if sigma.size and sigma.max() > 0 else 1.0
    lo, hi = float(mu.min()), float(mu.max())
    pad = 0.04 * (hi - lo) if hi > lo else 0.01
    steps = _pick_steps(rnd.steps, steps)
    if bands not in BANDS:
        raise ValueError(f"bands={bands!r} is unknown; choose one of {BANDS}")
    if len(steps):
        c, delta = steps["centre"].to_numpy(float), steps["delta"].to_numpy(float)
        colours = [order_colour(p) for p in steps["P"].to_numpy(int)]
        mode = ("fill" if len(steps) <= 40 else "outline") if bands == "auto" else bands
        if mode:
            wedges = [[(ci - di * top, top), (ci, 0.0), (ci + di * top, top)] for ci, di in zip(c, delta)]
            look = dict(facecolors=colours, edgecolors="none", alpha=0.1) if mode == "fill" else \
                dict(facecolors="none", edgecolors=colours, alpha=0.35, linewidths=0.5)
            ax.add_collection(PolyCollection(wedges, closed=False, zorder=1,
                                             label=r"band $|\mu - c| \leq \delta\,\sigma$", **look))
        ax.vlines(c, 0, top, colors=colours, lw=0.6, alpha=0.7, zorder=2, label=f"centres ({len(c)} steps)")
        if zero_band and (c == 0).any():
            ax.axvspan(-zero_band, zero_band, color=order_colour(0), alpha=0.12, lw=0, zorder=1,
                       label=f"zero_fix: $|\\mu| < 2^{{{np.log2(zero_band):g}}}$")
        for p in sorted(set(steps["P"].to_numpy(int))):   # legend entries for the orders
            ax.plot([], [], color=order_colour(p), lw=1.5, label=f"P = {p}")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"{SYMBOL['mu']} (before the snap)")
    ax.set_ylabel(f"{SYMBOL['sigma']} (before the snap)")
    where = f", {layer}" if layer else ""
    ax.set_title(f"round {rnd.index}: {rnd.fraction:.0%} fixed{where}")
    legend_outside(ax, fontsize="x-small", markerscale=2)
    return fig


def _pick_steps(steps, which):
    if which is None:
        return steps
    if isinstance(which, slice):
        return steps.iloc[which]
    known = set(steps["step"])
    missing = [s for s in which if s not in known]
    if missing:
        raise ValueError(f"steps {missing} not in this round; "
                         f"it has steps {steps['step'].min()}..{steps['step'].max()}")
    return steps[steps["step"].isin(list(which))]

