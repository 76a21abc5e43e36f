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
# # Weight sharing, from scratch
#
# A network stores every weight as a 32-bit float. **Weight sharing** replaces them by a few shared values
# (a *codebook*): each weight then only needs the index of its value, and multiplications can be cheaper.
# The question is always the same: **which weight goes to which shared value?**
#
# We answer it four ways on twelve toy weights you can follow one by one:
#
# 1. rounding to a uniform grid,
# 2. k-means (the shared values are fitted to the weights),
# 3. powers of two (shared values that are cheap in hardware),
# 4. PWFN: powers of two, where each weight's **uncertainty** decides how far it may move.
#
# At the end there are three exercises; each answer stays hidden until you press its **Show the answer** button.

# %%
import os

import pandas as pd
import torch

from pwfn_viz.core.clustering import ClusterConfig, candidate_centres, cluster_round
from pwfn_viz.baselines.kmeans import kmeans_1d
from pwfn_viz.core.metrics import codebook_stats
from pwfn_viz.viz import plot_greedy_steps, plot_sigma_vs_mu
from pwfn_viz.analysis.tables import power_of_two_terms, round_from_cluster
from pwfn_viz.viz.teaching import greedy_assign, plot_number_line, snap_to_codebook
from pwfn_viz.widgets.teaching import DeltaExplorer, reveal

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full-length run
mu = torch.tensor([0.62, 0.27, 0.249, -0.13, 0.1245, 0.004, -0.35, 0.502, -0.02, 0.09, -0.26, 0.75],
                  dtype=torch.float64)
sigma = torch.tensor([0.02, 0.05, 0.002, 0.04, 0.001, 0.01, 0.1, 0.003, 0.02, 0.03, 0.005, 0.2],
                     dtype=torch.float64)
pd.DataFrame({"mu": mu, "sigma": sigma}).T.round(3)

# %% [markdown]
# `mu` are the weights. `sigma` is, for now, just a second number per weight; section 4 explains it.
#
# ## 1. Rounding to a grid
# The simplest codebook: multiples of a step. Every weight goes to the nearest multiple; the error is at most
# half a step, for every weight alike.

# %%
step = 0.25
rounded = torch.round(mu / step) * step
print("codebook:", sorted(set(rounded.tolist())), "| largest move:", (rounded - mu).abs().max().item())
fig = plot_number_line(mu, rounded, codebook=torch.arange(-0.5, 0.76, step), title="rounding to multiples of 0.25")

# %% [markdown]
# ## 2. k-means: fit the shared values to the weights
# k-means picks `k` values that minimise the squared distance of every weight to its nearest value
# (Deep Compression, TF Model Optimization's clustering, coremltools' palettization all do this).

# %%
km = kmeans_1d(mu, 4, seed=0)
kmeans_values = torch.as_tensor(km.centres)[torch.as_tensor(km.labels)]
print(km, "| centres:", [round(c, 3) for c in km.centres.tolist()])
fig = plot_number_line(mu, kmeans_values, codebook=km.centres, title="k-means, k = 4")

# %% [markdown]
# The centres follow the data, but they are arbitrary floats: multiplying by one still needs a multiplier.
#
# ## 3. Powers of two
# A codebook of zero and signed powers of two, `+-2^-7 ... +-2^-1`, makes every multiplication a bit shift.
# Sums of two, three or four powers of two (`0.375 = 2^-2 + 2^-3`: two shifts and an add) give finer codebooks
# at a small cost. `candidate_centres(P, max_abs)` lists all sums of up to `P` powers of two up to `max_abs`.

# %%
# NBVAL_CHECK_OUTPUT
for order in (1, 2, 3, 4):
    print(f"P = {order}: {len(candidate_centres(order, 1.0)):4d} values")
print("P = 1:", candidate_centres(1, 1.0).tolist())
print("0.375 needs", power_of_two_terms(torch.tensor([0.375])).item(), "powers of two")

# %%
pow2 = candidate_centres(1, 1.0)
pow2_values, _ = snap_to_codebook(mu, pow2)
fig = plot_number_line(mu, pow2_values, codebook=pow2, title="nearest power of two")

# %% [markdown]
# Rounding, k-means and nearest power of two all decide **by value alone**: two weights with the same value are
# treated the same, however much the network cares about each.
#
# ## 4. PWFN: let each weight's uncertainty decide
# PWFN trains, for every weight, a standard deviation `sigma`: how much noise the network tolerates on that
# weight. A weight **fits** a centre `c` when `|mu - c| <= delta * sigma` (`delta = 1` at first): the bar
# around each weight below. `w2` (sigma 0.002) must stay almost exactly where it is; `w11` (sigma 0.2) may go
# almost anywhere.

# %%
fig = plot_number_line(mu, sigma=sigma, codebook=pow2, title=r"each weight and its allowance $\mu \pm \sigma$")

# %% [markdown]
# ### Drag delta
# How far may a weight travel? `delta` scales every allowance at once. Drag the slider: the bars widen, and each
# weight takes the centre that one **greedy pass** at that `delta` gives it (the power of two that fits the most
# still-unassigned weights wins them all, then the next). Weights with no arrow fit no power of two yet. Notice
# that at large `delta` a weight does not go to its *nearest* centre but to the most popular one it fits.

# %%
explorer = DeltaExplorer(mu, sigma, pow2)
explorer

# %% [markdown]
# The slider's answer is a plain function, `greedy_assign(mu, sigma, centres, delta)`, so the same numbers can be
# printed for a few values of `delta`:

# %%
# NBVAL_CHECK_OUTPUT
pd.DataFrame({f"delta = {d:g}": greedy_assign(mu, sigma, pow2, d).numpy() for d in (0.5, 1, 4, 16)},
             index=[f"w{i}" for i in range(len(mu))]).T

# %% [markdown]
# One **round** fixes a fraction of the weights, greedily: among the powers of two, the centre that fits the
# most unfixed weights wins and takes them; repeat. When no centre fits any remaining weight, the candidates grow
# (sums of more powers of two, `P += 1`) or the allowance widens (`delta *= 2`). Here is a round that fixes half
# of the weights; each row of the table is one greedy step.

# %%
half = cluster_round(mu, sigma, fraction=0.5)
half.steps[["pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken"]]

# %% [markdown]
# The same round in the (mu, sigma) plane: a weight fits centre `c` when it lies in the wedge
# `sigma >= |mu - c| / delta` above `c`. Orange weights were fixed, blue ones are still free (in a real run,
# they train on and get fixed in a later round).

# %%
round_half = round_from_cluster(mu, sigma, half)
fig = plot_sigma_vs_mu(round_half, bands="fill")

# %% [markdown]
# Now fix everything (`fraction=1.0`). Weights that fit no power of two need larger `P` or `delta`:

# %%
full = cluster_round(mu, sigma, fraction=1.0)
round_full = round_from_cluster(mu, sigma, full)
fig = plot_greedy_steps(round_full)
fig = plot_number_line(mu, full.mu, sigma=sigma, codebook=full.centres, title="PWFN, all weights fixed")

# %% [markdown]
# ## How far did each method move each weight, in units of its sigma?
# A move larger than one sigma goes beyond what the network said it tolerates.

# %%
moves = pd.DataFrame({
    "rounding": (rounded - mu).abs() / sigma,
    "k-means": (kmeans_values - mu).abs() / sigma,
    "power of two": (pow2_values - mu).abs() / sigma,
    "PWFN": (full.mu - mu).abs() / sigma,
}).round(2)
moves.index = [f"w{i}" for i in range(len(mu))]
assert (moves["PWFN"] <= 1).all()
shared = {"rounding": rounded, "k-means": kmeans_values, "power of two": pow2_values, "PWFN": full.mu}
print("unique values:", {name: codebook_stats(values)["unique"] for name, values in shared.items()})
moves

# %% [markdown]
# Under PWFN no weight moves further than its sigma allows: the certain weights (`w2`, `w4`, `w7`, `w10`) land
# on shared values inside their narrow allowance, often by using a finer sum of powers of two, while rounding,
# k-means and the nearest power of two move some of them by many sigmas. In a real network (notebooks 01 to 04)
# that is what keeps the accuracy while the codebook shrinks.
#
# ## Exercises
# Try each one in a new cell first. The cell under it holds the answer, hidden: press **Show the answer** to run it
# and see the result (the cell's code is collapsed too; click the dots to read it).
#
# **Exercise 1.** Start with a narrower band: `cluster_round(mu, sigma, 1.0, config=ClusterConfig(delta=0.5))`.
# How many passes (`pass_index`) does the round need now, and how many distinct centres does it use?

# %% jupyter={"source_hidden": true} tags=["solution"]
def exercise_1():
    narrow = cluster_round(mu, sigma, 1.0, config=ClusterConfig(delta=0.5))
    print("passes:", narrow.steps["pass_index"].nunique(), "(delta = 1:", full.steps["pass_index"].nunique(), ")")
    print("distinct centres:", len(set(narrow.centres.tolist())), "(delta = 1:", len(set(full.centres.tolist())), ")")


reveal(exercise_1)

# %% [markdown]
# **Exercise 2.** Which candidate centres of order `P <= 2` does a weight with `mu = 0.3`, `sigma = 0.1` fit at
# `delta = 1`? And at `delta = 0.25`?

# %% jupyter={"source_hidden": true} tags=["solution"]
def exercise_2():
    candidates = candidate_centres(2, 1.0)
    for delta in (1.0, 0.25):
        fits = candidates[(candidates - 0.3).abs() <= delta * 0.1]
        print(f"delta = {delta}:", sorted(fits.tolist()))


reveal(exercise_2)

# %% [markdown]
# **Exercise 3.** Give k-means as many values as PWFN used (`len(set(full.mu.tolist()))`). Which method moves
# more weights further than one sigma?

# %% jupyter={"source_hidden": true} tags=["solution"]
def exercise_3():
    k = len(set(full.mu.tolist()))
    km_same = kmeans_1d(mu, k, seed=0)
    km_same_values = torch.as_tensor(km_same.centres)[torch.as_tensor(km_same.labels)]
    beyond = {"k-means": int(((km_same_values - mu).abs() > sigma).sum()),
              "PWFN": int(((full.mu - mu).abs() > sigma).sum())}
    print(f"k = {k}; weights moved more than one sigma:", beyond)


reveal(exercise_3)
