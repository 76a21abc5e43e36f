"""Weight sharing on a handful of toy weights, drawn so that every weight can be followed: the
helpers of notebook 07 (teaching weight sharing from scratch).

    >>> import torch
    >>> snapped, index = snap_to_codebook(torch.tensor([0.3, -0.1, 0.7]), torch.tensor([-0.25, 0.0, 0.25, 0.5]))
    >>> snapped.tolist(), index.tolist()
    ([0.25, 0.0, 0.5], [2, 1, 3])
    >>> fig = plot_number_line(torch.tensor([0.3, -0.1]), snapped[:2], codebook=[0.0, 0.25])   # doctest: +SKIP

How wide each weight's allowance is decides where it goes: :func:`greedy_assign` is one greedy pass
of PWFN at a fixed ``delta`` (the centre that fits the most weights wins them, repeat), and
:func:`plot_delta_assignment` draws it; :class:`pwfn_viz.widgets.teaching.DeltaExplorer` puts
``delta`` on a slider.

    >>> mu, sigma = torch.tensor([0.26, 0.3, 0.6]), torch.tensor([0.02, 0.1, 0.01])
    >>> greedy_assign(mu, sigma, [0.0, 0.25, 0.5], delta=1.0).tolist()     # 0.6 fits nothing
    [0.25, 0.25, nan]
    >>> greedy_assign(mu, sigma, [0.0, 0.25, 0.5], delta=16.0).tolist()   # wide: one centre fits all
    [0.5, 0.5, 0.5]
"""
from __future__ import annotations

import numpy as np
import torch

from ..constants import CLUSTERING_SIGMA_FLOOR, SAMPLING_SIGMA_FLOOR
from .style import COLOURS, SYMBOL, legend_outside, new_axes, styled

__all__ = ["snap_to_codebook", "plot_number_line", "greedy_assign", "plot_delta_assignment"]


def snap_to_codebook(values, codebook) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value replaced by the nearest codebook entry (ties: the smaller entry); returns
    ``(snapped values, index into the sorted codebook)``, float64 / int64."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    book = torch.sort(torch.as_tensor(codebook, dtype=torch.float64).flatten()).values
    if book.numel() == 0:
        raise ValueError("the codebook is empty")
    right = torch.searchsorted(book, v).clamp(max=book.numel() - 1)
    left = (right - 1).clamp(min=0)
    index = torch.where((v - book[left]).abs() <= (book[right] - v).abs(), left, right)
    return book[index], index


@styled
def plot_number_line(values, snapped=None, ax=None, *, codebook=None, sigma=None, delta: float = 1.0,
                     labels=None, title: str | None = None):
    """Each toy weight on its own row: its value (dot), an arrow to where it was snapped, the
    codebook as vertical lines and, with ``sigma`` (drawn as ``max(sigma, 2^-30)``, as the method
    uses it), the interval ``value +- delta * sigma`` a PWFN centre must fall into. Rows of
    weights that were not moved (``snapped`` is NaN) get no arrow."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten().numpy()
    rows = np.arange(v.size)
    fig, ax = new_axes(ax, (6.4, 0.3 * v.size + 1.4))
    if codebook is not None:
        ax.vlines(np.asarray(codebook, dtype=float), -0.7, v.size - 0.3, color=COLOURS["grey"], lw=0.8,
                  ls=":", label="codebook")
    if sigma is not None:
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten().clamp(min=SAMPLING_SIGMA_FLOOR).numpy()
        ax.errorbar(v, rows, xerr=delta * s, fmt="none", ecolor=COLOURS["sky"], elinewidth=4, alpha=0.6,
                    label=f"{SYMBOL['mu']} $\\pm$ {delta:g} {SYMBOL['sigma']}")
    ax.plot(v, rows, "o", color=COLOURS["blue"], ms=5, label="weight", zorder=3)
    if snapped is not None:
        t = torch.as_tensor(snapped, dtype=torch.float64).flatten().numpy()
        moved = ~np.isnan(t)
        span = np.ptp(np.concatenate([v, t[moved]])) or 1.0
        for r in rows[moved & (np.abs(np.nan_to_num(t) - v) > 0.01 * span)]:   # no arrow for a tiny move
            ax.annotate("", xy=(t[r], r), xytext=(v[r], r),
                        arrowprops=dict(arrowstyle="->", color=COLOURS["vermillion"], lw=1.2))
        ax.plot(t[moved], rows[moved], "s", color=COLOURS["vermillion"], ms=4, label="shared value", zorder=3)
    ax.set_yticks(rows, labels if labels is not None else [f"w{i}" for i in rows])
    ax.set_ylim(v.size - 0.3, -0.7)
    ax.set_xlabel(f"value {SYMBOL['mu']}")
    ax.set_ylabel("weight")
    if title:
        ax.set_title(title)
    legend_outside(ax, fontsize="x-small")
    return fig


def greedy_assign(mu, sigma, centres, delta: float = 1.0) -> torch.Tensor:
    """The centre each weight takes in one greedy pass at a fixed ``delta``: weight ``i`` fits
    centre ``c`` when ``|mu_i - c| <= delta * max(sigma_i, 2^-20)`` (the clustering's sigma floor);
    the centre fitting the most still-unassigned weights takes them all (ties: the centre listed
    first), and so on until no centre fits a remaining weight. Returns one float64 value per
    weight: its centre, or NaN for a weight no centre fits at this ``delta`` (in a real round the
    method would then allow more powers of two or double ``delta``)."""
    m = torch.as_tensor(mu, dtype=torch.float64).flatten()
    s = torch.as_tensor(sigma, dtype=torch.float64).flatten().clamp(min=CLUSTERING_SIGMA_FLOOR)
    c = torch.as_tensor(centres, dtype=torch.float64).flatten()
    if m.shape != s.shape:
        raise ValueError(f"mu and sigma differ in size: {m.numel()} and {s.numel()}")
    if delta <= 0:
        raise ValueError(f"delta must be positive, got {delta}")
    fits = (m[:, None] - c[None, :]).abs() <= delta * s[:, None]      # weights x centres
    out = torch.full_like(m, float("nan"))
    free = torch.ones_like(m, dtype=torch.bool)
    while c.numel():
        counts = (fits & free[:, None]).sum(dim=0)
        if int(counts.max()) == 0:
            break
        best = int(torch.argmax(counts))          # argmax returns the first of equal counts
        taken = fits[:, best] & free
        out[taken] = c[best]
        free &= ~taken
    return out


@styled
def plot_delta_assignment(mu, sigma, centres, delta: float = 1.0, ax=None, *, labels=None):
    """The toy weights, their allowance ``mu +- delta * sigma`` and the centre each takes in one
    greedy pass at this ``delta`` (:func:`greedy_assign`; no arrow: no centre fits yet)."""
    assigned = greedy_assign(mu, sigma, centres, delta)
    n_fit = int((~torch.isnan(assigned)).sum())
    title = (f"{SYMBOL['delta']} = {delta:.3g}: {n_fit} of {assigned.numel()} weights fit, "
             f"{len(set(assigned[~torch.isnan(assigned)].tolist()))} centres used")
    return plot_number_line(mu, assigned, ax, codebook=centres, sigma=sigma, delta=delta, labels=labels,
                            title=title)
