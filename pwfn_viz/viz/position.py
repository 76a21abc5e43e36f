"""Uncertainty against position: where in the network the learned sigma is large or small.

* :func:`plot_sigma_by_layer` -- sigma distribution of every tensor, in network order;
* :func:`plot_channel_heatmap` -- sigma over output x input channels of one layer;
* :func:`plot_kernel_pattern` -- the mean sigma at each kernel tap (e.g. 3x3);
* :func:`plot_attention_heads` -- mean sigma per head of q, k, v and proj (transformers);
* :func:`plot_fraction_fixed` -- fraction of each tensor fixed after each round.

The sigma shown is chosen by ``which`` (:data:`~pwfn_viz.analysis.tables.WHICH`): for a Run the
default is each weight's *learned* sigma (its pre-snap sigma in the round that fixed it), for a
Round its pre-snap sigma; a mapping ``name -> sigma`` is drawn as it is. ``which="initial"`` draws
a Run's sigma at conversion: the same picture of the initialisation, to set beside the learned one
(structure present in both is the initialisation formula's, not something training found).

Heatmaps compare values, so their colours start at zero by default (``vmin=0``): cells that differ
by 1 % look alike, as they should, and the colour bar names the range of the cells. Pass the same
``vmax`` to several calls for one shared scale, or ``vmin=None`` to stretch the colours over the
data's own range (then small differences look large: the colour bar says so).

    >>> run = pwfn_viz.load_run("runs/digits")                          # doctest: +SKIP
    >>> fig = plot_sigma_by_layer(run)                                   # doctest: +SKIP
    >>> fig = plot_channel_heatmap(run, "conv2.weight")                  # doctest: +SKIP
    >>> fig = plot_channel_heatmap(run, "conv2.weight", which="initial") # doctest: +SKIP
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.ticker import FuncFormatter

from ..analysis import tables
from .style import COLOURS, SEQUENTIAL_CMAP, SYMBOL, new_axes, styled
from ..analysis.tables import Run, check_layer, sigma_tensors

__all__ = ["plot_sigma_by_layer", "plot_channel_heatmap", "plot_kernel_pattern", "plot_attention_heads",
           "plot_fraction_fixed", "KINDS"]

KINDS = ("box", "violin")


def _label_which(source, which):
    if which:
        return which
    return "learned" if isinstance(source, Run) else ("pre" if not isinstance(source, Mapping) else "")


def _sigma_label(source, which, stat: str = "") -> str:
    """E.g. "mean $\\sigma$ (learned)"; no parentheses when the source does not say which sigma
    (a plain mapping: pass ``which=`` to name it)."""
    what = _label_which(source, which)
    return f"{stat + ' ' if stat else ''}{SYMBOL['sigma']}" + (f" ({what})" if what else "")


def _norm(grid, vmin, vmax, log: bool = False):
    """Colour limits: zero-based (``vmin=0``) unless told otherwise; log scales start at the
    smallest positive value."""
    finite = grid[np.isfinite(grid)]
    hi = float(finite.max()) if vmax is None and finite.size else vmax
    if log:
        positive = finite[finite > 0]
        lo = float(positive.min()) if (vmin is None or vmin <= 0) and positive.size else vmin
        return LogNorm(lo, hi)
    lo = float(finite.min()) if vmin is None and finite.size else vmin
    return Normalize(lo, hi)


def _range_note(grid, norm) -> str:
    """What the colours span: the cells' range, and the colour scale's when it differs."""
    lo, hi = float(np.nanmin(grid)), float(np.nanmax(grid))
    apart = f", {100 * (hi - lo) / hi:.2g} % apart" if hi > 0 else ""
    scale = "log colours" if isinstance(norm, LogNorm) else f"colours {norm.vmin:.3g} to {norm.vmax:.3g}"
    return f"cells {lo:.3g} to {hi:.3g}{apart}; {scale}"


@styled
def plot_sigma_by_layer(source, round_index: int | None = None, ax=None, *, which: str | None = None,
                        kind: str = "box", layers=None, max_points: int = 20_000, seed: int = 0):
    """One box (median, quartiles, whiskers at the 5th and 95th percentiles; the mean as a dot)
    or violin (KDE of log2 sigma over at most ``max_points`` seeded samples) per tensor, in
    network order, on a log scale. ``layers`` picks a subset of tensor names."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {KINDS}")
    sigma = sigma_tensors(source, round_index, which)
    if layers is not None:
        sigma = {check_layer(sigma, n): sigma[n] for n in layers}
    summary = tables.sigma_summary(sigma)
    n = len(summary)
    fig, ax = new_axes(ax, (max(4.5, 0.38 * n + 1.5), 4))
    pos = np.arange(n)
    if kind == "box":
        stats = [dict(med=r["median"], q1=r["q25"], q3=r["q75"], whislo=r["q05"], whishi=r["q95"], mean=r["mean"],
                      label=name) for name, r in summary.iterrows()]
        ax.bxp(stats, positions=pos, showfliers=False, showmeans=True, widths=0.6, patch_artist=True,
               boxprops=dict(facecolor=COLOURS["sky"], alpha=0.6),
               medianprops=dict(color=COLOURS["black"], gid="median"),
               meanprops=dict(marker="o", markerfacecolor=COLOURS["vermillion"], markeredgecolor="none", ms=3.5))
        ax.set_yscale("log")
    else:
        rng = np.random.default_rng(seed)
        data = []
        for t in sigma.values():
            v = t.flatten().numpy()
            if v.size > max_points:
                v = rng.choice(v, size=max_points, replace=False)
            data.append(np.log2(v))
        parts = ax.violinplot(data, positions=pos, widths=0.8, showmedians=True, showextrema=False)
        for body in parts["bodies"]:
            body.set(facecolor=COLOURS["sky"], edgecolor=COLOURS["blue"], alpha=0.6)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"$2^{{{v:.0f}}}$"))
    ax.set_xticks(pos, list(summary.index), rotation=60, ha="right", fontsize="x-small")
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_xlabel("tensor (network order)")
    ax.set_ylabel(_sigma_label(source, which) + (", log2 scale" if kind == "violin" else ", log scale"))
    return fig


def _colourbar(fig, ax, image, label):
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    bar.set_label(label)
    return bar


@styled
def plot_channel_heatmap(source, layer: str | None = None, round_index: int | None = None, ax=None, *,
                         which: str | None = None, log: bool = False, vmin: float | None = 0.0,
                         vmax: float | None = None):
    """Sigma of ``layer`` over output (rows) x input (columns) channels, averaged over the
    kernel taps (:func:`~pwfn_viz.analysis.tables.channel_sigma`). Default layer: the largest
    convolution weight; ``log`` uses a logarithmic colour scale. Colours run from ``vmin``
    (default 0) to ``vmax`` (default the largest cell); the colour bar states the cells' range."""
    sigma = sigma_tensors(source, round_index, which)
    layer = check_layer(sigma, layer) if layer is not None else tables.largest_conv(sigma)
    grid = tables.channel_sigma(sigma[layer]).numpy()
    out_c, in_c = grid.shape
    fig, ax = new_axes(ax, (min(8.0, 2.2 + 0.12 * in_c), min(7.0, 1.6 + 0.12 * out_c)))
    norm = _norm(grid, vmin, vmax, log)
    image = ax.imshow(grid, cmap=SEQUENTIAL_CMAP, aspect="auto", interpolation="nearest", norm=norm)
    what = f"mean {SYMBOL['sigma']} over kernel taps" if sigma[layer].dim() > 2 else SYMBOL["sigma"]
    _colourbar(fig, ax, image, f"{what}\n({_range_note(grid, norm)})")
    ax.set_xlabel("input channel")
    ax.set_ylabel("output channel")
    ax.set_title(f"{layer}: {_sigma_label(source, which)}")
    return fig


@styled
def plot_kernel_pattern(source, layer: str | None = None, round_index: int | None = None, ax=None, *,
                        which: str | None = None, annotate: bool = True, vmin: float | None = 0.0,
                        vmax: float | None = None):
    """Mean sigma at each kernel tap of ``layer``, or (``layer=None``) pooled over every
    convolution with the network's most common kernel shape (e.g. all 3x3 convolutions).
    Colours run from ``vmin`` (default 0: taps that differ by a percent look alike) to ``vmax``;
    each cell is annotated with its value and the colour bar states the cells' range."""
    sigma = sigma_tensors(source, round_index, which)
    if layer is not None:
        pattern, names = tables.kernel_pattern(sigma[check_layer(sigma, layer)]), [layer]
    else:
        pattern, names = tables.pooled_kernel_pattern(sigma)
    grid = pattern.numpy().reshape(pattern.shape[0], -1)
    fig, ax = new_axes(ax, (4.2, 3.6))
    norm = _norm(grid, vmin, vmax)
    image = ax.imshow(grid, cmap=SEQUENTIAL_CMAP, interpolation="nearest", norm=norm)
    if annotate and grid.size <= 49:
        for (i, j), v in np.ndenumerate(grid):   # dark text on the bright end of cividis
            ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize="x-small",
                    color="black" if norm(v) > 0.55 else "white")
    _colourbar(fig, ax, image, f"mean {SYMBOL['sigma']}\n({_range_note(grid, norm)})")
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.set_xlabel("kernel column")
    ax.set_ylabel("kernel row")
    what = names[0] if len(names) == 1 else f"{len(names)} convolutions"
    ax.set_title(f"{'x'.join(map(str, pattern.shape))} taps, {what}: {_sigma_label(source, which, 'mean')}")
    return fig


def _attention_of(source, num_heads, model=None):
    """``{attention module: heads or HeadLayout}`` (:func:`~pwfn_viz.analysis.heads.find_heads`) from
    ``model`` or the run's model, or from ``num_heads`` for every ``*.qkv.weight`` tensor when the
    source is a Round or a mapping. A run of your own model needs ``model`` (an unconverted instance)."""
    from ..analysis import heads
    if isinstance(source, Run):
        if model is None:
            source.require("plot_attention_heads", model=model)
            model = source.plain_model_at(None)   # rebuilt from the record's (validated) model spec
        return heads.with_heads(heads.find_heads(model), num_heads)
    if num_heads is None:
        raise ValueError("num_heads is needed when the source is not a Run (a Round or tensors do not know the model)")
    names = tables.resolve_round(source).names if not isinstance(source, Mapping) else list(source)
    return {n[: -len(".qkv.weight")]: num_heads for n in names if n.endswith(".qkv.weight")}


@styled
def plot_attention_heads(source, round_index: int | None = None, ax=None, *, which: str | None = None,
                         layer: str | None = None, num_heads: int | None = None, stat: str = "mean", model=None,
                         vmin: float | None = 0.0, vmax: float | None = None):
    """Heatmap of ``stat`` sigma per attention head (rows: layer / head) for q, k, v (rows of
    the fused qkv weight) and proj (its input columns), see
    :func:`~pwfn_viz.analysis.tables.attention_head_table`. ``layer`` (e.g. "blocks.0.attn") picks
    one attention module; ``num_heads`` is read from the model of a Run. Separate q, k, v Linear
    layers (Hugging Face) work too (:mod:`~pwfn_viz.analysis.heads`); a run of your own model needs
    ``model=`` (an unconverted instance of its architecture). Colours run from ``vmin`` (default 0)
    to ``vmax``."""
    from ..analysis.heads import head_table
    attention = _attention_of(source, num_heads, model)
    if not attention:
        raise ValueError("no attention layers (fused qkv + proj, or q/k/v Linear layers) in this model")
    if layer is not None:
        attention = {check_layer(attention, layer): attention[layer]}
    table = head_table(sigma_tensors(source, round_index, which), attention, stat)
    rows = len(table)
    fig, ax = new_axes(ax, (4.6, min(9.0, 1.4 + 0.24 * rows)))
    grid = table.to_numpy()
    norm = _norm(grid, vmin, vmax)
    image = ax.imshow(grid, cmap=SEQUENTIAL_CMAP, aspect="auto", interpolation="nearest", norm=norm)
    _colourbar(fig, ax, image, f"{stat} {SYMBOL['sigma']}\n({_range_note(grid, norm)})")
    ax.set_xticks(range(4), list(table.columns))
    ax.set_yticks(range(rows), [f"{lay} / h{h}" for lay, h in table.index], fontsize="x-small")
    ax.set_xlabel("projection")
    ax.set_ylabel("attention layer / head")
    ax.set_title(f"{_sigma_label(source, which, stat)} per head")
    return fig


@styled
def plot_fraction_fixed(run, ax=None):
    """Rounds (rows) x tensors (columns, network order) heatmap of the fraction of each tensor's
    weights fixed after the round's snap (:func:`~pwfn_viz.analysis.tables.fraction_fixed_table`)."""
    table = tables.fraction_fixed_table(run)
    n_rounds, n_layers = table.shape
    fig, ax = new_axes(ax, (max(4.5, 0.38 * n_layers + 2), max(2.6, 0.3 * n_rounds + 1.6)))
    image = ax.imshow(table.to_numpy(), cmap=SEQUENTIAL_CMAP, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    _colourbar(fig, ax, image, "fraction fixed")
    fractions = [f"{r} ({100 * run.rounds[i].fraction:g}%)" for i, r in enumerate(table.index)]
    ax.set_yticks(range(n_rounds), fractions, fontsize="x-small")
    ax.set_xticks(range(n_layers), list(table.columns), rotation=60, ha="right", fontsize="x-small")
    ax.set_xlabel("tensor (network order)")
    ax.set_ylabel("round (target fixed)")
    return fig
