"""Sentences that say who wins a comparison, written from the numbers, so a notebook never states a
result its own run did not produce.

    >>> import pandas as pd
    >>> table = pd.DataFrame({"method": ["pwfn", "kmeans"], "top1": [98.61, 99.17], "unique": [96, 48]})
    >>> print(head_to_head(table, "kmeans"))        # doctest: +NORMALIZE_WHITESPACE
    kmeans is more accurate than pwfn: top-1 99.17 % against 98.61 % (+0.56 points),
    with 48 unique values against 96: fewer values and more accurate.

Over a sweep of budgets (:func:`pwfn_viz.analysis.frontier.summarise`), :func:`budget_winners`
gives one row per budget and :func:`describe_winners` one sentence each; a difference within one
standard deviation over seeds is called a tie.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["head_to_head", "budget_winners", "describe_winners"]

_LABEL = {"top1": "top-1", "top5": "top-5"}


def _row(table: pd.DataFrame, method: str) -> pd.Series:
    rows = table[table["method"] == method]
    if rows.empty:
        raise ValueError(f"no method {method!r} in this table; it has {list(table['method'])}")
    return rows.iloc[0]


def head_to_head(table: pd.DataFrame, other: str, ours: str = "pwfn", metric: str = "top1",
                 higher_is_better: bool = True) -> str:
    """One sentence comparing two rows of a comparison table (columns ``method``, ``metric`` and,
    when present, ``unique`` and ``entropy``): which is better on ``metric``, by how much, and at
    what budget."""
    a, b = _row(table, ours), _row(table, other)
    name = _LABEL.get(metric, metric)
    unit = " %" if metric in _LABEL else ""
    diff = float(b[metric] - a[metric])
    better = diff > 0 if higher_is_better else diff < 0
    if np.isclose(diff, 0.0, atol=1e-9):
        head = f"{other} and {ours} are equally accurate: {name} {a[metric]:.2f}{unit} each"
    else:
        winner, loser = (other, ours) if better else (ours, other)
        head = (f"{winner} is more accurate than {loser}: {name} {b[metric]:.2f}{unit} against "
                f"{a[metric]:.2f}{unit} ({diff:+.2f}{' points' if unit else ''})")
    budget = []
    if "unique" in table:
        budget.append(f"{int(b['unique'])} unique values against {int(a['unique'])}")
    if "entropy" in table:
        budget.append(f"{b['entropy']:.2f} against {a['entropy']:.2f} bits of entropy")
    if not budget:
        return head + "."
    cheaper = "fewer" if "unique" in table and b["unique"] < a["unique"] else \
        "more" if "unique" in table and b["unique"] > a["unique"] else "as many"
    tail = ""
    if "unique" in table and not np.isclose(diff, 0.0, atol=1e-9):
        tail = f": {cheaper} values and {'more' if better else 'less'} accurate"
    return f"{head}, with {' and '.join(budget)}{tail}."


def budget_winners(summary: pd.DataFrame, ours: str = "pwfn", other: str = "kmeans@unique+ft",
                   metric: str = "top1") -> pd.DataFrame:
    """One row per budget that both methods ran (:func:`~pwfn_viz.analysis.frontier.summarise`
    output): each method's mean ``metric`` and entropy, the difference (other minus ours), the
    larger of the two standard deviations over seeds, and the winner (``"tie"`` when the difference
    is within that standard deviation)."""
    a = summary[summary["method"] == ours].set_index("budget")
    b = summary[summary["method"] == other].set_index("budget")
    budgets = [x for x in a.index if x in b.index]
    if not budgets:
        raise ValueError(f"{ours!r} and {other!r} share no budget in this table")
    std = f"{metric}_std"
    rows = []
    for x in budgets:
        diff = float(b.at[x, metric] - a.at[x, metric])
        spread = float(np.nanmax([a.at[x, std], b.at[x, std]])) if std in a else 0.0
        spread = 0.0 if np.isnan(spread) else spread
        winner = "tie" if abs(diff) <= spread else (other if diff > 0 else ours)
        rows.append({"budget": x, ours: a.at[x, metric], other: b.at[x, metric], "difference": diff,
                     "std": spread, f"{ours} entropy": a.at[x, "entropy"], f"{other} entropy": b.at[x, "entropy"],
                     "winner": winner})
    return pd.DataFrame(rows).set_index("budget")


def describe_winners(winners: pd.DataFrame, metric: str = "top1") -> list[str]:
    """One sentence per row of :func:`budget_winners`, then one that counts the wins."""
    ours, other = winners.columns[0], winners.columns[1]
    name = _LABEL.get(metric, metric)
    out = []
    for budget, r in winners.iterrows():
        scores = f"{r[other]:.2f} against {r[ours]:.2f} ({r['difference']:+.2f}, seed spread {r['std']:.2f})"
        if r["winner"] == "tie":
            out.append(f"{budget}: a tie within the seed spread, {other} {scores} {name}.")
        else:
            out.append(f"{budget}: {r['winner']} wins, {other} {scores} {name}.")
    counts = winners["winner"].value_counts()
    out.append(f"Over {len(winners)} budgets: {ours} wins {counts.get(ours, 0)}, {other} wins "
               f"{counts.get(other, 0)}, {counts.get('tie', 0)} within the seed spread.")
    return out
