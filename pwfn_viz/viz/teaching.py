"""Weight sharing on a handful of toy weights, drawn so that every weight can be followed: the
helpers of notebook 07 (teaching weight sharing from scratch).

    >>> import torch
    >>> snapped, index = snap_to_codebook(torch.tensor([0.3, -0.1, 0.7]), torch.tensor([-0.25, 0.0, 0.25, 0.5]))
    >>> snapped.tolist(), index.tolist()
    ([0.25, 0.0, 0.5], [2, 1, 3])
    >>> fig = plot_number_line(torch.tensor([0.3, -0.1]), snapped[:2], codebook=[0.0, 0.25])   # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np
import torch

from .style import COLOURS, new_axes, styled

__all__ = ["snap_to_codebook", "plot_number_line"]


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
    codebook as vertical lines and, with ``sigma``, the interval ``value +- delta * sigma`` a
    PWFN centre must fall into. Rows of weights that were not moved (``snapped`` is NaN) get no
    arrow."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten().numpy()
    rows = np.arange(v.size)
    fig, ax = new_axes(ax, (6.4, 0.3 * v.size + 1.4))
    if codebook is not None:
        ax.vlines(np.asarray(codebook, dtype=float), -0.7, v.size - 0.3, color=COLOURS["grey"], lw=0.8,
                  ls=":", label="codebook")
    if sigma is not None:
        s = torch.as_tensor(sigma, dtype=torch.float64).flatten().numpy()
        ax.errorbar(v, rows, xerr=delta * s, fmt="none", ecolor=COLOURS["sky"], elinewidth=4, alpha=0.6,
                    label=f"mu +- {delta:g} sigma")
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
    ax.set_xlabel("value")
    ax.set_ylabel("weight")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
