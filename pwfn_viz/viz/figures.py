"""Every figure of a run, written to a folder in the formats a paper needs.

    >>> import pwfn_viz
    >>> from pwfn_viz.viz.figures import write_figures
    >>> paths = write_figures(pwfn_viz.load_run("runs/digits"), "figures/")     # doctest: +SKIP

or, on the command line, ``pwfn-viz figures RUN_DIR --out figures/``. The figures (one file per
format each; ``NN`` is a round index):

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

from . import plots, position, uncertainty
from ..analysis import tables
from .style import style

__all__ = ["write_figures", "FORMATS"]

FORMATS = ("png", "pdf", "svg")


def _run_figures(run, layer):
    """(stem, function making the figure) of the run-level figures that apply to this run."""
    sigma = tables.sigma_tensors(run)
    has_conv = any(t.dim() == 4 for t in sigma.values())
    out = [("timeline", lambda: plots.plot_timeline(run)),
           ("fraction_fixed", lambda: position.plot_fraction_fixed(run)),
           ("sigma_by_layer", lambda: position.plot_sigma_by_layer(sigma))]
    if layer is not None or has_conv:
        chosen = tables.check_layer(sigma, layer) if layer is not None else tables.largest_conv(sigma)
        out.append(("sigma_channels", lambda: position.plot_channel_heatmap(sigma, chosen)))
    if has_conv and any(t.dim() >= 3 and t[0, 0].numel() > 1 for t in sigma.values()):
        out.append(("kernel_pattern", lambda: position.plot_kernel_pattern(sigma)))
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
        fig, axes = plt.subplots(len(methods), 1, figsize=(7, 2.8 * len(methods)), sharex=True,
                                 layout="constrained", squeeze=False)
        for ax, m in zip(axes[:, 0], methods):
            plot_codebooks(comparison, [pwfn, m], ax=ax)
            ax.set_title(f"{pwfn} against {m}")
        return fig

    def moves():
        fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4.5), sharey=True,
                                 layout="constrained", squeeze=False)
        for ax, m in zip(axes[0], methods):
            plot_moves_vs_sigma(comparison, [pwfn, m], ax=ax)
            ax.set_title(f"{pwfn} against {m}")
        return fig
    return [("codebooks_vs_kmeans", codebooks), ("moves_vs_sigma", moves)]


def _rasterize_dense(fig, above: int = 2000):
    """Draw scatter layers of more than ``above`` points as an image inside PDF/SVG files (axes,
    text and lines stay vector): files stay small and quick to open."""
    for ax in fig.axes:
        for coll in ax.collections:
            if len(coll.get_offsets()) > above:
                coll.set_rasterized(True)


def write_figures(run, out_dir, formats=FORMATS, *, rounds=None, layer: str | None = None,
                  comparison=True, only=None, dpi: int = 200, progress: bool = False) -> list[Path]:
    """Write every figure of ``run`` (a Run or a run directory) into ``out_dir`` as
    ``<stem>.<format>`` for each of ``formats``; returns the paths written, in order.

    ``rounds``: round indices for the per-round figures (default: every round); ``layer``: the
    tensor of the channel heatmap (default: the largest convolution); ``comparison``: True runs
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
    picked = [tables.resolve_round(run, i) for i in (rounds if rounds is not None else range(len(run.rounds)))]
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
    with style():
        for stem, make in jobs:
            fig = make()
            _rasterize_dense(fig)
            try:
                for fmt in formats:
                    path = out / f"{stem}.{fmt}"
                    fig.savefig(path, dpi=dpi)
                    written.append(path)
            finally:
                plt.close(fig)
            if progress:
                print(f"wrote {stem}.{{{','.join(formats)}}}")
    return written
