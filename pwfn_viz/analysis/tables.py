"""The numbers behind every plot, as pure functions over run records and tensors.

Plots draw what these functions return, and the tests check these functions against brute
force, so a figure can always be reproduced as a table:

    >>> import torch
    >>> sigma = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    >>> channel_sigma(sigma)[1, 2].item()          # mean of sigma[1, 2, :, :]
    21.5
    >>> kernel_pattern(sigma).tolist()              # mean over output and input channels
    [[10.0, 11.0], [12.0, 13.0]]
    >>> power_of_two_terms(torch.tensor([0.0, 0.75, -0.5, 0.3])).tolist()   # 0.3: not on the grid
    [0, 2, 1, -1]

Sources: most functions accept a :class:`~pwfn_viz.record.rundir.Run` (with a round index), a
:class:`~pwfn_viz.record.rundir.Round`, or a plain mapping ``tensor name -> tensor``.
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from ..constants import SAMPLING_SIGMA_FLOOR
from ..record.rundir import Round, Run

__all__ = ["SIGMA_FLOOR", "WHICH", "resolve_round", "check_layer", "sigma_tensors", "sigma_summary",
           "channel_sigma", "kernel_pattern", "pooled_kernel_pattern", "position_spread",
           "position_spread_table", "find_attention", "split_qkv",
           "split_proj", "attention_head_table", "fraction_fixed_table", "weight_status", "value_counts",
           "power_of_two_terms", "round_from_cluster", "largest_conv", "layer_table", "steps_table",
           "config_summary", "SIGMA_STATS"]

SIGMA_FLOOR = SAMPLING_SIGMA_FLOOR   # the smallest sigma the method uses (docs/method.md, section 1)
#: which sigma a position plot shows
WHICH = {
    "pre": "the round's sigma before its snap",
    "post": "the round's sigma after its snap",
    "learned": "each weight's pre-snap sigma in the round that fixed it (Run only)",
    "initial": "sigma at conversion, before any training (Run only): the initialisation pattern",
}


# ----------------------------------------------------------------------------- lookups

def resolve_round(source, round_index: int | None = None) -> Round:
    """The :class:`Round` a plot is about: ``source`` itself, or ``source.rounds[round_index]``
    (default: the last round) for a :class:`Run`."""
    if isinstance(source, Round):
        if round_index is not None and round_index != source.index:
            raise ValueError(f"a Round ({source.index}) was given together with round_index={round_index}; "
                             "pass the Run to pick a round by index")
        return source
    if isinstance(source, Run):
        if not source.rounds:
            raise ValueError(f"{source.path} has no completed round yet (an interrupted run?); "
                             "finish it with `pwfn-viz run --resume DIR`")
        i = -1 if round_index is None else round_index
        if not -len(source.rounds) <= i < len(source.rounds):
            raise IndexError(f"round {i} not recorded; this run has rounds 0..{len(source.rounds) - 1}")
        return source.rounds[i]
    raise TypeError(f"expected a pwfn_viz Run or Round, got {type(source).__name__}")


def check_layer(names, layer: str) -> str:
    """``layer`` if it is one of ``names``, else a ValueError listing the available ones."""
    names = list(names)
    if layer not in names:
        raise ValueError(f"no layer {layer!r} in this run; available: {', '.join(names)}")
    return layer


def sigma_tensors(source, round_index: int | None = None, which: str | None = None) -> dict[str, torch.Tensor]:
    """Effective sigma (floored at 2^-30, float64) of every converted tensor, in network order.

    ``which`` (see :data:`WHICH`): "learned" (default for a Run), "pre" (default for a Round),
    "post", or "initial" (``run.initial_sigma``, the sigma at conversion: draw it beside a
    learned picture to tell what training put there from the initialisation formula's pattern).
    A mapping is taken as the sigma tensors themselves.
    """
    if isinstance(source, Mapping):
        out = dict(source)
    else:
        which = which or ("learned" if isinstance(source, Run) else "pre")
        if which not in WHICH:
            raise ValueError(f"which={which!r} is unknown; choose one of {list(WHICH)}")
        if which in ("learned", "initial"):
            if not isinstance(source, Run):
                raise ValueError(f"which={which!r} needs the whole Run; pass the Run, or use "
                                 "which='pre' / 'post' for a Round")
            if round_index is not None:
                raise ValueError(f"which={which!r} belongs to no single round; drop round_index or use 'pre' / 'post'")
        if which == "initial":
            out = source.initial_sigma
        elif which == "learned":
            resolve_round(source)   # a clear error for a run with no rounds
            from .compare import learned_sigma
            out = learned_sigma(source)
        else:
            rnd = resolve_round(source, round_index)
            out = rnd.pre_sigma if which == "pre" else rnd.sigma
    return {n: t.detach().double().clamp(min=SIGMA_FLOOR) for n, t in out.items()}


def largest_conv(tensors: Mapping[str, torch.Tensor]) -> str:
    """Name of the convolution weight (4-D) with the most entries."""
    convs = [(t.numel(), n) for n, t in tensors.items() if t.dim() == 4]
    if not convs:
        raise ValueError(f"no convolution weight (4-D tensor) among {', '.join(tensors)}")
    return max(convs, key=lambda c: c[0])[1]


# ----------------------------------------------------------------------------- uncertainty against position

def sigma_summary(sigma: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """One row per tensor, in the given (network) order: numel, mean, min, q05, q25, median,
    q75, q95, max of its sigma (numpy's linear-interpolation quantiles)."""
    rows = []
    for name, t in sigma.items():
        v = t.detach().double().flatten().numpy()
        q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
        rows.append(dict(layer=name, numel=v.size, mean=v.mean(), min=v.min(), q05=q[0], q25=q[1],
                         median=q[2], q75=q[3], q95=q[4], max=v.max()))
    return pd.DataFrame(rows).set_index("layer")


def channel_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """(out channels, in channels) mean of sigma over the kernel taps (a linear weight is
    returned as it is)."""
    if sigma.dim() < 2:
        raise ValueError(f"a tensor of shape {tuple(sigma.shape)} has no input channels; pick a weight, not a bias")
    return sigma.double().flatten(2).mean(dim=2) if sigma.dim() > 2 else sigma.double()


def kernel_pattern(sigma: torch.Tensor) -> torch.Tensor:
    """The mean of sigma at each kernel tap (e.g. a 3x3 array), over output and input channels."""
    if sigma.dim() < 3:
        raise ValueError(f"a tensor of shape {tuple(sigma.shape)} has no kernel taps; pick a convolution weight")
    return sigma.double().mean(dim=(0, 1))


def pooled_kernel_pattern(sigma: Mapping[str, torch.Tensor], kernel_shape: tuple | None = None):
    """Mean sigma per kernel tap over every convolution weight with ``kernel_shape`` (default:
    the most common kernel shape with more than one tap), each weight counted once.

    Returns ``(pattern, names)``."""
    shapes = {n: tuple(t.shape[2:]) for n, t in sigma.items() if t.dim() >= 3}
    if kernel_shape is None:
        counts = Counter(s for s in shapes.values() if int(np.prod(s)) > 1)
        if not counts:
            raise ValueError("no convolution with more than one kernel tap in this network")
        kernel_shape = counts.most_common(1)[0][0]
    names = [n for n, s in shapes.items() if s == tuple(kernel_shape)]
    if not names:
        raise ValueError(f"no convolution with kernel shape {tuple(kernel_shape)}; "
                         f"shapes here: {sorted(set(shapes.values()))}")
    total = sum(sigma[n].double().sum(dim=(0, 1)) for n in names)
    count = sum(sigma[n].shape[0] * sigma[n].shape[1] for n in names)
    return total / count, names


def position_spread(sigma: torch.Tensor, shuffle_seed: int | None = None) -> dict[str, float]:
    """How strongly the mean sigma of one weight tensor depends on position: for each axis (output
    channel, input channel, kernel tap), the coefficient of variation (population standard deviation
    over mean) of the mean sigma at each position of that axis. 0 means every position looks alike;
    an axis a tensor lacks (or with a single position) gives NaN.

    With ``shuffle_seed`` the same values are first put at random positions (a seeded permutation):
    the spread that averaging alone leaves when position does not matter. A spread well above its
    shuffled value is structure by position; one near it is noise. The initial sigma depends on each
    value, not on its position, so its spreads sit at that noise level.

    >>> s = torch.tensor([[1.0, 1.0], [3.0, 3.0]])     # output channel 1 has three times the sigma
    >>> spread = position_spread(s)                     # a linear weight: no kernel taps (NaN)
    >>> spread["out_channels"], spread["in_channels"]
    (0.5, 0.0)
    """
    if sigma.dim() < 2:
        raise ValueError(f"a tensor of shape {tuple(sigma.shape)} has no channels; pick a weight, not a bias")
    t = sigma.double()
    if shuffle_seed is not None:
        g = torch.Generator().manual_seed(shuffle_seed)
        t = t.flatten()[torch.randperm(t.numel(), generator=g)].reshape(t.shape)

    def cv(means: torch.Tensor) -> float:
        if means.numel() < 2:
            return float("nan")
        return float(means.std(correction=0) / means.mean())

    out = {"out_channels": cv(t.flatten(1).mean(dim=1)),
           "in_channels": cv(t.transpose(0, 1).flatten(1).mean(dim=1))}
    out["kernel_taps"] = cv(t.flatten(2).mean(dim=(0, 1))) if t.dim() > 2 else float("nan")
    return out


def position_spread_table(sources: Mapping[str, Mapping[str, torch.Tensor]], layers=None, shuffles: int = 100,
                          seed: int = 0) -> pd.DataFrame:
    """:func:`position_spread` of several sigmas of the same tensors side by side, e.g.
    ``{"learned": sigma_tensors(run), "initial": sigma_tensors(run, which="initial")}``.

    Rows ``(layer, source)`` in network order. After each source's row (unless ``shuffles`` is 0)
    comes ``"<source>, shuffled q95"``: the 95th percentile of the spreads of the same values put at
    ``shuffles`` random positions (seeds ``seed``, ``seed + 1``, ...). A spread above it is one that
    random placement reaches less than 5 % of the time: structure by position; one below it, noise.
    ``layers`` picks tensor names (default: every tensor with two or more dimensions); columns
    out_channels, in_channels, kernel_taps."""
    if not sources:
        raise ValueError("no sigma given: pass {label: {tensor name: sigma}}")
    first = next(iter(sources.values()))
    names = list(layers) if layers is not None else [n for n, t in first.items() if t.dim() >= 2]
    rows, index = [], []
    for name in names:
        for label in sources:
            check_layer(sources[label], name)
            rows.append(position_spread(sources[label][name]))
            index.append((name, label))
            if shuffles > 0:
                shuffled = pd.DataFrame([position_spread(sources[label][name], shuffle_seed=seed + k)
                                         for k in range(shuffles)])
                rows.append({c: float(np.quantile(shuffled[c], 0.95)) if shuffled[c].notna().all() else float("nan")
                             for c in shuffled.columns})
                index.append((name, f"{label}, shuffled q95"))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["layer", "sigma"]))


def find_attention(model: torch.nn.Module) -> dict[str, int]:
    """``{module name: num_heads}`` of every attention block with a fused ``qkv`` Linear and a
    ``proj`` Linear (timm's ViT/DeiT ``Attention``)."""
    out = {}
    for name, m in model.named_modules():
        linear = [isinstance(getattr(m, a, None), torch.nn.Linear) for a in ("qkv", "proj")]
        if all(linear) and isinstance(getattr(m, "num_heads", None), int):
            out[name] = m.num_heads
    return out


def split_qkv(weight: torch.Tensor, num_heads: int) -> dict[str, torch.Tensor]:
    """Split a fused qkv weight (3 * heads * head_dim, dim) (or its bias) into
    ``{"q", "k", "v"} -> (heads, head_dim, ...)``, the layout timm's ``Attention`` uses
    (``qkv(x).reshape(B, N, 3, heads, head_dim)``)."""
    rows = weight.shape[0]
    if rows % (3 * num_heads):
        raise ValueError(f"a qkv tensor with {rows} rows cannot be split into 3 x {num_heads} heads")
    parts = weight.reshape(3, num_heads, rows // (3 * num_heads), *weight.shape[1:])
    return {"q": parts[0], "k": parts[1], "v": parts[2]}


def split_proj(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Split an output projection weight (dim_out, heads * head_dim) by input columns into
    (heads, dim_out, head_dim): head ``h`` reads columns ``h*head_dim:(h+1)*head_dim``."""
    cols = weight.shape[1]
    if cols % num_heads:
        raise ValueError(f"a proj weight with {cols} input columns cannot be split into {num_heads} heads")
    return weight.reshape(weight.shape[0], num_heads, cols // num_heads).permute(1, 0, 2)


def attention_head_table(tensors: Mapping[str, torch.Tensor], attention: Mapping[str, int],
                         stat: str = "mean") -> pd.DataFrame:
    """One row per (attention layer, head), columns q, k, v, proj: ``stat`` ("mean" or "median")
    of the tensors over that head's weights (``<layer>.qkv.weight``, ``<layer>.proj.weight``).

    ``attention`` maps each attention module name to its number of heads (:func:`find_attention`)."""
    if stat not in ("mean", "median"):
        raise ValueError(f"stat={stat!r}: use 'mean' or 'median'")
    reduce = (lambda t: t.double().mean().item()) if stat == "mean" else (lambda t: t.double().median().item())
    rows = []
    for layer, heads in attention.items():
        qkv_name, proj_name = f"{layer}.qkv.weight", f"{layer}.proj.weight"
        for n in (qkv_name, proj_name):
            check_layer(tensors, n)
        qkv, proj = split_qkv(tensors[qkv_name], heads), split_proj(tensors[proj_name], heads)
        for h in range(heads):
            rows.append(dict(layer=layer, head=h, q=reduce(qkv["q"][h]), k=reduce(qkv["k"][h]),
                             v=reduce(qkv["v"][h]), proj=reduce(proj[h])))
    if not rows:
        raise ValueError("no attention layers given (find_attention found none: is this a transformer?)")
    return pd.DataFrame(rows).set_index(["layer", "head"])


def fraction_fixed_table(run: Run) -> pd.DataFrame:
    """Rounds (index) x converted tensors (columns, network order): fraction of each tensor's
    weights fixed after the round's snap."""
    names = list(run.meta["tensors"])
    if not run.rounds:
        raise ValueError(f"{run.path} has no completed round yet (an interrupted run?)")
    rows = {}
    for rnd in run.rounds:
        if len(rnd.layers):
            rows[rnd.index] = rnd.layers.set_index("name")["fraction_fixed"].reindex(names)
        else:   # no layers.csv: count the masks
            rows[rnd.index] = pd.Series({n: m.float().mean().item() for n, m in rnd.fixed.items()}).reindex(names)
    table = pd.DataFrame(rows).T
    table.index.name, table.columns.name = "round", "layer"
    return table


#: the per-layer table's sigma statistics and the :func:`sigma_summary` column each is recomputed from
SIGMA_STATS = {"sigma_mean": "mean", "sigma_median": "median", "sigma_q05": "q05", "sigma_q25": "q25",
               "sigma_q75": "q75", "sigma_q95": "q95"}


def layer_table(source, round_index: int | None = None, columns=None, digits: int | None = None) -> pd.DataFrame:
    """The per-layer table of a round (its ``layers.csv``, written after the snap) with every
    sigma statistic (:data:`SIGMA_STATS`) recomputed from the sigma the method uses,
    ``max(sigma, 2^-30)``: the record summarises the raw parameter, which training may push to zero
    or below, so its quantiles can read negative. ``columns`` picks columns (``name`` first);
    ``digits`` rounds the numbers (significant digits for the sigma columns).

        >>> layer_table(run, -1, ["name", "unique", "sigma_median"], digits=3)   # doctest: +SKIP
    """
    rnd = resolve_round(source, round_index)
    if not len(rnd.layers):
        raise ValueError(f"round {rnd.index} recorded no per-layer table (layers.csv missing)")
    table = rnd.layers.reset_index(drop=True).copy()
    stats = sigma_summary(sigma_tensors(rnd, which="post"))
    for column, key in SIGMA_STATS.items():
        if column in table:
            table[column] = table["name"].map(stats[key]).to_numpy(float)
    if columns is not None:
        missing = [c for c in columns if c not in table]
        if missing:
            raise ValueError(f"no column(s) {missing}; the table has {list(table.columns)}")
        table = table[list(columns)]
    if digits is not None:
        table = table.copy()
        for column in table.select_dtypes("number").columns:
            if column in SIGMA_STATS:
                table[column] = table[column].map(lambda v: float(f"{v:.{digits}g}"))
            elif column != "round":
                table[column] = table[column].round(digits)
    return table


def steps_table(source, round_index: int | None = None, columns=None) -> pd.DataFrame:
    """The greedy steps of a round (``Round.steps``) with ``sigma_mean`` / ``sigma_std`` of the
    weights each step took recomputed from ``max(sigma, 2^-30)`` (the record uses the raw pre-snap
    parameter). A step's weights are known exactly when its centre won no other step of the round:
    the weights fixed at that value after the snap (a step also takes the weights fixed earlier that
    sit on its centre, and counts them in its statistics). A centre that won in several passes shares its weights
    between them; those steps keep the recorded mean, raised to the floor (the clamped mean can
    only be larger), and the recorded spread. ``columns`` picks columns."""
    rnd = resolve_round(source, round_index)
    steps = rnd.steps.reset_index(drop=True).copy()
    if len(steps) and {"sigma_mean", "centre", "n_taken"} <= set(steps.columns):
        _, sigma, _ = rnd.flat("pre")
        post_mu, _, post_fixed = rnd.flat("post")
        sigma, post_mu, post_fixed = sigma.double().clamp(min=SIGMA_FLOOR), post_mu.double(), post_fixed.bool()
        taken = steps[steps["n_taken"] > 0]
        unique = taken["centre"].map(taken["centre"].value_counts()) == 1
        for i in taken.index:
            if unique[i]:
                chosen = sigma[post_fixed & (post_mu == float(steps.at[i, "centre"]))]
                if chosen.numel():
                    steps.at[i, "sigma_mean"] = chosen.mean().item()
                    steps.at[i, "sigma_std"] = chosen.std(correction=0).item()
                    continue
            steps.at[i, "sigma_mean"] = max(float(steps.at[i, "sigma_mean"]), SIGMA_FLOOR)
    return steps if columns is None else steps[list(columns)]


def config_summary(source) -> pd.DataFrame:
    """The settings that decide a run, one row each (``setting``, ``value``): model and data, the
    rounds' fractions, training per round, sigma's initialisation and learning rate, and the
    clustering. ``source``: a Run (adds the unquantised accuracy) or a RunConfig.

        >>> from pwfn_viz import RunConfig
        >>> config_summary(RunConfig.demo()).loc["rounds", "value"]
        '10: 20, 40, 60, 70, 80, 90, 95, 97.5, 99, 100 %'
    """
    import dataclasses
    config = source.config if isinstance(source, Run) else dataclasses.asdict(source)
    cluster = config.get("cluster") or {}
    fractions = config.get("fractions") or ()
    steps = config.get("steps_per_round")
    training = (f"{config.get('first_round_steps') or steps} steps, then {steps} a round" if steps
                else f"{config.get('first_round_epochs')} epochs, then {config.get('epochs_per_round')} a round")
    rows = {
        "model / data": f"{config.get('model')} on {config.get('dataset')}",
        "rounds": f"{len(fractions)}: " + ", ".join(f"{100 * f:g}" for f in fractions) + " %",
        "pre-training": f"{config.get('pretrain_epochs')} epochs" if not config.get("pretrained") else "pretrained",
        "training between snaps": training,
        "optimiser": f"{config.get('optimizer')}, lr {config.get('lr'):g}, batch {config.get('batch_size')}",
        "sigma": (f"init {config.get('sigma_init')}, lr x {config.get('sigma_lr_mult'):g}, "
                  f"regulariser {config.get('reg_lambda'):.3g} up to {config.get('reg_cap'):g}"),
        "clustering": (f"delta {cluster.get('delta', 1.0):g}, up to {cluster.get('max_powers')} powers of two, "
                       f"zero band 2^-{cluster.get('b')}"),
        "seed": config.get("seed"),
    }
    if isinstance(source, Run):
        metric = source.primary
        rows[f"unquantised {metric}"] = f"{source.baseline.get(metric, float('nan')):.2f}"
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name="setting"))


# ----------------------------------------------------------------------------- values and centres

def weight_status(rnd: Round, layer: str | None = None) -> np.ndarray:
    """Per weight (flat, network order, or one layer): 0 fixed before this round and still
    fixed, 1 fixed by this round's snap, 2 still free after it."""
    pre, post = rnd.pre_fixed, rnd.fixed
    names = [check_layer(post, layer)] if layer is not None else list(post)
    before = torch.cat([pre[n].flatten() for n in names]).numpy()
    after = torch.cat([post[n].flatten() for n in names]).numpy()
    return np.where(~after, 2, np.where(before, 0, 1))


def value_counts(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (sorted) and how many entries hold each."""
    v, c = torch.unique(values.detach().flatten(), return_counts=True)
    return v.double().numpy(), c.numpy()


def power_of_two_terms(values, b: int = 7) -> torch.Tensor:
    """How many powers of two (each >= 2^-b) sum to ``|value|`` at least: the order P a centre
    needs (0 for zero), or -1 for a value that is no such sum."""
    v = torch.as_tensor(values, dtype=torch.float64).abs() * 2.0 ** b
    ints = torch.round(v)
    on_grid = (ints == v) & (ints < 2 ** 62)
    n = ints.clamp(max=2 ** 62).to(torch.int64)
    count = torch.zeros_like(n)
    while bool((n > 0).any()):
        count += n & 1
        n = n >> 1
    return torch.where(on_grid, count, torch.full_like(count, -1))


def round_from_cluster(mu: torch.Tensor, sigma: torch.Tensor, result, *, pre_fixed: torch.Tensor | None = None,
                       index: int = 0, name: str = "weights") -> Round:
    """An in-memory :class:`Round` for toy data: ``mu``/``sigma`` before the snap and the
    :class:`~pwfn_viz.core.clustering.ClusterResult` of ``cluster_round(mu, sigma, ...)``, as one
    tensor called ``name``. Every round-level plot accepts it.

        >>> from pwfn_viz.core.clustering import cluster_round
        >>> mu = torch.tensor([0.5, 0.52, 0.001, -0.26]); sigma = torch.tensor([0.01, 0.05, 0.001, 0.02])
        >>> rnd = round_from_cluster(mu, sigma, cluster_round(mu, sigma, 1.0))
        >>> rnd.mu["weights"].tolist(), len(rnd.steps)
        ([0.5, 0.5, 0.0, -0.25], 3)
    """
    pre_fixed = torch.zeros_like(mu, dtype=torch.bool) if pre_fixed is None else pre_fixed.bool()
    fixed = result.fixed_mask.bool()
    tensors = {f"pre/mu/{name}": mu, f"pre/sigma/{name}": sigma, f"pre/fixed/{name}": pre_fixed,
               f"mu/{name}": result.mu, f"sigma/{name}": result.sigma, f"fixed/{name}": fixed}
    from ..core.metrics import codebook_stats
    metrics = dict(round=index, fraction=fixed.float().mean().item(), n_fixed=int(fixed.sum()),
                   top1_before=float("nan"), top1_after=float("nan"), **codebook_stats(result.mu))
    layers = pd.DataFrame([dict(name=name, fraction_fixed=metrics["fraction"], round=index)])
    rnd = Round(index, metrics, path=None, steps=result.steps.reset_index(drop=True), layers=layers, names=[name])
    rnd.__dict__["tensors"] = {k: v.detach().cpu() for k, v in tensors.items()}   # fills the cached_property
    return rnd
