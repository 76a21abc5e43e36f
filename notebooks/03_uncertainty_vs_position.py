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
# # Uncertainty against position: where in the network may weights move?
#
# PWFN gives every weight a mean `mu` and a learned uncertainty `sigma`. A weight with a large sigma
# tolerates noise, so the clustering may move it far; one with a small sigma must stay close to its value.
# This notebook asks **where** in the network the large and small sigmas sit:
#
# 1. per layer, in network order,
# 2. over the output x input channels of one convolution,
# 3. over the taps of the 3x3 kernels,
# 4. and how that shows in the order in which layers get fixed, round by round.
#
# A picture of sigma only tells something about the network once sigma has learned. At conversion sigma is a
# formula of each weight's value (its distance to the powers of two around it, docs/method.md section 2), and
# a picture of that formula has a pattern too: the initialisation's. So every picture below comes in a pair,
# the learned sigma on the left and the **initial** sigma (`which="initial"`) on the right, with the
# diagnostic of the layers it shows: structure that only the left picture has is what training put there.
#
# Every figure is one call to a function of `pwfn_viz.viz`, and every figure is backed by a table in
# `pwfn_viz.analysis.tables` that you can print instead.

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import pandas as pd

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.analysis import tables
from pwfn_viz.viz import (plot_channel_heatmap, plot_fraction_fixed, plot_kernel_pattern, plot_sigma_by_layer,
                          plot_sigma_vs_mu)

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full demo configuration
if FAST:
    config = RunConfig.demo(pretrain_epochs=15, first_round_steps=60, steps_per_round=60)
else:
    config = RunConfig.demo()
run = pwfn_viz.run(config, out_dir=tempfile.mkdtemp(prefix="pwfn-position-") + "/digits", progress=False)

# %% [markdown]
# ## Has sigma learned?
# The run uses the demo configuration: the paper's settings, except that training is counted in optimiser
# steps (60 a round here, 120 with `PWFN_FAST=0`) and sigma's learning rate is 100 times mu's. Sigma only
# moves with enough steps x learning rate: the paper trains about 30,000 steps a round on ImageNet, while the
# paper's three epochs are 36 steps a round on the digits data, and with those sigma stays its initialisation.
#
# One row per round: over the weights still free before that round's snap, how far sigma is from its initial
# value (median relative change), whether it still orders the weights as the initialisation did (Spearman rank
# correlation: 1.0 means the same ordering), and in how many layers it learned.

# %%
print(run.sigma_verdict_line())
run.sigma_learning()

# %% [markdown]
# The same diagnostic per tensor, for round 0, when every weight is still free. It is printed again next to
# each picture below, for the layers that picture shows.

# %%
diagnostic = run.sigma_learning_layers(0).set_index("layer")[["sigma_n_free", "sigma_median_change",
                                                              "sigma_rank_corr", "sigma_learned"]]
diagnostic.round(2)

# %% [markdown]
# ## Which sigma?
# A weight's sigma changes over the run: it is trained between rounds, and when the weight is snapped to a
# shared value its sigma is reset (to the spread of the weights that joined it). The position plots therefore
# take `which`:
#
# - `"learned"` (the default for a run): each weight's sigma **just before the snap that fixed it**: what the
#   clustering actually used to decide about that weight;
# - `"pre"` / `"post"`: a given round's sigma before / after its snap;
# - `"initial"`: the sigma at conversion, before any training (`run.initial_sigma`).
#
# The quartiles of both, per tensor. `9.3e-10` is 2^-30, the smallest sigma sampling uses: training pushed
# these weights' sigma to zero or below, so for the clustering they are as certain as a weight can be.

# %%
sigma = tables.sigma_tensors(run)                            # {tensor name: learned sigma}, network order
initial = tables.sigma_tensors(run, which="initial")         # {tensor name: sigma at conversion}
quartiles = ["q25", "median", "q75"]
pd.concat({"learned": tables.sigma_summary(sigma)[quartiles], "initial": tables.sigma_summary(initial)[quartiles]},
          axis=1)

# %% [markdown]
# ## 1. Per layer, in network order
# Boxes span the quartiles, whiskers the 5th to 95th percentiles, the dot is the mean (log scale, one axis for
# both panels).

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
plot_sigma_by_layer(run, ax=axes[0])
plot_sigma_by_layer(run, which="initial", ax=axes[1])
axes[0].set_title("learned sigma")
axes[1].set_title("initial sigma");
diagnostic[["sigma_median_change", "sigma_rank_corr"]].round(2).T

# %% [markdown]
# **Reading it.** On the right every layer looks the same: the initialisation scales each tensor so that its
# 75th percentile is 0.0025, whatever the layer does. On the left the layers differ, and the rank correlations
# with the initial sigma are far from 1 (between about 0.05 and 0.26 for every tensor but one): this is
# learned. In the fast run more than three quarters of `conv1`'s weights sit at the floor (the first
# convolution tolerates the least noise), `fc` follows, then `conv2`; `conv3`, the largest layer, keeps the
# largest sigma. Most layers split in two: a share at the floor and the rest above the initial values. The
# exception is `conv1.bias`: its rank correlation with the initial sigma is about 0.9, so its ordering is still
# mostly the initialisation's. With `PWFN_FAST=0` fewer weights reach the floor, and `conv1`'s weights still
# have the smallest sigma.
#
# The same tensors before and after the first snap: after it, the weights fixed in round 0 (a fifth of the
# network) carry the spread of their group (often tiny), the free weights keep their trained sigma.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
plot_sigma_by_layer(run, round_index=0, which="pre", ax=axes[0])
plot_sigma_by_layer(run, round_index=0, which="post", ax=axes[1])
axes[0].set_title("round 0, before the snap")
axes[1].set_title("round 0, after the snap");

# %% [markdown]
# ## 2. Over output x input channels
# Each cell is the mean sigma of the nine kernel taps connecting one input channel to one output channel.
# Bright rows are output channels whose filters tolerate noise as a whole. Each panel has its own colour
# scale: compare the patterns, not the colours.

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), layout="constrained")
for row, name in zip(axes, ["conv2.weight", "conv3.weight"]):
    plot_channel_heatmap(run, name, ax=row[0])
    plot_channel_heatmap(run, name, which="initial", ax=row[1])
diagnostic.loc[["conv2.weight", "conv3.weight"], ["sigma_median_change", "sigma_rank_corr"]].round(2)

# %% [markdown]
# A picture of averages always shows some pattern, even when position does not matter at all. To tell
# structure from noise, `tables.position_spread_table` measures how much the mean sigma varies from one output
# channel to the next, from one input channel to the next and from one kernel tap to the next (standard
# deviation over mean). Below each sigma's row, `shuffled q95`: the same values put at random positions 100
# times, the spread that only 5 % of those random placements exceed. A spread above its `shuffled q95` is
# structure by position; one below it is what noise gives.

# %%
spread = tables.position_spread_table({"learned": sigma, "initial": initial},
                                      layers=["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"])
spread.round(3)

# %% [markdown]
# **Reading it.** Cell by cell, both kinds of picture are mostly noise. Every spread of the initial sigma is
# below its `shuffled q95`: the initial channel pictures are noise around one level, a few percent. The learned
# sigma's **output channels** of `conv2` and `conv3` spread more than random placement does (about 0.21 and
# 0.22 against 0.17 and 0.12 in the fast run), and so do `conv3`'s input channels (0.18 against 0.12): whole
# filters have learned to be more or less tolerant, which shows as rows of the learned pictures, not as single
# cells. `conv1`'s output channels, `conv2`'s input channels and `fc`'s rows and columns stay below their
# `shuffled q95` in this run: there the picture is noise.
#
# The output channels of `conv3` with the smallest and the largest mean sigma, learned and initial (the most
# and the least certain filters differ by a factor of about 2.5 in learned sigma, 1.08 in initial sigma):

# %%
for label, tensors in [("learned", sigma), ("initial", initial)]:
    per_output = tables.channel_sigma(tensors["conv3.weight"]).mean(dim=1)
    order = per_output.argsort()
    print(f"{label:8s} most certain {order[:5].tolist()}, least certain {order[-5:].tolist()}, "
          f"largest / smallest mean {(per_output.max() / per_output.min()).item():.2f}")

# %% [markdown]
# ## 3. Over the kernel taps
# The mean sigma at each of the nine positions of a 3x3 kernel, pooled over all three convolutions (learned,
# initial), then per convolution (learned in the upper row, initial in the lower row).

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
plot_kernel_pattern(run, ax=axes[0])
plot_kernel_pattern(run, which="initial", ax=axes[1])

fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
for col, name in enumerate(["conv1.weight", "conv2.weight", "conv3.weight"]):
    plot_kernel_pattern(run, name, ax=axes[0, col])
    plot_kernel_pattern(run, name, which="initial", ax=axes[1, col])
diagnostic.loc[["conv1.weight", "conv2.weight", "conv3.weight"], ["sigma_median_change", "sigma_rank_corr"]].round(2)

# %% [markdown]
# **Reading it.** Sigma has learned in all three convolutions (see the diagnostic), but not by kernel tap: in
# the `kernel_taps` column of the table above the learned sigma stays below its `shuffled q95` in every
# convolution. The pooled learned pattern varies by several percent around its mean, as randomly placed values
# do; the initial pattern is flat to about 2 %, the initialisation's own noise. `conv1`'s striking pattern (taps
# near zero next to taps with a large sigma) rests on only 16 weights per tap, three quarters of them at the
# floor: random placements of the same values spread as much. In this network, where a weight sits in its
# kernel does not decide how far it may move; which layer and which output channel it belongs to does.

# %% [markdown]
# ## 4. Which layers get fixed first
# Every round fixes a growing fraction of *all* weights, globally: a layer whose weights sit close to shared
# values (relative to their sigma) is fixed early. Rows are rounds (with the target fraction), columns tensors.

# %%
fig = plot_fraction_fixed(run)
tables.fraction_fixed_table(run).round(2)

# %% [markdown]
# ## Position meets value
# Finally, sigma against mu for one round: the vertical lines are the centres the round chose, the wedges the
# weights each centre accepts (`|mu - c| <= delta * sigma`). Restricting to one layer shows where its weights
# sit in those bands.

# %%
fig = plot_sigma_vs_mu(run, round_index=0)
fig = plot_sigma_vs_mu(run, round_index=len(run.rounds) // 2, layer="conv3.weight")

# %% [markdown]
# ## On the command line
# `pwfn-viz figures RUN_DIR --out figures/` writes all of these (and the other figures of a run) as PNG, PDF
# and SVG; notebook 05 shows how.
