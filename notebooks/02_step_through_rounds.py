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
# # Step through the rounds of a PWFN run
#
# Probabilistic weight fixing snaps a network's weights to a few shared values in rounds. Before each
# snap every weight has a mean `mu` and an uncertainty `sigma`; a weight may move to a centre `c` only if
# `|mu - c| <= delta * sigma`. This notebook looks at a recorded run round by round with four widgets
# (`pwfn_viz.widgets`), all thin layers over the package's plots and functions:
#
# 1. **RoundExplorer**: a round slider and a layer selector; sigma against mu before the snap (with the
#    centres the round chose and the band each accepts), the timeline with the round marked, and the
#    greedy-step table of the round.
# 2. **UncertaintyExplorer**: pick a layer, an output channel or a kernel tap; see the weights' sigma against
#    their value and their position, and follow one weight through every round.
# 3. **WhatIf**: re-cluster a round's stored mu and sigma with another `delta`, zero threshold or fraction,
#    live, without retraining.
# 4. **CompareExplorer**: PWFN against k-means weight sharing at any `k`.
#
# Every widget can also be driven from Python (set a control's `.value`; the outputs follow).

# %% [markdown]
# ## A run to look at
# The run uses the demo configuration (`RunConfig.demo()`, what `make run` runs): the paper's settings, except
# that training is counted in optimiser steps and sigma's learning rate is 100 times mu's. Sigma only learns
# with enough steps x learning rate: the paper trains about 30,000 steps a round on ImageNet, but its three
# epochs are only 36 steps on the digits data, and then every uncertainty view below would show sigma's
# initialisation. `PWFN_FAST=1` (the default) uses 60 steps a round after 15 pre-training epochs (about 15 s on
# a laptop CPU); `PWFN_FAST=0` the demo's 120 steps a round (under a minute). To look at a run of your own
# instead, set `PWFN_RUN_DIR` to its directory (written by `pwfn-viz run`).

# %%
import os
import tempfile

import pwfn_viz
from pwfn_viz.analysis.tables import config_summary
from pwfn_viz.widgets import CompareExplorer, RoundExplorer, UncertaintyExplorer, WhatIf, weight_trajectory

FAST = os.environ.get("PWFN_FAST", "1") != "0"
RUN_DIR = os.environ.get("PWFN_RUN_DIR")
if RUN_DIR:
    run = pwfn_viz.load_run(RUN_DIR)
else:
    if FAST:
        config = pwfn_viz.RunConfig.demo(pretrain_epochs=15, first_round_steps=60, steps_per_round=60)
    else:
        config = pwfn_viz.RunConfig.demo()
    run = pwfn_viz.run(config, out_dir=f"{tempfile.mkdtemp(prefix='pwfn-rounds-')}/digits", progress=False)
config_summary(run)

# %% [markdown]
# The run round by round: the share of weights fixed, test accuracy before and after each snap, the codebook
# size and its entropy (`run.table()` has every recorded column), and whether sigma has learned.

# %%
print(run.sigma_verdict_line())
run.table()[["fraction", "top1_before", "top1_after", "unique", "entropy"]].round(2)

# %% [markdown]
# ## Everything at once: the dashboard
# One slider (and a **Play** button) drives every round view of the run; the panels wrap under each other in a
# narrow window. Each figure is live: hover a point for its tensor, index, `mu`, `sigma`, centre and the round
# it was fixed; click to follow a weight through the rounds; zoom and pan with the toolbar. `save("x.pdf")`
# on any widget writes what it shows. `pwfn_viz.widgets.side_by_side(run_a, run_b)` puts two runs under one
# slider (PWFN against WFN, two seeds, two deltas).

# %%
run.dashboard()

# %% [markdown]
# ## Round by round
# Move the **round** slider. The label gives the share of weights fixed after that round's snap, the test
# accuracy before and after it, and the codebook size. In the left plot every point is a weight (before the
# snap): grey ones were fixed in an earlier round, orange ones this round, blue ones stay free. The centres
# the greedy clustering chose are ticks along the `mu` axis, only those in view; hover or pick a weight to see
# the band `sigma >= |mu - c| / delta` of its centre. Pick a **layer** to see one tensor (the centres stay the
# network's: clustering is global). The line above the plots says whether sigma has learned by that round, in
# the network and in the layer shown (rank correlation with the initial sigma, median change): where it has
# not, the sigma in the plot is still its initialisation.

# %%
RoundExplorer(run)

# %% [markdown]
# ## Where the uncertainty sits, and one weight's story
# Pick a layer, then narrow it to one **output channel** and/or one **kernel tap**. Left: sigma against value;
# right: sigma by position (a heatmap over the remaining dimensions). The **weight** slider picks one weight
# of the selection (ringed in both plots); below, its trajectory: `mu` before and after every snap with its
# `sigma` band, and the value it was fixed to and when. Its diagnostic line says, for the layer, whether sigma
# has learned.

# %%
UncertaintyExplorer(run, layer="conv2.weight")

# %% [markdown]
# The trajectory is a plain function of the run record, usable without the widget:

# %%
weight_trajectory(run, "conv2.weight", (3, 5, 1, 1))

# %% [markdown]
# ## What if the round had used other settings?
# `WhatIf` takes the stored pre-snap `mu` and `sigma` of a round and clusters them again with
# `pwfn_viz.cluster_round`: **delta** is the starting band width in sigmas, **zero 2^-b** the threshold below
# which a weight counts as zero, **fraction** the share of weights to fix. It reports unique values, entropy
# and the test accuracy with the snapped values loaded into the network of that round, next to what the run
# recorded. With the run's own settings it reproduces the recorded round exactly.

# %%
WhatIf(run, round_index=-1)

# %% [markdown]
# ## PWFN against k-means at any k
# k-means weight sharing of the starting network (one codebook, the chosen init, no fine-tuning here), against
# PWFN's final network: accuracy, codebooks and the weight error of every layer.
# `notebooks/04_pwfn_vs_kmeans.ipynb` has the full comparison at equal budgets, with fine-tuning.

# %%
CompareExplorer(run)
