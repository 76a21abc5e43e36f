"""Has sigma learned? How far the trained sigma of the still-free weights is from its initialisation.

Every uncertainty picture pwfn_viz draws is a picture of sigma. Right after conversion sigma is a
formula of each weight's value (its distance to the nearest powers of two, docs/method.md section
2); only training makes it a property of the weight's position in the network. Three numbers, over
the weights not yet fixed, compare the sigma a round clusters with (after its training, before its
snap) with the sigma the weight had at conversion:

* ``sigma_median_change``: median of ``|sigma - sigma0| / sigma0``;
* ``sigma_rank_corr``: Spearman rank correlation of sigma with sigma0 (1.0: the same ordering of
  weights as the initialisation, whatever the scale);
* ``sigma_frac_moved``: fraction of weights whose sigma moved by more than ``MOVED_BY`` (10 %).

Sigma counts as *learned* when its ordering has left the initialisation's
(``sigma_rank_corr < LEARNED_BELOW_RANK_CORR``) and its values moved
(``sigma_median_change >= LEARNED_FROM_MEDIAN_CHANGE``). Sigma that only grew uniformly under the
regulariser keeps a rank correlation near 1 and is not called learned: its pictures still show the
initialisation pattern. Both sides use the sigma sampling uses (floored at ``SAMPLING_SIGMA_FLOOR``, 2^-30).

Example:
    >>> import torch
    >>> s0 = torch.tensor([1e-3, 2e-3, 3e-3, 4e-3])
    >>> d = sigma_learning(s0, s0 * 1.01)
    >>> round(d["sigma_median_change"], 4), d["sigma_rank_corr"], d["sigma_learned"]
    (0.01, 1.0, False)
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from ..constants import SAMPLING_SIGMA_FLOOR

MOVED_BY = 0.10                      # a weight's sigma "moved" when it changed by more than 10 %
LEARNED_BELOW_RANK_CORR = 0.95       # ordering no longer the initialisation's ...
LEARNED_FROM_MEDIAN_CHANGE = 0.05    # ... and the typical sigma changed by 5 % or more
COLUMNS = ["sigma_n_free", "sigma_median_change", "sigma_rank_corr", "sigma_frac_moved", "sigma_learned"]

ADVICE = ("sigma is still essentially its initialisation, so the uncertainty views show the "
          "initialisation formula, not what the network learned. Give sigma more optimisation (steps x "
          "sigma learning rate): a larger sigma learning rate (RunConfig.sigma_lr_mult, --sigma-lr-mult), "
          "more training per round (steps_per_round, --steps), or the log parameterisation with a large "
          "sigma learning rate (sigma_param='log', --sigma-param log). The digits-demo preset "
          "(make run) uses 120 steps a round and sigma_lr_mult=100.")


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def sigma_learning(initial_sigma: torch.Tensor, sigma: torch.Tensor, free: torch.Tensor | None = None) -> dict:
    """The three numbers above (and the verdict) over the entries where ``free`` is True (all when None)."""
    s0 = initial_sigma.detach().flatten().double().clamp(min=SAMPLING_SIGMA_FLOOR)
    s = sigma.detach().flatten().double().clamp(min=SAMPLING_SIGMA_FLOOR)
    if s0.shape != s.shape:
        raise ValueError(f"initial sigma has {s0.numel()} entries, sigma {s.numel()}: they must describe the same weights")
    if free is not None:
        keep = free.flatten().bool()
        s0, s = s0[keep], s[keep]
    n = s.numel()
    if n == 0:
        return {"sigma_n_free": 0, "sigma_median_change": math.nan, "sigma_rank_corr": math.nan,
                "sigma_frac_moved": math.nan, "sigma_learned": None}
    s0, s = s0.cpu().numpy(), s.cpu().numpy()
    change = np.abs(s - s0) / s0
    out = {"sigma_n_free": int(n), "sigma_median_change": float(np.median(change)),
           "sigma_rank_corr": _rank_corr(s0, s) if n > 1 else math.nan,
           "sigma_frac_moved": float(np.mean(change > MOVED_BY))}
    out["sigma_learned"] = is_learned(out)
    return out


def is_learned(row) -> bool | None:
    """The verdict for one row of numbers; None when it cannot be told (fewer than two free weights)."""
    corr, median = row["sigma_rank_corr"], row["sigma_median_change"]
    if corr is None or median is None or math.isnan(corr) or math.isnan(median):
        return None
    return bool(corr < LEARNED_BELOW_RANK_CORR and median >= LEARNED_FROM_MEDIAN_CHANGE)


def sigma_learning_table(initial: dict[str, torch.Tensor], sigma: dict[str, torch.Tensor],
                         fixed: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per tensor name (the network order of ``sigma``) plus a last row ``"all"`` over every
    free weight together; columns ``COLUMNS``. ``fixed`` holds the masks before the snap."""
    missing = [n for n in sigma if n not in initial or n not in fixed]
    if missing:
        raise ValueError(f"no initial sigma or fixed mask for {missing[:3]}: pass the tensors of the same run")
    rows = [{"layer": n, **sigma_learning(initial[n], sigma[n], ~fixed[n].bool())} for n in sigma]
    names = list(sigma)
    rows.append({"layer": "all", **sigma_learning(torch.cat([initial[n].flatten() for n in names]),
                                                   torch.cat([sigma[n].flatten() for n in names]),
                                                   torch.cat([~fixed[n].bool().flatten() for n in names]))})
    return pd.DataFrame(rows, columns=["layer", *COLUMNS])


def overall(table: pd.DataFrame) -> dict:
    """The ``"all"`` row of a :func:`sigma_learning_table` as plain Python values (NaN as None), plus
    ``sigma_layers_learned`` ("k/n"): what a run records per round in run.json."""
    row = table[table["layer"] == "all"].iloc[0]
    out = {}
    for key in COLUMNS:
        value = row[key]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[key] = None
        elif key == "sigma_learned":
            out[key] = bool(value)
        elif key == "sigma_n_free":
            out[key] = int(value)
        else:
            out[key] = float(value)
    out["sigma_layers_learned"] = layers_learned(table)
    return out


def verdict(rounds: list[dict]) -> dict | None:
    """The run's verdict from its rounds' metrics (each with "round" and the ``COLUMNS``): sigma
    learned when it did in at least half of the rounds that can tell. A single round is not enough:
    the last rounds judge only the few weights left free. Keys: ``learned``, ``rounds_learned``,
    ``rounds_told``, ``not_learned`` (their indices), ``latest`` (the metrics of the latest round
    that can tell). None when no round can tell."""
    told = [m for m in rounds if m.get("sigma_learned") is not None and not pd.isna(m.get("sigma_learned"))]
    if not told:
        return None
    learned = [m for m in told if m["sigma_learned"]]
    return {"learned": 2 * len(learned) >= len(told), "rounds_learned": len(learned), "rounds_told": len(told),
            "not_learned": [m["round"] for m in told if not m["sigma_learned"]], "latest": told[-1]}


def verdict_line(v: dict | None) -> str:
    """The verdict in one line, with the advice when sigma has not learned."""
    if v is None:
        return "no round yet has two or more free weights to compare with their initial sigma"
    latest = v["latest"]
    head = (f"sigma learned in {v['rounds_learned']} of {v['rounds_told']} rounds" if v["learned"] else
            f"sigma NOT learned in {v['rounds_told'] - v['rounds_learned']} of {v['rounds_told']} rounds")
    text = f"{head}; round {latest['round']}: {describe(latest)}"
    if latest.get("sigma_layers_learned"):
        text += f" ({latest['sigma_layers_learned']} layers)"
    return text if v["learned"] else f"{text}. {ADVICE}"


def layers_learned(layers: pd.DataFrame) -> str:
    """``"k/n"``: of the n tensors that can tell (two or more free weights), k learned."""
    per_layer = [v for v in layers[layers["layer"] != "all"]["sigma_learned"] if v is not None and not pd.isna(v)]
    return f"{sum(bool(v) for v in per_layer)}/{len(per_layer)}"


def describe(row, layers: pd.DataFrame | None = None) -> str:
    """One line for a log: the numbers, how many layers learned, and the verdict in words."""
    if row.get("sigma_learned") is None or pd.isna(row.get("sigma_learned")) or row.get("sigma_rank_corr") is None:
        return "sigma: too few free weights to tell whether it learned"
    text = (f"sigma vs its initialisation: median change {row['sigma_median_change']:.1%}, rank correlation "
            f"{row['sigma_rank_corr']:.2f}, {row['sigma_frac_moved']:.0%} moved >{MOVED_BY:.0%}")
    if layers is not None:
        text += f"; learned in {layers_learned(layers)} layers"
    return text + (" -> learned" if row["sigma_learned"] else " -> NOT learned")
