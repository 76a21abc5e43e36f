"""Writes the widget notebooks: 02_step_through_rounds.ipynb and 04_pwfn_vs_kmeans.ipynb.

The notebooks are stored without outputs; edit the cells here and run

    .venv/bin/python notebooks/make_notebooks_widgets.py

Both run top to bottom under ``pytest --nbval-lax notebooks/`` (02 in a few seconds with the
default PWFN_FAST=1, 04 in well under a minute).
"""
from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
          "language_info": {"name": "python"}}


def notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata=KERNEL)
    for i, (kind, text) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell
        nb.cells.append(make(text.strip("\n"), id=f"cell-{i:02d}"))
    return nb


STEP_THROUGH_ROUNDS = [
    ("md", '''
# Step through the rounds of a PWFN run

Probabilistic weight fixing snaps a network's weights to a few shared values in rounds. Before each
snap every weight has a mean `mu` and an uncertainty `sigma`; a weight may move to a centre `c` only if
`|mu - c| <= delta * sigma`. This notebook looks at a recorded run round by round with four widgets
(`pwfn_viz.widgets`), all thin layers over the package's plots and functions:

1. **RoundExplorer**: a round slider and a layer selector; sigma against mu before the snap (with the
   centres the round chose and the band each accepts), the timeline with the round marked, and the
   greedy-step table of the round.
2. **UncertaintyExplorer**: pick a layer, an output channel or a kernel tap; see the weights' sigma against
   their value and their position, and follow one weight through every round.
3. **WhatIf**: re-cluster a round's stored mu and sigma with another `delta`, zero threshold or fraction,
   live, without retraining.
4. **CompareExplorer**: PWFN against k-means weight sharing at any `k`.

Every widget can also be driven from Python (set a control's `.value`; the outputs follow).
'''),
    ("md", '''
## A run to look at
`PWFN_FAST=1` (the default) makes a short run: a few pre-training epochs and four rounds, a few seconds on
a laptop CPU. `PWFN_FAST=0` runs the paper's ten rounds with one epoch between them (about a minute).
To look at a run of your own instead, set `PWFN_RUN_DIR` to its directory (written by `pwfn-viz run`).
'''),
    ("code", '''
import os
import tempfile

import pwfn_viz
from pwfn_viz.widgets import CompareExplorer, RoundExplorer, UncertaintyExplorer, WhatIf, weight_trajectory

FAST = os.environ.get("PWFN_FAST", "1") != "0"
RUN_DIR = os.environ.get("PWFN_RUN_DIR")
if RUN_DIR:
    run = pwfn_viz.load_run(RUN_DIR)
else:
    if FAST:
        config = pwfn_viz.RunConfig(model="digits_cnn", pretrain_epochs=5, first_round_epochs=0.1,
                                    epochs_per_round=0.3, fractions=(0.3, 0.6, 0.9, 1.0), threads=1)
    else:
        config = pwfn_viz.RunConfig(model="digits_cnn", pretrain_epochs=20, epochs_per_round=1)
    run = pwfn_viz.run(config, out_dir=f"{tempfile.mkdtemp(prefix='pwfn-rounds-')}/digits", progress=False)
run
'''),
    ("md", '''
## Round by round
Move the **round** slider. The label gives the share of weights fixed after that round's snap, the test
accuracy before and after it, and the codebook size. In the left plot every point is a weight (before the
snap): grey ones were fixed in an earlier round, orange ones this round, blue ones stay free. Each vertical
line is a centre the greedy clustering chose, coloured by how many powers of two it needs (`P`); the faint
wedge above it is the band `sigma >= |mu - c| / delta` of weights it may take. Pick a **layer** to see one
tensor (the centres stay the network's: clustering is global).
'''),
    ("code", '''
RoundExplorer(run)
'''),
    ("md", '''
## Where the uncertainty sits, and one weight's story
Pick a layer, then narrow it to one **output channel** and/or one **kernel tap**. Left: sigma against value;
right: sigma by position (a heatmap over the remaining dimensions). The **weight** slider picks one weight
of the selection (ringed in both plots); below, its trajectory: `mu` before and after every snap with its
`sigma` band, and the value it was fixed to and when.
'''),
    ("code", '''
UncertaintyExplorer(run, layer="conv2.weight")
'''),
    ("md", '''
The trajectory is a plain function of the run record, usable without the widget:
'''),
    ("code", '''
weight_trajectory(run, "conv2.weight", (3, 5, 1, 1))
'''),
    ("md", '''
## What if the round had used other settings?
`WhatIf` takes the stored pre-snap `mu` and `sigma` of a round and clusters them again with
`pwfn_viz.cluster_round`: **delta** is the starting band width in sigmas, **zero 2^-b** the threshold below
which a weight counts as zero, **fraction** the share of weights to fix. It reports unique values, entropy
and the test accuracy with the snapped values loaded into the network of that round, next to what the run
recorded. With the run's own settings it reproduces the recorded round exactly.
'''),
    ("code", '''
WhatIf(run, round_index=-1)
'''),
    ("md", '''
## PWFN against k-means at any k
k-means weight sharing of the starting network (one codebook, the chosen init, no fine-tuning here), against
PWFN's final network: accuracy, codebooks and the weight error of every layer.
`notebooks/04_pwfn_vs_kmeans.ipynb` has the full comparison at equal budgets, with fine-tuning.
'''),
    ("code", '''
CompareExplorer(run)
'''),
]


PWFN_VS_KMEANS = [
    ("md", '''
# PWFN against k-means weight sharing, at equal budgets

PWFN decides *per weight* how far it may move when it is snapped to a shared value: the learned
uncertainty `sigma` of each weight sets its allowance. The classic alternative, k-means weight sharing
(Deep Compression, TF Model Optimization's clustering, coremltools' palettization), decides by
**value alone**: every weight goes to the nearest of `k` shared values.

This notebook asks what the uncertainty buys. It

1. makes a short PWFN run on the embedded digits data (a small CNN, all ten rounds),
2. quantises the **same starting network** with k-means at the PWFN result's budget, once with the same
   number of unique values and once with the same entropy, each with and without fine-tuning of the
   centroids (Deep Compression style: assignments stay, centroids are trained for as many epochs as the
   PWFN run trained after conversion),
3. compares accuracy, codebook size, entropy, weight error, and how far each weight moved measured in
   units of its learned PWFN `sigma`,
4. lets you explore any other `k` and k-means init interactively (`CompareExplorer`).

All the logic lives in the package (`pwfn_viz.analysis.compare`, `pwfn_viz.viz.compare_plots`,
`pwfn_viz.widgets`); the command line does the same with `pwfn-viz compare RUN_DIR`. The run is shortened
(half an epoch between rounds) so the notebook finishes in well under a minute.
'''),
    ("code", '''
import tempfile

import matplotlib.pyplot as plt
import pandas as pd

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.viz.compare_plots import plot_codebooks, plot_moves_vs_sigma
from pwfn_viz.widgets import CompareExplorer

config = RunConfig(model="digits_cnn", pretrain_epochs=15, epochs_per_round=0.5, threads=1)
out_dir = tempfile.mkdtemp(prefix="pwfn-vs-kmeans-")
run = pwfn_viz.run(config, out_dir=f"{out_dir}/digits", progress=False)
'''),
    ("md", '''
## The comparison
`pwfn_viz.compare(run)` returns a `Comparison`: `.table` has one row per method, `.layers` the weight
error per tensor, and `.weights`, `.start`, `.sigma` the flat tensors behind both (used by the plots below).

- `pwfn`: the run's final network (every weight fixed).
- `kmeans@unique`: k-means (k-means++ init, one codebook for the whole network) with `k` = PWFN's unique count.
- `kmeans@entropy`: the `k` whose quantised weights have the entropy closest to PWFN's.
- `+ft`: the same, after fine-tuning the centroids.

`moved_gt_Nsigma` is the fraction of weights whose final value is more than `N` of their learned sigmas
away from the starting value; a weight's sigma is its pre-snap sigma in the round that fixed it.
PWFN's change also includes the re-training between rounds, not just the snaps.
'''),
    ("code", '''
result = pwfn_viz.compare(run, seed=0)
result.table
'''),
    ("md", '''
The search for the entropy budget: every `k` evaluated and the entropy (bits) of the quantised
weights; the chosen `k` is the one closest to PWFN's entropy.
'''),
    ("code", '''
print(f"PWFN entropy: {result.target_entropy:.3f} bits")
pd.Series(result.entropy_search, name="entropy").rename_axis("k").to_frame().T
'''),
    ("md", '''
## Weight error per layer
Relative L2 error `||w - w_start|| / ||w_start||` of each converted tensor, one column per method.
'''),
    ("code", '''
result.layers.pivot(index="layer", columns="method", values="weight_error")[result.table["method"]]
'''),
    ("md", '''
## Codebooks at the same budget
Every shared value and how many weights use it. PWFN's values are zero and sums of a few powers of two;
k-means places its centres where the weights are dense.
'''),
    ("code", '''
fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True, layout="constrained")
plot_codebooks(result, ["pwfn", "kmeans@unique"], ax=axes[0])
plot_codebooks(result, ["pwfn", "kmeans@entropy"], ax=axes[1])
axes[0].set_title("same number of unique values")
axes[1].set_title("same entropy");
'''),
    ("md", '''
## How far each weight moved, in units of its sigma
Each point is a weight: its learned sigma (x) against how far it moved from the starting network (y).
Points above the solid line moved more than one sigma, above the dotted line more than three.
k-means never looks at sigma: where its points sit relative to the lines shows how much of the network it
moved further than PWFN's own uncertainty estimate allows. When reading the numbers, keep in mind that
budgets differ in kind (the same unique count gives k-means more entropy than PWFN, the same entropy fewer
values) and that fine-tuning trains the centroids with summed gradients, which can carry whole groups of
weights far from where they started.
'''),
    ("code", '''
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True, layout="constrained")
plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique"], ax=axes[0])
plot_moves_vs_sigma(result, ["pwfn", "kmeans@unique+ft"], ax=axes[1])
axes[0].set_title("k-means, same unique values")
axes[1].set_title("... after fine-tuning");
'''),
    ("code", '''
moved = result.table.set_index("method")[["moved_gt_1sigma", "moved_gt_2sigma", "moved_gt_3sigma"]]
ax = moved.plot.bar(figsize=(7, 3.5), rot=20, ylabel="fraction of weights")
ax.set_title("weights moved more than 1, 2, 3 sigma");
'''),
    ("md", '''
## Any k, interactively
The budgets above are two points. `CompareExplorer` puts the k-means side on a slider: move **k** (the
codebook size; it starts at PWFN's unique count) or change the **init**, and the table, the codebooks and
the per-layer error follow. It measures exactly as `pwfn_viz.analysis.compare` does, but without fine-tuning, so
that each change takes a fraction of a second on this network.
'''),
    ("code", '''
explorer = CompareExplorer(run)
explorer
'''),
    ("md", '''
The widget can be driven from Python too; its `comparison` is the `Comparison` behind the view:
'''),
    ("code", '''
explorer.k.value = 8
explorer.comparison.table[["method", "k", "top1", "unique", "entropy", "weight_error", "moved_gt_1sigma"]]
'''),
    ("md", '''
## On the command line
The same table for any finished run directory, optionally written to CSV:

```
pwfn-viz compare runs/digits_cnn-digits-... --csv compare.csv
pwfn-viz compare runs/... --scope layer --no-finetune
```
'''),
]

NOTEBOOKS = {"02_step_through_rounds.ipynb": STEP_THROUGH_ROUNDS, "04_pwfn_vs_kmeans.ipynb": PWFN_VS_KMEANS}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(notebook(cells), HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
