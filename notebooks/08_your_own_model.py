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
# # Your own model, your own loss, your own metric
#
# PWFN does not need a classifier or the built-in pipeline. `pwfn_viz.Fixer` fits inside *your* training
# loop: it converts your model, gives you the two loss terms to add to your loss (`fixer.loss_terms()`), and
# `fixer.fix(fraction)` evaluates your network with *your* function, clusters, snaps and records the round.
# The record is the same run directory `pwfn_viz.run` writes, so every plot and widget replays it.
#
# Two examples, neither of them a classifier:
#
# 1. a small **autoencoder** of your own (`nn.Module`) on the embedded 8x8 digits, with a reconstruction loss
#    and the mean squared error as its metric (lower is better);
# 2. a **Hugging Face BERT** built from a small config (nothing is downloaded), trained as a masked language
#    model on the source files of Python's standard library, read byte by byte; its metric is perplexity.
#
# Where a tool rebuilds or measures a network (comparison with k-means, noise analysis, export, attention
# heads), you pass your architecture (`model=`, an unconverted instance) and your metric (`evaluate=`).
#
# `PWFN_FAST=1` (the default) keeps each training short (the notebook runs in about a minute and a half on two
# CPU cores); `PWFN_FAST=0` trains several times longer. Part 2 needs the `hf` extra (`pip install -e ".[hf]"`).

# %%
import math
import os
import sysconfig
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

import pwfn_viz
from pwfn_viz.viz.position import plot_attention_heads, plot_sigma_by_layer
from pwfn_viz.widgets import RoundExplorer, UncertaintyExplorer

FAST = os.environ.get("PWFN_FAST", "1") != "0"   # PWFN_FAST=0: longer training
torch.set_num_threads(min(2, os.cpu_count() or 1))
out_dir = Path(tempfile.mkdtemp(prefix="pwfn-own-"))

# %% [markdown]
# ## 1. An autoencoder of your own
#
# The data are the digits images, flattened to 64 numbers; the model squeezes them through 12 and back.
# Everything here is ordinary PyTorch: the model, the loss, the optimiser, the metric.

# %%
data = pwfn_viz.create_dataset("digits")
images = torch.stack([x.flatten() for x, _ in data.train])
test_images = torch.stack([x.flatten() for x, _ in data.test])
pairs = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, images), batch_size=64, shuffle=True)


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 12), nn.ReLU())
        self.decode = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 64))

    def forward(self, x):
        return self.decode(self.encode(x))


def reconstruction(model):                      # your metric: a dict of numbers; the first is primary
    out = model(test_images)
    return {"mse": nn.functional.mse_loss(out, test_images).item(), "mae": (out - test_images).abs().mean().item()}


def train(model, steps, lr, extra_loss=lambda: 0.0, params=None):
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    model.train()
    done = 0
    while done < steps:
        for x, y in pairs:
            loss = nn.functional.mse_loss(model(x), y) + extra_loss()
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break


torch.manual_seed(0)
autoencoder = AutoEncoder()
train(autoencoder, 300 if FAST else 2000, lr=3e-3)   # ordinary training first
reconstruction(autoencoder.eval())

# %% [markdown]
# Now PWFN, in rounds. `fixer.param_groups(lr=...)` gives sigma its own (larger) learning rate, and
# `fixer.loss_terms()` is the sigma regulariser plus weight decay that spares fixed weights. `primary="mse"` names
# the metric that tables, plots and widgets show (`mse` is known to be lower-is-better; for other names pass
# `higher_is_better=`).

# %%
fixer = pwfn_viz.Fixer(autoencoder, out_dir / "autoencoder", evaluate=reconstruction, primary="mse",
                       fractions=(0.4, 0.7, 0.9, 0.97, 1.0))
for fraction in fixer.fractions:
    train(autoencoder, 30 if FAST else 250, lr=1e-3, extra_loss=fixer.loss_terms,
          params=fixer.param_groups(lr=1e-3))
    fixer.fix(fraction)
run = fixer.run
run.table()[["fraction", "mse_before", "mse_after", "unique", "entropy"]]

# %% [markdown]
# Has sigma learned anything, or is it still its initialisation? The diagnostic compares the sigma each round
# clustered with against the sigma at conversion, over the weights still free:

# %%
print(run.sigma_verdict_line())

# %% [markdown]
# The record replays without your code: step through the rounds and look at the uncertainties.

# %%
RoundExplorer(run)

# %%
UncertaintyExplorer(run)

# %% [markdown]
# Tools that rebuild or measure a network take your architecture and your metric. `compare` quantises the
# starting network with k-means at PWFN's budget (and fine-tunes it with your `train_loader` and `loss_fn`); its
# table reports `mse`, the run's primary metric. Forgetting `model=` gives an error that says what to pass.

# %%
comparison = pwfn_viz.compare(run, model=AutoEncoder(), evaluate=reconstruction, train_loader=pairs,
                              loss_fn=nn.functional.mse_loss, finetune_epochs=1)
comparison.table[["method", "k", "finetuned", "mse", "unique", "entropy", "weight_error"]]

# %%
try:
    pwfn_viz.analyse(run)
except ValueError as err:
    print(err)

# %% [markdown]
# The noise analysis measures your metric under the learned noise and under isotropic noise of the same total
# size. Calibration and ensembles need class probabilities, so for a reconstruction model they are skipped
# (`notes` says so).

# %%
noise = pwfn_viz.analyse(run, model=AutoEncoder(), evaluate=reconstruction, n_samples=4)
print(noise.notes[0])
noise.summary

# %% [markdown]
# The fixed network exports as one codebook plus bit-packed indices, and loads back into your architecture with
# the same outputs:

# %%
print(pwfn_viz.export_run(run, out_dir / "autoencoder.safetensors"))
loaded = pwfn_viz.load_exported(out_dir / "autoencoder.safetensors", model=AutoEncoder())
assert torch.equal(loaded(test_images), run.plain_model_at(-1, model=AutoEncoder())(test_images))

# %% [markdown]
# ## 2. A Hugging Face transformer as a masked language model
#
# The text is the source code of Python's standard library, which every Python installation has. Each byte is
# a token (256 of them, plus one mask token), so no tokenizer is needed. A masked language model sees a window
# of bytes with 15% of them replaced by the mask token and predicts the originals; its loss is the
# cross-entropy on those, and perplexity `exp(loss)` is the metric (lower is better).

# %%
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

stdlib = Path(sysconfig.get_paths()["stdlib"])
files = [stdlib / name for name in ("textwrap.py", "string.py", "fnmatch.py", "glob.py", "shlex.py", "bisect.py")]
text = torch.tensor(list(b"\n".join(f.read_bytes() for f in files if f.exists())), dtype=torch.long)
MASK, LENGTH = 256, 32
split = int(0.9 * len(text))
print(f"{len(text):,} bytes of Python source ({split:,} to train on)")


def masked_batch(source, n, generator):
    """n windows of LENGTH bytes, 15% masked: (input ids, labels: the masked bytes, -100 elsewhere)."""
    starts = torch.randint(0, len(source) - LENGTH, (n,), generator=generator)
    x = torch.stack([source[s:s + LENGTH] for s in starts])
    masked = torch.rand(x.shape, generator=generator) < 0.15
    return x.masked_fill(masked, MASK), torch.where(masked, x, torch.full_like(x, -100))


def mlm_loss(output, labels):
    return nn.functional.cross_entropy(output.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


eval_x, eval_y = masked_batch(text[split:], 64, torch.Generator().manual_seed(1))


def perplexity(model):
    loss = mlm_loss(model(eval_x), eval_y).item()
    return {"perplexity": math.exp(loss), "loss": loss}


def make_bert():
    config = BertConfig(vocab_size=257, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=LENGTH, tie_word_embeddings=False)
    return BertForMaskedLM(config)


def train_mlm(model, steps, lr, extra_loss=lambda: 0.0, params=None, seed=0):
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = masked_batch(text[:split], 16, g)
        loss = mlm_loss(model(x), y) + extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


torch.manual_seed(0)
bert = make_bert()
train_mlm(bert, 150 if FAST else 1500, lr=2e-3)
perplexity(bert.eval())

# %% [markdown]
# `pwfn_viz.convert` turns every `nn.Linear` of the Hugging Face model into a layer with a mean and a learned
# sigma per weight: the attention's query, key and value projections, its output projection, the feed-forward
# layers and the language-model head (the embeddings are not linear layers and stay as they are; with tied input
# and output embeddings the head would be an embedding too, hence `tie_word_embeddings=False`). The loop is the
# same as above.

# %%
bert_fixer = pwfn_viz.Fixer(bert, out_dir / "bert", evaluate=perplexity, primary="perplexity",
                            fractions=(0.5, 0.75, 0.9, 1.0))
for r, fraction in enumerate(bert_fixer.fractions):
    train_mlm(bert, 15 if FAST else 200, lr=5e-4, extra_loss=bert_fixer.loss_terms,
              params=bert_fixer.param_groups(lr=5e-4), seed=100 + r)
    bert_fixer.fix(fraction)
bert_run = bert_fixer.run
print(bert_run.sigma_verdict_line())
bert_run.table()[["fraction", "perplexity_before", "perplexity_after", "unique", "entropy"]]

# %%
RoundExplorer(bert_run)

# %%
UncertaintyExplorer(bert_run)

# %% [markdown]
# Sigma by tensor, in network order, and per attention head: BERT keeps query, key and value in three Linear
# layers (`attention.self.query`, ...) and the output projection in `attention.output.dense`; each head owns
# `hidden_size / heads` rows of q, k and v and as many input columns of the output projection. Finding the heads
# needs the architecture, so pass `model=`.

# %%
plot_sigma_by_layer(bert_run);

# %%
plot_attention_heads(bert_run, model=make_bert());
