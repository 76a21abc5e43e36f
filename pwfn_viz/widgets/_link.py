"""Selections of weights shared between views.

A rectangle dragged over one view selects weights; another view shows the same weights outlined.
Views list their weights in different orders (the whole network, one layer, one channel of a
layer), so a selection is kept as the weights themselves, tensor name -> sorted flat indices,
and mapped into each view's positions when it is drawn. It thus survives a round or layer change.

    >>> from pwfn_viz.widgets._data import SigmaMu
    >>> import numpy as np
    >>> shapes = {"a": (2, 3), "b": (4,)}
    >>> whole = SigmaMu(0, ["a", "b"], *[np.zeros(10)] * 2, np.zeros(10, np.int8), *[np.zeros(10)] * 4)
    >>> weights = weights_at(whole, shapes, [1, 7])
    >>> {n: v.tolist() for n, v in weights.items()}
    {'a': [1], 'b': [1]}
    >>> positions_in(whole, shapes, weights).tolist()
    [1, 7]
    >>> selection_text(weights)
    '2 weights selected (a: 1, b: 1)'
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["weights_at", "positions_in", "selection_text"]


def _offsets(data, shapes) -> np.ndarray:
    """Where each tensor of a whole-tensor view starts (and, last, the view's length)."""
    return np.cumsum([0] + [math.prod(shapes[n]) for n in data.names])


def weights_at(data, shapes, positions) -> dict[str, np.ndarray]:
    """The weights at ``positions`` of a view (a :class:`~pwfn_viz.widgets._data.SigmaMu`):
    tensor name -> sorted flat indices (tensors without a selected weight left out)."""
    positions = np.unique(np.asarray(positions, dtype=np.int64))
    if data.flat_index is not None:   # a selection inside one layer
        return {data.names[0]: np.sort(data.flat_index[positions])} if positions.size else {}
    offsets = _offsets(data, shapes)
    tensor = np.searchsorted(offsets, positions, side="right") - 1
    return {name: positions[tensor == t] - offsets[t] for t, name in enumerate(data.names) if (tensor == t).any()}


def positions_in(data, shapes, weights: dict) -> np.ndarray:
    """Positions in a view of the selected ``weights`` it shows (sorted; others are not in it)."""
    if data is None or not weights:
        return np.zeros(0, dtype=np.int64)
    if data.flat_index is not None:
        chosen = weights.get(data.names[0])
        return np.zeros(0, dtype=np.int64) if chosen is None else np.flatnonzero(np.isin(data.flat_index, chosen))
    offsets = _offsets(data, shapes)
    parts = [offsets[t] + weights[name] for t, name in enumerate(data.names) if name in weights]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def selection_text(weights: dict, shown: int | None = None) -> str:
    """'n weights selected (tensor: count, ...)', and how many a view shows when given."""
    total = sum(len(v) for v in weights.values())
    if not total:
        return "no weight selected"
    parts = ", ".join(f"{name}: {len(v):,}" for name, v in weights.items())
    text = f"{total:,} weights selected ({parts})"
    return text if shown is None or shown == total else f"{text}; {shown:,} of them in this view"
