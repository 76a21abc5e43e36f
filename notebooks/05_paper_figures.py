# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figures for a paper
#
# One call writes every figure of a run, in PNG (for slides), PDF and SVG (vector, for papers):
# `pwfn_viz.viz.write_figures(run, out_dir)`, or on the command line
#
# ```
# pwfn-viz figures runs/digits_cnn-digits-... --out figures/ [--formats png,pdf,svg] [--no-compare]
# ```
#
# This notebook makes a short run, writes its figures to a temporary folder, shows a few, and then builds a
# custom multi-panel figure from the same functions (each takes `ax=` and returns the Figure).
#
# The run uses the demo configuration (`RunConfig.demo()`): the paper's settings, except that training is
# counted in optimiser steps and sigma's learning rate is 100 times mu's, because sigma only learns with enough
# steps x learning rate (the paper trains about 30,000 steps a round on ImageNet; its three epochs are 36 steps
# on the digits data, and then every uncertainty figure would show sigma's initialisation). `PWFN_FAST=1` (the
# default) uses 60 steps a round after 15 pre-training epochs, `PWFN_FAST=0` the demo's 120.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.viz import (plot_fraction_fixed, plot_sigma_by_layer, plot_sigma_vs_mu, plot_timeline, style,
                          write_figures)

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full demo configuration
if FAST:
    config = RunConfig.demo(pretrain_epochs=15, first_round_steps=60, steps_per_round=60)
else:
    config = RunConfig.demo()
run = pwfn_viz.run(config, out_dir=tempfile.mkdtemp(prefix="pwfn-paper-") + "/digits", progress=False)

# %% [markdown]
# Before putting uncertainty figures in a paper, check that they show learned sigma and not its initialisation
# (rank correlation with the initial sigma near 1 means the latter); cite this line with them.

# %%
print(run.sigma_verdict_line())

# %% [markdown]
# ## Write every figure
# `comparison=True` (the default) also runs `pwfn_viz.compare(run, finetune=False)`, k-means at the PWFN
# result's budget, for the two comparison figures. In the fast configuration only the last round gets
# per-round figures (`rounds=None`, the default, gives every round).

# %%
out_dir = Path(tempfile.mkdtemp(prefix="pwfn-figures-"))
rounds = [len(run.rounds) - 1] if FAST else None
paths = write_figures(run, out_dir, formats=("png", "pdf", "svg"), rounds=rounds)
files = pd.DataFrame({"stem": [p.stem for p in paths], "format": [p.suffix[1:] for p in paths],
                      "kB": [round(p.stat().st_size / 1024) for p in paths]})
files.pivot(index="stem", columns="format", values="kB")

# %% [markdown]
# A few of them, as written (PNG at 200 dpi):

# %%
last = len(run.rounds) - 1
for stem in ["timeline", "sigma_by_layer", f"round_{last:02d}_sigma_vs_mu", "moves_vs_sigma"]:
    display(Image(filename=str(out_dir / f"{stem}.png"), width=640))

# %% [markdown]
# ## Your own multi-panel figure
# Every plot function takes `ax=`, so a paper figure is a grid of calls. Save it as PDF for LaTeX.

# %%
fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
plot_timeline(run, ax=axes[0, 0])
plot_sigma_by_layer(run, ax=axes[0, 1])
plot_sigma_vs_mu(run, round_index=0, ax=axes[1, 0])
plot_fraction_fixed(run, ax=axes[1, 1])
for ax, letter in zip(axes.flat, "abcd"):
    ax.set_title(f"({letter})", loc="left", fontweight="bold")
fig.savefig(out_dir / "panel.pdf")
print(sorted(p.name for p in out_dir.glob("panel.*")))

# %% [markdown]
# ## Style
# All figures share one colour-blind-safe look (the Okabe-Ito palette, the `cividis` colour map, seaborn's
# `ticks` style in the `paper` context), applied inside each call: importing `pwfn_viz` never changes
# matplotlib's global settings. For slides, wrap the calls in `style("talk")`: an outer `style` wins.

# %%
with style("talk"):
    fig = plot_timeline(run)
    fig.set_size_inches(9, 5)
