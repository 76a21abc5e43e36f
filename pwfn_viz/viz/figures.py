"""Every figure of a run, written to a folder in the formats a paper needs.

    >>> import pwfn_viz
    >>> from pwfn_viz.viz.figures import write_figures
    >>> paths = write_figures(pwfn_viz.load_run("runs/digits"), "figures/")     # doctest: +SKIP

or, on the command line, ``pwfn-viz figures RUN_DIR --out figures/ --venue neurips``. With a
``venue`` (:data:`~pwfn_viz.viz.style.VENUES`) every figure is as wide as the venue's text (or,
``width="column"``, one column) and its text has its print size (7-8 pt). The figures (one file
per format each; ``NN`` is a round index; by default the first and the last round, ``rounds="all"``
for every one):

========================  =====================================================================
timeline                  top-1 before/after each snap, unique values, entropy per round
fraction_fixed            rounds x tensors: fraction of each tensor fixed
sigma_by_layer            learned sigma per tensor, network order
sigma_channels            learned sigma over output x input channels of one convolution
kernel_pattern            mean learned sigma per kernel tap (convolutional networks)
attention_heads           mean learned sigma per head of q, k, v, proj (transformers)
round_NN_sigma_vs_mu      pre-snap sigma against mu, centres and their acceptance bands
round_NN_greedy_steps     centres in the order chosen, weights taken, P and delta growth
round_NN_histograms       weight values before and after the snap
round_NN_codebook         the shared values after the snap and their counts
codebooks_vs_kmeans       PWFN's codebook against k-means' at the same budget (comparison)
moves_vs_sigma            |change of weight| against sigma, PWFN and k-means (comparison)
========================  =====================================================================

The two comparison figures need :func:`pwfn_viz.analysis.compare` (k-means at the PWFN final round's
budget, without fine-tuning here); pass ``comparison=False`` to skip them or a ready
:class:`~pwfn_viz.analysis.compare.Comparison` to reuse one.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureCanvasBase
from tqdm.auto import tqdm

from . import plots, position, uncertainty
from ..analysis import tables
from .style import finish, get_venue, scaled_figsize, style

__all__ = ["write_figures", "FORMATS", "default_rounds"]

FORMATS = ("png", "pdf", "svg")


def default_rounds(n_rounds: int) -> list[int]:
    """The rounds that get per-round figures by default: the first (the largest snap, decided by
    sigma learned before any fixing) and the last (the final codebook). Ten rounds of four figures
    in three formats are 120 files nobody reads; ``rounds="all"`` asks for them."""
    return sorted({0, n_rounds - 1}) if n_rounds else []


def _run_figures(run, layer):
    """(stem, function making the figure) of the run-level figures that apply to this run."""
    sigma = tables.sigma_tensors(run)
    has_conv = any(t.dim() == 4 for t in sigma.values())
    out = [("timeline", lambda: plots.plot_timeline(run)),
           ("fraction_fixed", lambda: position.plot_fraction_fixed(run)),
           ("sigma_by_layer", lambda: position.plot_sigma_by_layer(sigma, which="learned"))]
    if layer is not None or has_conv:
        chosen = tables.check_layer(sigma, layer) if layer is not None else tables.largest_conv(sigma)
        out.append(("sigma_channels", lambda: position.plot_channel_heatmap(sigma, chosen, which="learned")))
    if has_conv and any(t.dim() >= 3 and t[0, 0].numel() > 1 for t in sigma.values()):
        out.append(("kernel_pattern", lambda: position.plot_kernel_pattern(sigma, which="learned")))
    if (run.meta.get("model_spec") or {}).get("name") and position._attention_of(run, None):   # a registered model
        out.append(("attention_heads", lambda: position.plot_attention_heads(run)))
    return out


def _round_figures(rnd):
    i = rnd.index
    return [(f"round_{i:02d}_sigma_vs_mu", lambda: uncertainty.plot_sigma_vs_mu(rnd)),
            (f"round_{i:02d}_greedy_steps", lambda: plots.plot_greedy_steps(rnd)),
            (f"round_{i:02d}_histograms", lambda: plots.plot_value_histograms(rnd)),
            (f"round_{i:02d}_codebook", lambda: plots.plot_round_codebook(rnd))]


def _comparison_figures(comparison):
    from .compare_plots import plot_codebooks, plot_moves_vs_sigma
    methods = [m for m in ("kmeans@unique", "kmeans@entropy") if m in comparison.weights]
    pwfn = comparison.table["method"].iloc[0]

    def codebooks():
        fig, axes = plt.subplots(len(methods), 1, figsize=scaled_figsize((7, 2.8 * len(methods))), sharex=True,
                                 layout="constrained", squeeze=False)
        for ax, m in zip(axes[:, 0], methods):
            plot_codebooks(comparison, [pwfn, m], ax=ax, title=f"{pwfn} against {m}")
        return fig

    def moves():
        fig, axes = plt.subplots(1, len(methods), figsize=scaled_figsize((5 * len(methods), 4.5)), sharey=True,
                                 layout="constrained", squeeze=False)
        for ax, m in zip(axes[0], methods):
            plot_moves_vs_sigma(comparison, [pwfn, m], ax=ax, title=f"{pwfn} against {m}")
        return fig
    return [("codebooks_vs_kmeans", codebooks), ("moves_vs_sigma", moves)]


def _rasterize_dense(fig, above: int = 2000):
    """Draw scatter layers of more than ``above`` points as an image inside PDF/SVG files (axes,
    text and lines stay vector): files stay small and quick to open."""
    for ax in fig.axes:
        for coll in ax.collections:
            if len(coll.get_offsets()) > above:
                coll.set_rasterized(True)


def _save_all(fig, paths, dpi) -> None:
    """Save ``fig`` to each of ``paths``, laying it out once: the first save runs the constrained
    layout, the others keep its result instead of running it again inside their own draw (which
    made a three-format export lay every figure out three times)."""
    for i, path in enumerate(paths):
        fig.savefig(path, dpi=dpi)
        if i == 0 and fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")


def write_figures(run, out_dir, formats=FORMATS, *, rounds=None, layer: str | None = None,
                  comparison=True, only=None, dpi: int = 200, progress: bool = False, venue=None,
                  width="text") -> list[Path]:
    """Write every figure of ``run`` (a Run or a run directory) into ``out_dir`` as
    ``<stem>.<format>`` for each of ``formats``; returns the paths written, in order.

    ``rounds``: round indices for the per-round figures (default :func:`default_rounds`: the first
    and the last; "all" for every round); ``venue``/``width``: size and fonts for a paper
    (:func:`~pwfn_viz.viz.style.style`); ``progress``: a progress bar, one step per figure; ``layer``:
    the tensor of the channel heatmap (default: the largest convolution); ``comparison``: True runs
    ``pwfn_viz.compare(run, finetune=False)`` (skipped for a run of your own model, which the
    record cannot rebuild), False skips the comparison figures, a
    :class:`~pwfn_viz.analysis.compare.Comparison` is used as it is; ``only``: write just these stems
    (see the table above).
    """
    from ..record.rundir import Run, load_run
    run = run if isinstance(run, Run) else load_run(run)
    formats = tuple(formats)
    bad = [f for f in formats if f not in FigureCanvasBase.get_supported_filetypes()]
    if bad or not formats:
        raise ValueError(f"unknown format(s) {bad or formats}; use some of {FORMATS}")
    tables.resolve_round(run)    # a clear error for a run without rounds
    if venue is not None:
        get_venue(venue).width(width)   # a bad venue or width fails now, not after the comparison
    if rounds is None:
        rounds = default_rounds(len(run.rounds))
    elif isinstance(rounds, str):
        if rounds != "all":
            raise ValueError(f"rounds={rounds!r}: give round indices or 'all'")
        rounds = range(len(run.rounds))
    picked = [tables.resolve_round(run, i) for i in rounds]
    jobs = _run_figures(run, layer)
    for rnd in picked:
        jobs += _round_figures(rnd)
    if only is not None:
        known = [stem for stem, _ in jobs] + ["codebooks_vs_kmeans", "moves_vs_sigma"]
        unknown = sorted(set(only) - set(known))
        if unknown:
            raise ValueError(f"no figure(s) {unknown} for this run; it has {known}")
        jobs = [(stem, make) for stem, make in jobs if stem in only]
        comparison = comparison if {"codebooks_vs_kmeans", "moves_vs_sigma"} & set(only) else False
    if comparison is True and not (run.meta.get("model_spec") or {}).get("name"):
        comparison = False   # your own model: the comparison needs it and your data (pwfn_viz.compare)
    if comparison is True:
        from ..analysis.compare import compare
        comparison = compare(run, finetune=False, progress=progress)
    if comparison is not False and comparison is not None:
        jobs += [(stem, make) for stem, make in _comparison_figures(comparison) if only is None or stem in only]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(jobs, desc="figures", unit="figure", disable=not progress, leave=False)
    with style(venue=venue, width=width):
        for stem, make in bar:
            bar.set_postfix_str(stem, refresh=False)
            fig = make()
            try:
                if venue is not None:
                    finish(fig)   # composed figures (the comparison) are not styled plot functions
                _rasterize_dense(fig)
                paths = [out / f"{stem}.{fmt}" for fmt in formats]
                _save_all(fig, paths, dpi)
                written += paths
            finally:
                plt.close(fig)
    return written
