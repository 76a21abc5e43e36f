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
# # PWFN against k-means weight sharing, at equal budgets
#
# PWFN decides *per weight* how far it may move when it is snapped to a shared value: the learned
# uncertainty `sigma` of each weight sets its allowance. The classic alternative, k-means weight sharing
# (Deep Compression, TF Model Optimization's clustering, coremltools' palettization), decides by
# **value alone**: every weight goes to the nearest of `k` shared values.
#
# This notebook asks what the uncertainty buys. It
#
# 1. makes a short PWFN run on the embedded digits data (a small CNN, all ten rounds),
# 2. quantises the **same starting network** with k-means at the PWFN result's budget, once with the same
#    number of unique values and once with the same entropy, each with and without fine-tuning of the
#    centroids (Deep Compression style: assignments stay, centroids are trained for as many epochs as the
#    PWFN run trained after conversion),
# 3. compares accuracy, codebook size, entropy, weight error, and how far each weight moved measured in
#    units of its learned PWFN `sigma`,
# 4. lets you explore any other `k` and k-means init interactively (`CompareExplorer`),
# 5. and, from a recorded ablation over budgets and seeds, asks whether learned sigma moves the
#    accuracy-against-entropy curve.
#
# All the logic lives in the package (`pwfn_viz.analysis.compare`, `pwfn_viz.viz.compare_plots`,
# `pwfn_viz.widgets`); the command line does the same with `pwfn-viz compare RUN_DIR`.
#
# The run uses the demo configuration (`RunConfig.demo()`): the paper's settings, except that training is
# counted in optimiser steps and sigma's learning rate is 100 times mu's. Sigma only learns with enough steps x
# learning rate: the paper trains about 30,000 steps a round on ImageNet, but its three epochs are 36 steps on
# the digits data, and a comparison "in units of learned sigma" would then measure in units of sigma's
# initialisation. `PWFN_FAST=1` (the default) uses 60 steps a round after 15 pre-training epochs,
# `PWFN_FAST=0` the demo's 120.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.analysis.frontier import summarise
from pwfn_viz.viz.compare_plots import plot_codebooks, plot_moves_vs_sigma
from pwfn_viz.viz.frontier_plots import plot_accuracy_entropy
from pwfn_viz.viz.verdicts import budget_winners, describe_winners, head_to_head
from pwfn_viz.widgets import CompareExplorer

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full demo configuration
if FAST:
    config = RunConfig.demo(pretrain_epochs=15, first_round_steps=60, steps_per_round=60)
else:
    config = RunConfig.demo()
out_dir = tempfile.mkdtemp(prefix="pwfn-vs-kmeans-")
run = pwfn_viz.run(config, out_dir=f"{out_dir}/digits", progress=False)

# %% [markdown]
# The comparison below measures moves in units of each weight's learned sigma, so first check that sigma has
# learned (rank correlation with its initial value far from 1):

# %%
print(run.sigma_verdict_line())

# %% [markdown]
# ## The comparison
# `pwfn_viz.compare(run)` returns a `Comparison`: `.table` has one row per method, `.layers` the weight
# error per tensor, and `.weights`, `.start`, `.sigma` the flat tensors behind both (used by the plots below).
#
# - `pwfn`: the run's final network (every weight fixed).
# - `kmeans@unique`: k-means (k-means++ init, one codebook for the whole network) with `k` = PWFN's unique count.
# - `kmeans@entropy`: the `k` whose quantised weights have the entropy closest to PWFN's.
# - `+ft`: the same, after fine-tuning the centroids.
#
# `moved_gt_Nsigma` is the fraction of weights whose final value is more than `N` of their learned sigmas
# away from the starting value; a weight's sigma is its pre-snap sigma in the round that fixed it.
# PWFN's change also includes the re-training between rounds, not just the snaps.

# %%
result = pwfn_viz.compare(run, seed=0)
result.table[["method", "k", "top1", "unique", "entropy", "weight_error", "moved_gt_1sigma"]].round(3)

# %% [markdown]
# ### Who wins in this run?
# Each line compares one k-means row with PWFN, written from the table above (not typed in advance), so it stays
# true whatever this run produced. Read the budget with it: a method that is more accurate with *more* values or
# bits has bought its accuracy; one that is more accurate with fewer has won outright. On 360 test images one
# image is 0.28 points.

# %%
for other in result.table["method"].iloc[1:]:
    print(head_to_head(result.table, other))

# %% [markdown]
# The search for the entropy budget: every `k` evaluated and the entropy (bits) of the quantised
# weights; the chosen `k` is the one closest to PWFN's entropy.

# %%
print(f"PWFN entropy: {result.target_entropy:.3f} bits")
pd.Series(result.entropy_search, name="entropy").rename_axis("k").to_frame().T

# %% [markdown]
# ## Weight error per layer
# Relative L2 error `||w - w_start|| / ||w_start||` of each converted tensor, one column per method.

# %%
result.layers.pivot(index="layer", columns="method", values="weight_error")[result.table["method"]]

# %% [markdown]
# ## Codebooks at the same budget
# Every shared value and how many weights use it. PWFN's values are zero and sums of a few powers of two;
# k-means places its centres where the weights are dense.

# %%
fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True, layout="constrained")
plot_codebooks(result, ["pwfn", "kmeans@unique"], ax=axes[0], title="same number of unique values")
plot_codebooks(result, ["pwfn", "kmeans@entropy"], ax=axes[1], title="same entropy");

# %% [markdown]
# ## How far each weight moved, in units of its sigma
# Each point is a weight: its learned sigma (x) against how far it moved from the starting network (y).
# Points above the solid line moved more than one sigma, above the dotted line more than three.
# k-means never looks at sigma: where its points sit relative to the lines shows how much of the network it
# moved further than PWFN's own uncertainty estimate allows. When reading the numbers, keep in mind that
# budgets differ in kind (the same unique count gives k-means more entropy than PWFN, the same entropy fewer
# values) and that fine-tuning trains the centroids with summed gradients, which can carry whole groups of
# weights far from where they started.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True, layout="constrained")
plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique"], ax=axes[0], title="k-means, same unique values")
plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique+ft"], ax=axes[1], title="... after fine-tuning");

# %%
moved = result.table.set_index("method")[["moved_gt_1sigma", "moved_gt_2sigma", "moved_gt_3sigma"]]
ax = moved.plot.bar(figsize=(7, 3.5), rot=20, ylabel="fraction of weights")
ax.set_title(r"weights moved more than 1, 2, 3 $\sigma$");

# %% [markdown]
# ## Any k, interactively
# The budgets above are two points. `CompareExplorer` puts the k-means side on a slider: move **k** (the
# codebook size; it starts at PWFN's unique count) or change the **init**, and the table, the codebooks and
# the per-layer error follow. It measures exactly as `pwfn_viz.analysis.compare` does, but without fine-tuning, so
# that each change takes a fraction of a second on this network.

# %%
explorer = CompareExplorer(run)
explorer

# %% [markdown]
# The widget can be driven from Python too; its `comparison` is the `Comparison` behind the view:

# %%
explorer.k.value = 8
explorer.comparison.table[["method", "k", "top1", "unique", "entropy", "weight_error", "moved_gt_1sigma"]]

# %% [markdown]
# ## On the command line
# The same table for any finished run directory, optionally written to CSV:
#
# ```
# pwfn-viz compare runs/digits_cnn-digits-... --csv compare.csv
# pwfn-viz compare runs/... --scope layer --no-finetune
# ```

# %% [markdown]
# ## Accuracy against budget: where does each method win?
# One run is one point. `pwfn-viz frontier` repeats the comparison over several budgets and seeds, all from the
# same pre-trained network per seed, and writes one row per (method, budget, seed) to `frontier.csv`:
#
# - `pwfn`: PWFN with learned sigma (the demo configuration); `pwfn-frozen`: the same schedule and training
#   with sigma frozen at its initial value, so the clustering sees only the initialisation formula;
# - `kmeans@unique+ft` / `kmeans@entropy+ft`: fine-tuned k-means at the learned run's unique count / entropy;
# - `ptq` / `dkm`: coremltools palettization (post-training / differentiable k-means) with 2, 3 and 4 bits.
#
# The PWFN budgets `P4`, `P2`, `P1` cap how many powers of two a shared value may sum (`P1-b5`: one power of
# two and a wider zero band, 2^-5). Below: the mean over seeds per method and budget (`on_front`: no other
# point has both lower entropy and higher accuracy), the recorded sigma diagnostic of the PWFN runs, and the
# curve. The table is read from `docs/results/frontier.csv` (set `PWFN_FRONTIER_CSV` to read another file).

# %%
frontier_csv = Path(os.environ.get("PWFN_FRONTIER_CSV", "../docs/results/frontier.csv"))   # from notebooks/
if frontier_csv.exists():
    frontier = pd.read_csv(frontier_csv)
    display(summarise(frontier).round(3))
    pwfn_rows = frontier[frontier["method"].isin(["pwfn", "pwfn-frozen"])]
    display(pwfn_rows.groupby(["method", "budget"], sort=False)[["sigma_rank_corr", "sigma_median_change"]]
            .mean().round(2))
    fig = plot_accuracy_entropy(frontier)
else:
    frontier = None
    print(f"{frontier_csv} does not exist yet. Make the table from the repository root with\n"
          "    pwfn-viz frontier --out results/frontier\n"
          "(it writes results/frontier/frontier.csv) and point PWFN_FRONTIER_CSV at that file.")

# %% [markdown]
# ### PWFN against fine-tuned k-means, budget by budget
# The curve of the two methods alone: PWFN at each budget, and fine-tuned k-means given PWFN's unique count (and,
# separately, its entropy) at that budget. The table and the sentences under it are computed from the recorded
# rows: a difference within one standard deviation over the seeds is called a tie, not a win.

# %%
if frontier is not None:
    both = ["pwfn", "kmeans@unique+ft", "kmeans@entropy+ft"]
    fig = plot_accuracy_entropy(frontier, methods=both)
    summary = summarise(frontier)
    for other in both[1:]:
        winners = budget_winners(summary, "pwfn", other)
        display(winners.round(2))
        print("\n".join(describe_winners(winners)))

# %% [markdown]
# ## Reading the curve
#
# The sentences above say who wins where; some context for reading them (the full write-up is
# `docs/results/sigma_ablation.md`):
#
# - **Budgets differ in kind.** PWFN's shared values are zero and sums of a few powers of two, cheap in hardware;
#   k-means' are free real numbers, which is what it spends its accuracy on. At the same unique count k-means
#   also has more entropy than PWFN (compare the two entropy columns).
# - **Learned against frozen sigma**: compare the `pwfn` and `pwfn-frozen` rows of the first table at each
#   budget; the sigma diagnostic beside them says whether sigma moved away from its initialisation at all.
# - **Where PWFN loses accuracy**: the per-round tables of the runs show whether it happens in the last round,
#   where the final weights (those with the smallest learned sigma) are snapped with no training afterwards.
# - The digits task is nearly lossless for every method that retrains down to about 3 bits, so most differences
#   are a handful of the 360 test images: a harder task is needed for stronger claims.
