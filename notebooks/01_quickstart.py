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
# # Quickstart: probabilistic weight fixing on the embedded digits data
#
# This notebook runs the whole PWFN pipeline on a small CNN in well under a minute:
#
# 1. train a small CNN on scikit-learn's digits (8x8 images, fixed train/test split),
# 2. convert it to a Bayesian network: every conv/linear weight gets a mean `mu` and an uncertainty `sigma`,
# 3. fix the weights to shared values (zero, powers of two and their sums) in rounds, re-training in between:
#    the **uncertainty** decides how far each weight may move,
# 4. read the recorded run back, without re-training.
#
# The run uses the demo configuration, `RunConfig.demo()` (the preset `digits-demo`, what `make run` runs): the
# paper's settings, except that training is counted in optimiser steps (120 a round) and sigma's learning rate
# is 100 times mu's. Sigma only learns with enough steps x learning rate: the paper trains about 30,000 steps a
# round on ImageNet, but its three epochs are only 36 steps on the digits data, too few for sigma to leave its
# initialisation. By default (`PWFN_FAST` unset) the notebook uses a shorter variant, 60 steps a round after 15
# pre-training epochs, in which sigma still learns; `PWFN_FAST=0` runs the demo itself.

# %%
import os
import tempfile
import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.analysis.tables import config_summary, layer_table, steps_table

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full demo configuration
if FAST:
    config = RunConfig.demo(pretrain_epochs=15, first_round_steps=60, steps_per_round=60)
else:
    config = RunConfig.demo()
config_summary(config)

# %% [markdown]
# That is the configuration in brief; `config` itself holds every field (print it to see them all).

# %% [markdown]
# ## Run all ten rounds
# `pwfn_viz.run` prints one line per round: the cumulative fraction of weights fixed, test top-1 before and
# after that round's snap, the number of unique values (with and without zero) and the entropy in bits. Under
# it, whether sigma has learned: how far the sigma of the still-free weights is from its initial value.

# %%
out_dir = tempfile.mkdtemp(prefix="pwfn-quickstart-")
run = pwfn_viz.run(config, out_dir=f"{out_dir}/digits")

# %% [markdown]
# ## The per-round table
# The same numbers, as a DataFrame (a `Run` also renders itself as a table in JupyterLab). `run.table()` has
# every recorded column; here the few that tell the story, rounded.

# %%
run.table()[["fraction", "top1_before", "top1_after", "unique", "entropy"]].round(2)

# %%
from pwfn_viz.viz import plot_timeline
fig = plot_timeline(run)

# %% [markdown]
# ## Has sigma learned?
# Every uncertainty picture of a run shows sigma, so first check that it is more than its initialisation (a
# formula of each weight's value). One row per round, over the weights still free before the snap: the median
# relative change of sigma from its initial value, the rank correlation with the initial sigma (near 1: still
# the initialisation's ordering), the fraction of weights whose sigma moved by more than 10 %, the verdict and
# in how many layers sigma learned.

# %%
print(run.sigma_verdict_line())
run.sigma_learning().round(2)

# %% [markdown]
# ## Replay without re-training
# Everything is on disk: `load_run` reads the record back. Each round holds every tensor's `mu`, `sigma`
# and fixed mask (before and after the snap), the greedy clustering steps and a per-layer table.

# %%
replayed = pwfn_viz.load_run(run.path)
last = replayed.rounds[-1]
print(replayed)
print(last)
name = next(iter(last.mu))
print(name, tuple(last.mu[name].shape), "fixed:", last.fixed[name].float().mean().item())

# %% [markdown]
# The greedy steps of the first round: which centre won, under which order `P` and band `delta`, and
# how many weights it took (with statistics of their `mu` and `sigma` before the snap; `steps_table` gives sigma
# as the method uses it, `max(sigma, 2^-30)`).

# %%
steps = steps_table(replayed, 0, ["pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken", "sigma_mean"])
steps.head(10).round(4)

# %% [markdown]
# The per-layer table after the final round: every weight is fixed, and each layer uses only a handful
# of values. `layer_table` shows sigma as the method uses it, `max(sigma, 2^-30)` (the raw parameter, which the
# record summarises, can be pushed to zero or below by training).

# %%
layer_table(last, columns=["name", "shape", "unique", "entropy", "sigma_median"], digits=3)

# %% [markdown]
# Rebuild the network after any round and evaluate it: the accuracy matches the record.

# %%
data = pwfn_viz.create_dataset("digits")
from pwfn_viz.data.datasets import make_loader
model = replayed.model_at(-1)
result = pwfn_viz.evaluate(model, make_loader(data.test, 512))
assert abs(result["top1"] - last.metrics["top1_after"]) < 1e-9
result
