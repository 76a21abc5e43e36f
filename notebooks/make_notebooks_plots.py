"""Write notebooks 03, 05, 06 and 07 (the plotting notebooks) from the cells below.

    .venv/bin/python notebooks/make_notebooks_plots.py            # rewrites the four .ipynb files
    .venv/bin/python -m pytest --nbval-lax notebooks/03_uncertainty_vs_position.ipynb

The notebooks hold narrative and calls only; the logic lives in pwfn_viz. They are stored
without outputs. Each reads PWFN_FAST (default "1": a short configuration that the test suite
runs; PWFN_FAST=0 for the full-length version).
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
FAST = 'FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: the full-length run'


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text, hidden=False):
    cell = new_code_cell(text.strip("\n"))
    if hidden:   # a solution: collapsed in JupyterLab until clicked
        cell.metadata["jupyter"] = {"source_hidden": True}
        cell.metadata["tags"] = ["solution"]
    return cell


def notebook(name, cells):
    for i, cell in enumerate(cells):   # stable ids: regenerating gives the same file
        cell.id = f"{name[:2]}-{i:02d}"
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


# --------------------------------------------------------------------------------------------- 03
NB03 = [
    md("""
# Uncertainty against position: where in the network may weights move?

PWFN gives every weight a mean `mu` and a learned uncertainty `sigma`. A weight with a large sigma
tolerates noise, so the clustering may move it far; one with a small sigma must stay close to its value.
This notebook asks **where** in the network the large and small sigmas sit:

1. per layer, in network order,
2. over the output x input channels of one convolution,
3. over the taps of the 3x3 kernels,
4. and how that shows in the order in which layers get fixed, round by round.

Every figure is one call to a function of `pwfn_viz.viz`, and every figure is backed by a table in
`pwfn_viz.analysis.tables` that you can print instead. Set `PWFN_FAST=0` for the full-length run (paper
schedule: three epochs between rounds).
"""),
    code(f"""
import os
import tempfile

import matplotlib.pyplot as plt

import pwfn_viz
from pwfn_viz import RunConfig
from pwfn_viz.viz import (plot_channel_heatmap, plot_fraction_fixed, plot_kernel_pattern, plot_sigma_by_layer,
                          plot_sigma_vs_mu, tables)

{FAST}
config = RunConfig(model="digits_cnn", pretrain_epochs=15 if FAST else 40, epochs_per_round=0.5 if FAST else 3,
                   threads=1)
run = pwfn_viz.run(config, out_dir=tempfile.mkdtemp(prefix="pwfn-position-") + "/digits", progress=False)
"""),
    md("""
## Which sigma?
A weight's sigma changes over the run: it is trained between rounds, and when the weight is snapped to a
shared value its sigma is reset (to the spread of the weights that joined it). The position plots therefore
take `which`:

- `"learned"` (the default for a run): each weight's sigma **just before the snap that fixed it**: what the
  clustering actually used to decide about that weight;
- `"pre"` / `"post"`: a given round's sigma before / after its snap.

The table below summarises the learned sigma of every tensor, in network order. A caution when reading the
fast configuration: sigma has trained for only half an epoch per round, so it still mostly reflects its
initialisation (which depends on where each `mu` sits between two powers of two) and the layers look alike.
With `PWFN_FAST=0` (three epochs per round) the differences between layers, channels and taps grow.
"""),
    code("""
sigma = tables.sigma_tensors(run)              # {tensor name: learned sigma}, network order
tables.sigma_summary(sigma)
"""),
    md("""
## 1. Per layer, in network order
Boxes span the quartiles, whiskers the 5th to 95th percentiles, the dot is the mean (log scale).
"""),
    code("""
fig = plot_sigma_by_layer(run)
"""),
    md("""
The same tensors before and after the first snap: after it, the fixed half of each tensor carries the spread
of its group (often tiny), the free half keeps its trained sigma.
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, layout="constrained")
plot_sigma_by_layer(run, round_index=0, which="pre", ax=axes[0])
plot_sigma_by_layer(run, round_index=0, which="post", ax=axes[1])
axes[0].set_title("round 0, before the snap")
axes[1].set_title("round 0, after the snap");
"""),
    md("""
## 2. Over output x input channels
Each cell is the mean sigma of the nine kernel taps connecting one input channel to one output channel.
Bright rows are output channels whose filters tolerate noise as a whole.
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
plot_channel_heatmap(run, "conv2.weight", ax=axes[0])
plot_channel_heatmap(run, "conv3.weight", ax=axes[1]);
"""),
    md("""
The numbers behind the right panel: the output channels of `conv3` with the largest and the smallest mean
sigma.
"""),
    code("""
per_output = tables.channel_sigma(sigma["conv3.weight"]).mean(dim=1)
order = per_output.argsort()
print("most certain output channels:  ", order[:5].tolist())
print("least certain output channels: ", order[-5:].tolist())
"""),
    md("""
## 3. Over the kernel taps
The mean sigma at each of the nine positions of a 3x3 kernel, pooled over all three convolutions, then per
convolution.
"""),
    code("""
fig = plot_kernel_pattern(run)
"""),
    code("""
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
for ax, name in zip(axes, ["conv1.weight", "conv2.weight", "conv3.weight"]):
    plot_kernel_pattern(run, name, ax=ax)
"""),
    md("""
## 4. Which layers get fixed first
Every round fixes a growing fraction of *all* weights, globally: a layer whose weights sit close to shared
values (relative to their sigma) is fixed early. Rows are rounds (with the target fraction), columns tensors.
"""),
    code("""
fig = plot_fraction_fixed(run)
tables.fraction_fixed_table(run).round(2)
"""),
    md("""
## Position meets value
Finally, sigma against mu for one round: the vertical lines are the centres the round chose, the wedges the
weights each centre accepts (`|mu - c| <= delta * sigma`). Restricting to one layer shows where its weights
sit in those bands.
"""),
    code("""
fig = plot_sigma_vs_mu(run, round_index=0)
fig = plot_sigma_vs_mu(run, round_index=len(run.rounds) // 2, layer="conv3.weight")
"""),
    md("""
## On the command line
`pwfn-viz figures RUN_DIR --out figures/` writes all of these (and the other figures of a run) as PNG, PDF
and SVG; notebook 05 shows how.
"""),
]

# --------------------------------------------------------------------------------------------- 05
NB05 = [
    md("""
# Figures for a paper

One call writes every figure of a run, in PNG (for slides), PDF and SVG (vector, for papers):
`pwfn_viz.viz.write_figures(run, out_dir)`, or on the command line

```
pwfn-viz figures runs/digits_cnn-digits-... --out figures/ [--formats png,pdf,svg] [--no-compare]
```

This notebook makes a short run, writes its figures to a temporary folder, shows a few, and then builds a
custom multi-panel figure from the same functions (each takes `ax=` and returns the Figure).
"""),
    code(f"""
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

{FAST}
config = RunConfig(model="digits_cnn", pretrain_epochs=15 if FAST else 40, epochs_per_round=0.5 if FAST else 3,
                   threads=1)
run = pwfn_viz.run(config, out_dir=tempfile.mkdtemp(prefix="pwfn-paper-") + "/digits", progress=False)
"""),
    md("""
## Write every figure
`comparison=True` (the default) also runs `pwfn_viz.compare(run, finetune=False)`, k-means at the PWFN
result's budget, for the two comparison figures. In the fast configuration only the last round gets
per-round figures (`rounds=None`, the default, gives every round).
"""),
    code("""
out_dir = Path(tempfile.mkdtemp(prefix="pwfn-figures-"))
rounds = [len(run.rounds) - 1] if FAST else None
paths = write_figures(run, out_dir, formats=("png", "pdf", "svg"), rounds=rounds)
files = pd.DataFrame({"stem": [p.stem for p in paths], "format": [p.suffix[1:] for p in paths],
                      "kB": [round(p.stat().st_size / 1024) for p in paths]})
files.pivot(index="stem", columns="format", values="kB")
"""),
    md("""
A few of them, as written (PNG at 200 dpi):
"""),
    code("""
last = len(run.rounds) - 1
for stem in ["timeline", "sigma_by_layer", f"round_{last:02d}_sigma_vs_mu", "moves_vs_sigma"]:
    display(Image(filename=str(out_dir / f"{stem}.png"), width=640))
"""),
    md("""
## Your own multi-panel figure
Every plot function takes `ax=`, so a paper figure is a grid of calls. Save it as PDF for LaTeX.
"""),
    code("""
fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
plot_timeline(run, ax=axes[0, 0])
plot_sigma_by_layer(run, ax=axes[0, 1])
plot_sigma_vs_mu(run, round_index=0, ax=axes[1, 0])
plot_fraction_fixed(run, ax=axes[1, 1])
for ax, letter in zip(axes.flat, "abcd"):
    ax.set_title(f"({letter})", loc="left", fontweight="bold")
fig.savefig(out_dir / "panel.pdf")
print(sorted(p.name for p in out_dir.glob("panel.*")))
"""),
    md("""
## Style
All figures share one colour-blind-safe look (the Okabe-Ito palette, the `cividis` colour map, seaborn's
`ticks` style in the `paper` context), applied inside each call: importing `pwfn_viz` never changes
matplotlib's global settings. For slides, wrap the calls in `style("talk")`: an outer `style` wins.
"""),
    code("""
with style("talk"):
    fig = plot_timeline(run)
    fig.set_size_inches(9, 5)
"""),
]

# --------------------------------------------------------------------------------------------- 06
NB06 = [
    md("""
# timm models: a ResNet and a Vision Transformer through the whole pipeline

Any timm model name works in `RunConfig(model=...)`: every convolution and linear layer is converted, trained
with its uncertainty, fixed in rounds and recorded, and every plot works on the record. To keep this notebook
quick, both models are **reduced** (one block per stage, narrow channels; two transformer blocks) and start
from random weights, and the data are the embedded digits resized to 32x32 with three channels
(`RunConfig(dataset="digits", image_size=32, in_chans=3)`). With `PWFN_FAST=0` they train longer and go
through the paper's ten rounds.
"""),
    code(f"""
import os
import tempfile

import matplotlib.pyplot as plt

import pwfn_viz
from pwfn_viz import PAPER_FRACTIONS, RunConfig
from pwfn_viz.viz import (plot_attention_heads, plot_channel_heatmap, plot_fraction_fixed, plot_kernel_pattern,
                          plot_sigma_by_layer, plot_sigma_vs_mu, plot_timeline, tables)

{FAST}
common = dict(dataset="digits", image_size=32, in_chans=3, batch_size=64, first_round_epochs=0.1,
              epochs_per_round=0.2 if FAST else 1.0, fractions=(0.5, 0.8, 1.0) if FAST else PAPER_FRACTIONS)
out_dir = tempfile.mkdtemp(prefix="pwfn-timm-")
"""),
    md("""
## A ResNet-18 layout, reduced
`layers=[1, 1, 1, 1]` (one basic block per stage) and `channels=(16, 32, 64, 128)` are passed to
`timm.create_model` through `model_kwargs`.
"""),
    code("""
resnet_config = RunConfig(model="resnet18", model_kwargs=dict(layers=[1, 1, 1, 1], channels=(16, 32, 64, 128)),
                          pretrain_epochs=4 if FAST else 20, pretrain_lr=0.05, **common)
resnet = pwfn_viz.run(resnet_config, out_dir=f"{out_dir}/resnet", progress=False)
resnet.table()[["fraction", "top1_before", "top1_after", "unique", "entropy"]]
"""),
    code("""
fig = plot_timeline(resnet)
fig = plot_sigma_by_layer(resnet)
"""),
    md("""
The kernel-tap pattern pooled over every 3x3 convolution, and the channel map of the largest convolution.
With more than 100,000 weights, sigma against mu switches to a hexbin density with a sample of points on top.
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
plot_kernel_pattern(resnet, ax=axes[0])
plot_channel_heatmap(resnet, ax=axes[1])
fig = plot_sigma_vs_mu(resnet, round_index=0)
"""),
    md("""
## A Vision Transformer, reduced
`vit_tiny_patch16_224` with 32x32 inputs, 8x8 patches (16 tokens), two blocks, width 64 and four heads.
Class token, positional embedding and layer norms stay deterministic; every Linear (the fused `qkv`, `proj`,
the MLP, the head) and the patch embedding convolution are converted.
"""),
    code("""
vit_config = RunConfig(model="vit_tiny_patch16_224",
                       model_kwargs=dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4),
                       pretrain_epochs=15 if FAST else 40, pretrain_lr=0.1, **common)
vit = pwfn_viz.run(vit_config, out_dir=f"{out_dir}/vit", progress=False)
vit.table()[["fraction", "top1_before", "top1_after", "unique", "entropy"]]
"""),
    md("""
## Attention heads
The fused `qkv` weight of a timm attention block has shape `(3 * dim, dim)`: its rows are q, k and v, each
split into heads; the output projection `proj` reads head `h` from its columns `h * head_dim ... (h + 1) *
head_dim`. `plot_attention_heads` shows the mean learned sigma of every (layer, head) for q, k, v and proj;
the number of heads is read from the model.
"""),
    code("""
fig = plot_attention_heads(vit)
attention = tables.find_attention(vit.plain_model_at(-1))
print(attention)
tables.attention_head_table(tables.sigma_tensors(vit), attention).round(5)
"""),
    code("""
fig = plot_sigma_by_layer(vit)
fig = plot_fraction_fixed(vit)
fig = plot_sigma_vs_mu(vit, round_index=0, layer="blocks.0.attn.qkv.weight")
"""),
]

# --------------------------------------------------------------------------------------------- 07
NB07 = [
    md("""
# Weight sharing, from scratch

A network stores every weight as a 32-bit float. **Weight sharing** replaces them by a few shared values
(a *codebook*): each weight then only needs the index of its value, and multiplications can be cheaper.
The question is always the same: **which weight goes to which shared value?**

We answer it four ways on twelve toy weights you can follow one by one:

1. rounding to a uniform grid,
2. k-means (the shared values are fitted to the weights),
3. powers of two (shared values that are cheap in hardware),
4. PWFN: powers of two, where each weight's **uncertainty** decides how far it may move.

At the end there are three exercises, with solutions hidden in collapsed cells.
"""),
    code(f"""
import os

import pandas as pd
import torch

from pwfn_viz.core.clustering import ClusterConfig, candidate_centres, cluster_round
from pwfn_viz.baselines.kmeans import kmeans_1d
from pwfn_viz.core.metrics import codebook_stats
from pwfn_viz.viz import plot_greedy_steps, plot_sigma_vs_mu
from pwfn_viz.analysis.tables import power_of_two_terms, round_from_cluster
from pwfn_viz.viz.teaching import plot_number_line, snap_to_codebook

{FAST}
mu = torch.tensor([0.62, 0.27, 0.249, -0.13, 0.1245, 0.004, -0.35, 0.502, -0.02, 0.09, -0.26, 0.75],
                  dtype=torch.float64)
sigma = torch.tensor([0.02, 0.05, 0.002, 0.04, 0.001, 0.01, 0.1, 0.003, 0.02, 0.03, 0.005, 0.2],
                     dtype=torch.float64)
pd.DataFrame({{"mu": mu, "sigma": sigma}}).T.round(3)
"""),
    md("""
`mu` are the weights. `sigma` is, for now, just a second number per weight; section 4 explains it.

## 1. Rounding to a grid
The simplest codebook: multiples of a step. Every weight goes to the nearest multiple; the error is at most
half a step, for every weight alike.
"""),
    code("""
step = 0.25
rounded = torch.round(mu / step) * step
print("codebook:", sorted(set(rounded.tolist())), "| largest move:", (rounded - mu).abs().max().item())
fig = plot_number_line(mu, rounded, codebook=torch.arange(-0.5, 0.76, step), title="rounding to multiples of 0.25")
"""),
    md("""
## 2. k-means: fit the shared values to the weights
k-means picks `k` values that minimise the squared distance of every weight to its nearest value
(Deep Compression, TF Model Optimization's clustering, coremltools' palettization all do this).
"""),
    code("""
km = kmeans_1d(mu, 4, seed=0)
kmeans_values = torch.as_tensor(km.centres)[torch.as_tensor(km.labels)]
print(km, "| centres:", [round(c, 3) for c in km.centres.tolist()])
fig = plot_number_line(mu, kmeans_values, codebook=km.centres, title="k-means, k = 4")
"""),
    md("""
The centres follow the data, but they are arbitrary floats: multiplying by one still needs a multiplier.

## 3. Powers of two
A codebook of zero and signed powers of two, `+-2^-7 ... +-2^-1`, makes every multiplication a bit shift.
Sums of two, three or four powers of two (`0.375 = 2^-2 + 2^-3`: two shifts and an add) give finer codebooks
at a small cost. `candidate_centres(P, max_abs)` lists all sums of up to `P` powers of two up to `max_abs`.
"""),
    code("""
for order in (1, 2, 3, 4):
    print(f"P = {order}: {len(candidate_centres(order, 1.0)):4d} values")
print("P = 1:", candidate_centres(1, 1.0).tolist())
print("0.375 needs", power_of_two_terms(torch.tensor([0.375])).item(), "powers of two")
"""),
    code("""
pow2 = candidate_centres(1, 1.0)
pow2_values, _ = snap_to_codebook(mu, pow2)
fig = plot_number_line(mu, pow2_values, codebook=pow2, title="nearest power of two")
"""),
    md("""
Rounding, k-means and nearest power of two all decide **by value alone**: two weights with the same value are
treated the same, however much the network cares about each.

## 4. PWFN: let each weight's uncertainty decide
PWFN trains, for every weight, a standard deviation `sigma`: how much noise the network tolerates on that
weight. A weight **fits** a centre `c` when `|mu - c| <= delta * sigma` (`delta = 1` at first): the bar
around each weight below. `w2` (sigma 0.002) must stay almost exactly where it is; `w11` (sigma 0.2) may go
almost anywhere.
"""),
    code("""
fig = plot_number_line(mu, sigma=sigma, codebook=pow2, title="each weight and its allowance mu +- sigma")
"""),
    md("""
One **round** fixes a fraction of the weights, greedily: among the powers of two, the centre that fits the
most unfixed weights wins and takes them; repeat. When no centre fits any remaining weight, the candidates grow
(sums of more powers of two, `P += 1`) or the allowance widens (`delta *= 2`). Here is a round that fixes half
of the weights; each row of the table is one greedy step.
"""),
    code("""
half = cluster_round(mu, sigma, fraction=0.5)
half.steps[["pass_index", "step", "P", "delta", "centre", "n_fit", "n_taken"]]
"""),
    md("""
The same round in the (mu, sigma) plane: a weight fits centre `c` when it lies in the wedge
`sigma >= |mu - c| / delta` above `c`. Orange weights were fixed, blue ones are still free (in a real run,
they train on and get fixed in a later round).
"""),
    code("""
round_half = round_from_cluster(mu, sigma, half)
fig = plot_sigma_vs_mu(round_half, bands="fill")
"""),
    md("""
Now fix everything (`fraction=1.0`). Weights that fit no power of two need larger `P` or `delta`:
"""),
    code("""
full = cluster_round(mu, sigma, fraction=1.0)
round_full = round_from_cluster(mu, sigma, full)
fig = plot_greedy_steps(round_full)
fig = plot_number_line(mu, full.mu, sigma=sigma, codebook=full.centres, title="PWFN, all weights fixed")
"""),
    md("""
## How far did each method move each weight, in units of its sigma?
A move larger than one sigma goes beyond what the network said it tolerates.
"""),
    code("""
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
"""),
    md("""
Under PWFN no weight moves further than its sigma allows: the certain weights (`w2`, `w4`, `w7`, `w10`) land
on shared values inside their narrow allowance, often by using a finer sum of powers of two, while rounding,
k-means and the nearest power of two move some of them by many sigmas. In a real network (notebooks 01 to 04)
that is what keeps the accuracy while the codebook shrinks.

## Exercises
Each exercise has a solution in the collapsed cell below it (click the dots to expand it).

**Exercise 1.** Start with a narrower band: `cluster_round(mu, sigma, 1.0, config=ClusterConfig(delta=0.5))`.
How many passes (`pass_index`) does the round need now, and how many distinct centres does it use?
"""),
    code("""
narrow = cluster_round(mu, sigma, 1.0, config=ClusterConfig(delta=0.5))
print("passes:", narrow.steps["pass_index"].nunique(), "(delta = 1:", full.steps["pass_index"].nunique(), ")")
print("distinct centres:", len(set(narrow.centres.tolist())), "(delta = 1:", len(set(full.centres.tolist())), ")")
""", hidden=True),
    md("""
**Exercise 2.** Which candidate centres of order `P <= 2` does a weight with `mu = 0.3`, `sigma = 0.1` fit at
`delta = 1`? And at `delta = 0.25`?
"""),
    code("""
candidates = candidate_centres(2, 1.0)
for delta in (1.0, 0.25):
    fits = candidates[(candidates - 0.3).abs() <= delta * 0.1]
    print(f"delta = {delta}:", sorted(fits.tolist()))
""", hidden=True),
    md("""
**Exercise 3.** Give k-means as many values as PWFN used (`len(set(full.mu.tolist()))`). Which method moves
more weights further than one sigma?
"""),
    code("""
k = len(set(full.mu.tolist()))
km_same = kmeans_1d(mu, k, seed=0)
km_same_values = torch.as_tensor(km_same.centres)[torch.as_tensor(km_same.labels)]
beyond = {"k-means": int(((km_same_values - mu).abs() > sigma).sum()),
          "PWFN": int(((full.mu - mu).abs() > sigma).sum())}
print(f"k = {k}; weights moved more than one sigma:", beyond)
""", hidden=True),
]

NOTEBOOKS = {
    "03_uncertainty_vs_position.ipynb": NB03,
    "05_paper_figures.ipynb": NB05,
    "06_timm_models.ipynb": NB06,
    "07_teaching_weight_sharing.ipynb": NB07,
}


def main():
    for name, cells in NOTEBOOKS.items():
        nbformat.write(notebook(name, cells), HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
