"""Plots over run records (pure functions: take ``ax=``, return the Figure)."""
from .plots import plot_timeline

__all__ = ["plot_timeline"]
