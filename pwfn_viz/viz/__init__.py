"""Plots over run records (pure functions: take ``ax=``, return the Figure)."""
from .analyse_plots import plot_noise_accuracy, plot_reliability
from .compare_plots import plot_codebooks, plot_moves_vs_sigma
from .plots import plot_timeline

__all__ = ["plot_codebooks", "plot_moves_vs_sigma", "plot_noise_accuracy", "plot_reliability", "plot_timeline"]
