"""Paper-quality plots of what the rounds did: the round timeline, the greedy steps of a round
and its codebook. Each function takes a :class:`~pwfn_viz.record.rundir.Run` (with a round index, by
default the last round) or a :class:`~pwfn_viz.record.rundir.Round`, and an optional ``ax``; it draws
and returns the Figure, so it can be composed into a multi-panel figure and saved as
PDF/SVG/PNG.

    >>> fig = plot_timeline(pwfn_viz.load_run("runs/x"))     # doctest: +SKIP
    >>> fig.savefig("timeline.pdf")                          # doctest: +SKIP

The other families live beside this module: :mod:`~pwfn_viz.viz.uncertainty` (sigma against
mu with the acceptance bands), :mod:`~pwfn_viz.viz.position` (sigma against position in the
network) and :mod:`~pwfn_viz.viz.compare_plots` (PWFN against k-means).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from matplotlib.ticker import MaxNLocator

from .style import COLOURS, ROLE, SYMBOL, legend_outside, new_axes, order_colour, scaled_figsize, styled
from ..analysis.tables import check_layer, power_of_two_terms, resolve_round, value_counts

__all__ = ["plot_timeline", "plot_greedy_steps", "plot_step_centres", "plot_step_counts", "plot_step_growth",
           "plot_value_histograms", "plot_round_codebook"]

PALETTE = {k: ROLE[k] for k in ("before", "after", "unique", "entropy")}   # kept for older imports


def wants_log(counts, spread: float = 30.0) -> bool:
    """Whether positive ``counts`` span more than ``spread`` times and reach 100 (see :func:`count_scale`)."""
    c = np.asarray(counts, dtype=float)
    c = c[np.isfinite(c) & (c > 0)]
    return bool(c.size > 0 and c.max() >= 100 and c.max() / c.min() > spread)


def count_scale(ax, counts, axis: str = "y", *, spread: float = 30.0) -> str:
    """Put a count axis on a log scale only when the counts span more than ``spread`` times and
    reach 100; otherwise a linear axis from zero with integer ticks (a log axis would make 1 and 2
    look as far apart as 100 and 200). Returns the scale chosen.

        >>> import matplotlib.pyplot as plt
        >>> count_scale(plt.figure().add_subplot(), [1, 2, 2, 1])
        'linear'
    """
    log = wants_log(counts, spread)
    set_scale = ax.set_yscale if axis == "y" else ax.set_xscale
    if log:
        set_scale("log")
        return "log"
    set_scale("linear")
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, None)
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))
    return "linear"


def _table(run_or_table) -> pd.DataFrame:
    return run_or_table if isinstance(run_or_table, pd.DataFrame) else run_or_table.table()


def _primary_of(run_or_table) -> str:
    """The run's primary metric (``top1`` for classification runs); for a bare table, ``top1`` when
    it has that column, else the first ``<name>_before`` column."""
    if not isinstance(run_or_table, pd.DataFrame):
        return run_or_table.primary
    if "top1_before" in run_or_table.columns:
        return "top1"
    found = [c[: -len("_before")] for c in run_or_table.columns if str(c).endswith("_before")]
    if not found:
        raise ValueError("the table has no <metric>_before column to plot")
    return found[0]


@styled
def plot_timeline(run, ax=None, baseline: float | None = None, *, entropy: bool = True, metric: str | None = None):
    """Round timeline: the run's primary metric (test top-1 for classification; ``metric`` names
    another recorded one) before and after each snap (left axis), unique values (right axis, log
    scale) and, with ``entropy``, the entropy of the weights in bits (zero included; an outer right
    axis) against the cumulative fraction fixed. ``run`` may be a Run or its ``table()``."""
    table = _table(run)
    metric = metric or _primary_of(run)
    label = {"top1": "top-1", "top5": "top-5"}.get(metric, metric)
    if baseline is None and not isinstance(run, pd.DataFrame):
        baseline = run.baseline.get(metric)
    fig, ax = new_axes(ax, (6.4, 3.6))
    x = table["fraction"] * 100
    ax.plot(x, table[f"{metric}_before"], "o-", color=ROLE["before"], label=f"{label} before snap")
    ax.plot(x, table[f"{metric}_after"], "s--", color=ROLE["after"], label=f"{label} after snap")
    if baseline is not None:
        ax.axhline(baseline, color="grey", lw=0.8, ls=":", label="unquantised")
    ax.set_xlabel("weights fixed (%)")
    ax.set_ylabel(f"test {label} (%)" if metric in ("top1", "top5") else f"test {label}")
    right = ax.twinx()
    right.plot(x, table["unique"], "^-", color=ROLE["unique"], alpha=0.8, label="unique values")
    scale = count_scale(right, table["unique"])
    right.set_ylabel("unique values" + (" (log)" if scale == "log" else ""), color=ROLE["unique"])
    handles, labels = [], []
    for a in (ax, right):
        h, lab = a.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if entropy:
        outer = ax.twinx()
        outer.spines["right"].set_position(("axes", 1.16))
        outer.plot(x, table["entropy"], "D:", color=ROLE["entropy"], ms=4, label="entropy (bits)")
        outer.set_ylabel("entropy (bits)", color=ROLE["entropy"])
        h, lab = outer.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    legend_outside(ax, handles, labels, where="top", fontsize="x-small")
    return fig


# ----------------------------------------------------------------------------- greedy steps

def _steps(source, round_index):
    rnd = resolve_round(source, round_index)
    if not len(rnd.steps):
        raise ValueError(f"round {rnd.index} recorded no greedy steps (steps.csv missing or empty)")
    return rnd, rnd.steps


def _pass_boundaries(ax, steps):
    starts = steps["step"].to_numpy()[np.flatnonzero(np.diff(steps["pass_index"].to_numpy())) + 1]
    for s in starts:
        ax.axvline(s - 0.5, color="grey", lw=0.6, ls=":")


@styled
def plot_step_centres(source, round_index: int | None = None, ax=None):
    """The centre each greedy step chose, in the order chosen, coloured by its order P (dotted
    lines: a new pass, after P or delta grew)."""
    rnd, steps = _steps(source, round_index)
    fig, ax = new_axes(ax, (6.4, 2.6))
    for p, group in steps.groupby("P"):
        ax.scatter(group["step"], group["centre"], s=14, color=order_colour(p), label=f"P = {p}", zorder=3)
    _pass_boundaries(ax, steps)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("greedy step")
    ax.set_ylabel("centre $c$")
    ax.set_title(f"round {rnd.index}: centres in the order chosen")
    legend_outside(ax, fontsize="x-small")
    return fig


def _twin_legend(ax, right, loc: str) -> None:
    """One legend for the lines of ``ax`` and of its twin axis ``right``, outside both (``loc``:
    "top"; "right" would cover the twin axis' labels)."""
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    legend_outside(ax, h1 + h2, l1 + l2, where=loc, fontsize="x-small")


@styled
def plot_step_counts(source, round_index: int | None = None, ax=None):
    """Weights each step took (bars) and fitted (dots: more than taken when the round's target
    capped it), with the cumulative number taken on a right axis. The count axis is logarithmic only
    when the counts span orders of magnitude (:func:`count_scale`)."""
    rnd, steps = _steps(source, round_index)
    fig, ax = new_axes(ax, (6.4, 2.6))
    ax.bar(steps["step"], steps["n_taken"], width=0.8, color=COLOURS["sky"], label="taken")
    ax.plot(steps["step"], steps["n_fit"], "o", ms=2.5, color=COLOURS["blue"], label="fitting")
    _pass_boundaries(ax, steps)
    scale = count_scale(ax, np.concatenate([steps["n_taken"].to_numpy(), steps["n_fit"].to_numpy()]))
    ax.set_xlabel("greedy step")
    ax.set_ylabel("weights" + (" (log)" if scale == "log" else ""))
    right = ax.twinx()
    right.plot(steps["step"], steps["n_taken"].cumsum(), "-", color=COLOURS["vermillion"], label="cumulative taken")
    right.set_ylabel("cumulative taken", color=COLOURS["vermillion"])
    right.set_ylim(0, None)
    _twin_legend(ax, right, loc="top")
    return fig


@styled
def plot_step_growth(source, round_index: int | None = None, ax=None):
    """The order P (left, steps) and the band width delta (right, log2 scale) at every greedy
    step: how the round grew its candidate set until it reached its target."""
    rnd, steps = _steps(source, round_index)
    fig, ax = new_axes(ax, (6.4, 2.4))
    ax.step(steps["step"], steps["P"], where="mid", color=COLOURS["green"], label="order P")
    ax.set_yticks(range(1, int(steps["P"].max()) + 1))
    ax.set_ylim(0.5, max(4, int(steps["P"].max())) + 0.5)
    ax.set_xlabel("greedy step")
    ax.set_ylabel("order P", color=COLOURS["green"])
    right = ax.twinx()
    right.step(steps["step"], steps["delta"], where="mid", color=COLOURS["purple"], ls="--", label=SYMBOL["delta"])
    right.set_yscale("log", base=2)
    right.set_ylabel(f"band width {SYMBOL['delta']}", color=COLOURS["purple"])
    _pass_boundaries(ax, steps)
    _twin_legend(ax, right, loc="top")
    return fig


@styled
def plot_greedy_steps(source, round_index: int | None = None, ax=None):
    """The greedy steps of a round in three panels sharing the step axis: centres in the order
    chosen (:func:`plot_step_centres`), weights taken (:func:`plot_step_counts`), P and delta
    growth (:func:`plot_step_growth`). ``ax``: None or a sequence of three Axes."""
    if ax is None:
        fig, ax = plt.subplots(3, 1, figsize=scaled_figsize((6.4, 6.6)), sharex=True, layout="constrained",
                               height_ratios=(1.2, 1, 0.8))
    elif len(ax) != 3:
        raise ValueError(f"plot_greedy_steps draws three panels; pass three Axes, got {len(ax)}")
    plot_step_centres(source, round_index, ax=ax[0])
    plot_step_counts(source, round_index, ax=ax[1])
    plot_step_growth(source, round_index, ax=ax[2])
    for a in ax[:2]:
        a.set_xlabel("")
    ax[1].set_title("")
    return ax[0].figure


# ----------------------------------------------------------------------------- codebooks of a round

def _values(tensors: dict, layer):
    names = [check_layer(tensors, layer)] if layer is not None else list(tensors)
    return torch.cat([tensors[n].detach().double().flatten() for n in names])


@styled
def plot_value_histograms(source, round_index: int | None = None, ax=None, *, layer: str | None = None,
                          bins: int = 200):
    """Histograms of every weight's value before the round's snap and after it (log counts):
    after the snap the fixed weights pile up on the round's centres."""
    rnd = resolve_round(source, round_index)
    pre, post = _values(rnd.pre_mu, layer).numpy(), _values(rnd.mu, layer).numpy()
    fig, ax = new_axes(ax, (6.4, 3.4))
    edges = np.histogram_bin_edges(np.concatenate([pre, post]), bins=bins)
    ax.hist(pre, bins=edges, histtype="stepfilled", color=ROLE["pre"], alpha=0.35, label="before the snap")
    ax.hist(post, bins=edges, histtype="step", color=ROLE["post"], lw=1.0, label="after the snap")
    ax.set_yscale("log")
    ax.set_xlabel(f"weight value {SYMBOL['mu']}")
    ax.set_ylabel("weights per bin (log)")
    ax.set_title(f"round {rnd.index}" + (f", {layer}" if layer else ""))
    legend_outside(ax, where="top", fontsize="x-small")
    return fig


@styled
def plot_round_codebook(source, round_index: int | None = None, ax=None, *, layer: str | None = None,
                        b: int = 7):
    """The shared values of the fixed weights after the round's snap and how many weights use
    each (stems; a log axis when the counts span orders of magnitude, see :func:`count_scale`),
    coloured by how many powers of two (>= 2^-b) the value needs."""
    rnd = resolve_round(source, round_index)
    fixed = _values({k: v.double() for k, v in rnd.fixed.items()}, layer).bool()
    values, counts = value_counts(_values(rnd.mu, layer)[fixed])
    order = power_of_two_terms(torch.from_numpy(values), b=b).numpy()
    fig, ax = new_axes(ax, (6.4, 3.4))
    base = 0.8 if wants_log(counts) else 0.0
    for p in sorted(set(order)):
        sel = order == p
        colour = order_colour(p) if p >= 0 else COLOURS["grey"]
        ax.vlines(values[sel], base, counts[sel], color=colour, lw=1, alpha=0.7)
        ax.plot(values[sel], counts[sel], "o", ms=3, color=colour,
                label=("zero" if p == 0 else f"{p} power{'s' if p > 1 else ''} of two") if p >= 0 else "other")
    scale = count_scale(ax, counts)
    if scale == "linear":
        ax.set_ylim(0, counts.max() * 1.08 if counts.size else 1)
    ax.set_xlabel("shared value")
    ax.set_ylabel("weights using it" + (" (log)" if scale == "log" else ""))
    ax.set_title(f"round {rnd.index}: {values.size} values, {int(counts.sum()):,} fixed weights"
                 + (f" ({layer})" if layer else ""))
    legend_outside(ax, fontsize="x-small")
    return fig
