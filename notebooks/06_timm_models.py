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
# # timm models: a ResNet and a Vision Transformer through the whole pipeline
#
# Any timm model name works in `RunConfig(model=...)`: every convolution and linear layer is converted, trained
# with its uncertainty, fixed in rounds and recorded, and every plot works on the record. To keep this notebook
# quick, both models are **reduced** (one block per stage, narrow channels; two transformer blocks) and start
# from random weights, and the data are the embedded digits resized to 32x32 with three channels
# (`RunConfig(dataset="digits", image_size=32, in_chans=3)`). With `PWFN_FAST=0` they train longer and go
# through the paper's ten rounds.
#
# Both runs use the demo configuration (`RunConfig.demo(...)`): the paper's settings, except that training is
# counted in optimiser steps and sigma's learning rate is 100 times mu's. Sigma only learns with enough steps x
# learning rate (the paper trains about 30,000 steps a round on ImageNet; its three epochs are 36 steps on the
# digits data). Here the fast runs get only 20 steps a round (`PWFN_FAST=0`: the demo's 120), so each run shows
# its diagnostic: whether sigma has left its initialisation, and when.

# %%
import os
import tempfile

import matplotlib.pyplot as plt

import pwfn_viz
from pwfn_viz import PAPER_FRACTIONS, RunConfig
from pwfn_viz.analysis import tables
from pwfn_viz.viz import (plot_attention_heads, plot_channel_heatmap, plot_fraction_fixed, plot_kernel_pattern,
                          plot_sigma_by_layer, plot_sigma_vs_mu, plot_timeline)

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full-length run
steps = 20 if FAST else 120                      # optimiser steps of training before each round
common = dict(dataset="digits", image_size=32, in_chans=3, batch_size=64, first_round_steps=steps,
              steps_per_round=steps, fractions=(0.5, 0.8, 1.0) if FAST else PAPER_FRACTIONS)
out_dir = tempfile.mkdtemp(prefix="pwfn-timm-")

# %% [markdown]
# ## A ResNet-18 layout, reduced
# `layers=[1, 1, 1, 1]` (one basic block per stage) and `channels=(16, 32, 64, 128)` are passed to
# `timm.create_model` through `model_kwargs`.

# %%
resnet_config = RunConfig.demo(model="resnet18", model_kwargs=dict(layers=[1, 1, 1, 1], channels=(16, 32, 64, 128)),
                               pretrain_epochs=4 if FAST else 20, pretrain_lr=0.05, **common)
resnet = pwfn_viz.run(resnet_config, out_dir=f"{out_dir}/resnet", progress=False)
resnet.table()[["fraction", "top1_before", "top1_after", "unique", "entropy"]]

# %% [markdown]
# Has sigma learned? One row per round, over the weights still free before its snap (rank correlation with the
# initial sigma near 1: still the initialisation). In the fast run the ResNet's sigma has only started to move
# in round 0, after 20 steps: it passes the diagnostic's thresholds, but with a rank correlation of about 0.76
# its ordering is still largely the initialisation's, and that round fixes half of the network with it. Only
# by the last round has it left the initialisation (about 0.2). The uncertainty pictures below (each weight's
# sigma when it was fixed) mix both, so read them with this table; `PWFN_FAST=0` trains 120 steps a round.

# %%
print(resnet.sigma_verdict_line())
resnet.sigma_learning()

# %%
fig = plot_timeline(resnet)
fig = plot_sigma_by_layer(resnet)

# %% [markdown]
# The kernel-tap pattern pooled over every 3x3 convolution, and the channel map of the largest convolution.
# With more than 100,000 weights, sigma against mu switches to a hexbin density with a sample of points on top.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
plot_kernel_pattern(resnet, ax=axes[0])
plot_channel_heatmap(resnet, ax=axes[1])
fig = plot_sigma_vs_mu(resnet, round_index=0)

# %% [markdown]
# ## A Vision Transformer, reduced
# `vit_tiny_patch16_224` with 32x32 inputs, 8x8 patches (16 tokens), two blocks, width 64 and four heads.
# Class token, positional embedding and layer norms stay deterministic; every Linear (the fused `qkv`, `proj`,
# the MLP, the head) and the patch embedding convolution are converted.

# %%
vit_config = RunConfig.demo(model="vit_tiny_patch16_224",
                            model_kwargs=dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4),
                            pretrain_epochs=15 if FAST else 40, pretrain_lr=0.1, **common)
vit = pwfn_viz.run(vit_config, out_dir=f"{out_dir}/vit", progress=False)
vit.table()[["fraction", "top1_before", "top1_after", "unique", "entropy"]]

# %% [markdown]
# The ViT's sigma leaves its initialisation sooner: its rank correlation is about 0.4 already in round 0.

# %%
print(vit.sigma_verdict_line())
vit.sigma_learning()

# %% [markdown]
# ## Attention heads
# The fused `qkv` weight of a timm attention block has shape `(3 * dim, dim)`: its rows are q, k and v, each
# split into heads; the output projection `proj` reads head `h` from its columns `h * head_dim ... (h + 1) *
# head_dim`. `plot_attention_heads` shows the mean learned sigma of every (layer, head) for q, k, v and proj;
# the number of heads is read from the model.

# %%
fig = plot_attention_heads(vit)
attention = tables.find_attention(vit.plain_model_at(-1))
print(attention)
tables.attention_head_table(tables.sigma_tensors(vit), attention).round(5)

# %%
fig = plot_sigma_by_layer(vit)
fig = plot_fraction_fixed(vit)
fig = plot_sigma_vs_mu(vit, round_index=0, layer="blocks.0.attn.qkv.weight")
