"""Plots over run records (pure functions: take ``ax=``, return the Figure).

* round timeline, greedy steps and codebooks of a round: :mod:`~pwfn_viz.viz.plots`
* sigma against mu with the acceptance bands: :mod:`~pwfn_viz.viz.uncertainty`
* sigma against position in the network: :mod:`~pwfn_viz.viz.position`
* PWFN against k-means: :mod:`~pwfn_viz.viz.compare_plots`; noise and calibration: :mod:`~pwfn_viz.viz.analyse_plots`
* the numbers behind the plots: :mod:`~pwfn_viz.analysis.tables`; the look: :mod:`~pwfn_viz.viz.style`
* every figure of a run in one call: :func:`write_figures` (``pwfn-viz figures RUN_DIR --out DIR``)
* paper sizes and fonts: ``style(venue="neurips")`` and :func:`figsize` (:data:`~pwfn_viz.viz.style.VENUES`)
* who wins a comparison, as sentences written from the numbers: :mod:`~pwfn_viz.viz.verdicts`
"""
from .analyse_plots import plot_noise_accuracy, plot_reliability
from .compare_plots import plot_codebooks, plot_moves_vs_sigma
from .figures import write_figures
from .plots import (plot_greedy_steps, plot_round_codebook, plot_step_centres, plot_step_counts, plot_step_growth,
                    plot_timeline, plot_value_histograms)
from .position import (plot_attention_heads, plot_channel_heatmap, plot_fraction_fixed, plot_kernel_pattern,
                       plot_sigma_by_layer)
from .style import VENUES, figsize, style
from .uncertainty import plot_sigma_vs_mu

__all__ = ["plot_attention_heads", "plot_channel_heatmap", "plot_codebooks", "plot_fraction_fixed",
           "plot_greedy_steps", "plot_kernel_pattern", "plot_moves_vs_sigma", "plot_noise_accuracy",
           "plot_reliability", "plot_round_codebook", "plot_sigma_by_layer", "plot_sigma_vs_mu",
           "plot_step_centres", "plot_step_counts", "plot_step_growth", "plot_timeline", "plot_value_histograms",
           "style", "write_figures", "VENUES", "figsize"]
