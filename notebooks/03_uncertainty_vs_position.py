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
# Every figure is one call to a function of `pwfn_viz.viz`, and every figure is backed by a table in
# `pwfn_viz.analysis.tables` that you can print instead. Set `PWFN_FAST=0` for the full-length run (paper
# schedule: three epochs between rounds).

# %%
import os
import tempfile

import matplotlib.pyplot as plt

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.viz import (plot_channel_heatmap, plot_fraction_fixed, plot_kernel_pattern, plot_sigma_by_layer,
                          plot_sigma_vs_mu, tables)

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full-length run
config = RunConfig(model="digits_cnn", pretrain_epochs=15 if FAST else 40, epochs_per_round=0.5 if FAST else 3,
                   threads=1)
run = pwfn_viz.run(config, out_dir=tempfile.mkdtemp(prefix="pwfn-position-") + "/digits", progress=False)

# %% [markdown]
# ## Which sigma?
# A weight's sigma changes over the run: it is trained between rounds, and when the weight is snapped to a
# shared value its sigma is reset (to the spread of the weights that joined it). The position plots therefore
# take `which`:
#
# - `"learned"` (the default for a run): each weight's sigma **just before the snap that fixed it**: what the
#   clustering actually used to decide about that weight;
# - `"pre"` / `"post"`: a given round's sigma before / after its snap.
#
# The table below summarises the learned sigma of every tensor, in network order. A caution when reading the
# fast configuration: sigma has trained for only half an epoch per round, so it still mostly reflects its
# initialisation (which depends on where each `mu` sits between two powers of two) and the layers look alike.
# With `PWFN_FAST=0` (three epochs per round) the differences between layers, channels and taps grow.

# %%
sigma = tables.sigma_tensors(run)              # {tensor name: learned sigma}, network order
tables.sigma_summary(sigma)

# %% [markdown]
# ## 1. Per layer, in network order
# Boxes span the quartiles, whiskers the 5th to 95th percentiles, the dot is the mean (log scale).

# %%
fig = plot_sigma_by_layer(run)

# %% [markdown]
# The same tensors before and after the first snap: after it, the fixed half of each tensor carries the spread
# of its group (often tiny), the free half keeps its trained sigma.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
plot_sigma_by_layer(run, round_index=0, which="pre", ax=axes[0])
plot_sigma_by_layer(run, round_index=0, which="post", ax=axes[1])
axes[0].set_title("round 0, before the snap")
axes[1].set_title("round 0, after the snap");

# %% [markdown]
# ## 2. Over output x input channels
# Each cell is the mean sigma of the nine kernel taps connecting one input channel to one output channel.
# Bright rows are output channels whose filters tolerate noise as a whole.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
plot_channel_heatmap(run, "conv2.weight", ax=axes[0])
plot_channel_heatmap(run, "conv3.weight", ax=axes[1]);

# %% [markdown]
# The numbers behind the right panel: the output channels of `conv3` with the largest and the smallest mean
# sigma.

# %%
per_output = tables.channel_sigma(sigma["conv3.weight"]).mean(dim=1)
order = per_output.argsort()
print("most certain output channels:  ", order[:5].tolist())
print("least certain output channels: ", order[-5:].tolist())

# %% [markdown]
# ## 3. Over the kernel taps
# The mean sigma at each of the nine positions of a 3x3 kernel, pooled over all three convolutions, then per
# convolution.

# %%
fig = plot_kernel_pattern(run)

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
for ax, name in zip(axes, ["conv1.weight", "conv2.weight", "conv3.weight"]):
    plot_kernel_pattern(run, name, ax=ax)

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
