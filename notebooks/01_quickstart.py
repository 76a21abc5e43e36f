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
# The configuration below is shortened (one epoch between rounds instead of the paper's three) so
# that the notebook runs quickly; `pwfn-viz run` on the command line uses the full defaults.

# %%
import tempfile
import pwfn_viz
from pwfn_viz import RunConfig

config = RunConfig(model="digits_cnn", dataset="digits", pretrain_epochs=20, epochs_per_round=1)
config

# %% [markdown]
# ## Run all ten rounds
# `pwfn_viz.run` prints one line per round: the cumulative fraction of weights fixed, test top-1 before and
# after that round's snap, the number of unique values (with and without zero) and the entropy in bits.

# %%
out_dir = tempfile.mkdtemp(prefix="pwfn-quickstart-")
run = pwfn_viz.run(config, out_dir=f"{out_dir}/digits")

# %% [markdown]
# ## The per-round table
# The same numbers, as a DataFrame (a `Run` also renders itself as a table in JupyterLab).

# %%
run.table()[["fraction", "top1_before", "top1_after", "unique", "unique_nonzero", "entropy", "entropy_nonzero"]]

# %%
from pwfn_viz.viz import plot_timeline
fig = plot_timeline(run)

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
# how many weights it took (with statistics of their `mu` and `sigma` before the snap).

# %%
replayed.rounds[0].steps.head(10)

# %% [markdown]
# The per-layer table after the final round: every weight is fixed, and each layer uses only a handful
# of values.

# %%
last.layers[["name", "shape", "unique", "entropy", "fraction_fixed", "sigma_median"]]

# %% [markdown]
# Rebuild the network after any round and evaluate it: the accuracy matches the record.

# %%
data = pwfn_viz.create_dataset("digits")
from pwfn_viz.data.datasets import make_loader
model = replayed.model_at(-1)
result = pwfn_viz.evaluate(model, make_loader(data.test, 512))
assert abs(result["top1"] - last.metrics["top1_after"]) < 1e-9
result
