"""One weight's history over the rounds, and which weights a (layer, channel, kernel tap) picks.

Pure functions over a run record (the UncertaintyExplorer draws what they return):

    >>> select_weights((2, 3, 2, 2), channel=1, tap=(0, 1)).tolist()   # flat indices
    [13, 17, 21]
    >>> traj = weight_trajectory(run, "conv1.weight", 5)                # doctest: +SKIP
    >>> traj.table[["pre_mu", "mu", "fixed"]]                           # doctest: +SKIP
    >>> traj.fixed_round, traj.fixed_value                              # doctest: +SKIP
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

__all__ = ["Trajectory", "weight_trajectory", "select_weights", "select_view", "parse_tap"]

COLUMNS = ["round", "fraction", "pre_mu", "pre_sigma", "pre_fixed", "mu", "sigma", "fixed"]


def parse_tap(tap) -> tuple[int, ...] | None:
    """A kernel tap as a tuple: None/"all" -> None, "1,2" or (1, 2) -> (1, 2)."""
    if tap is None or (isinstance(tap, str) and tap.strip().lower() in ("", "all")):
        return None
    if isinstance(tap, str):
        return tuple(int(v) for v in tap.replace("(", "").replace(")", "").split(","))
    return tuple(int(v) for v in tap)


def select_weights(shape, channel: int | None = None, tap=None) -> torch.Tensor:
    """Flat indices (row-major, as ``tensor.flatten()``) of the entries of a tensor of ``shape``
    in output channel ``channel`` (dim 0; None: all) and at kernel tap ``tap`` (the trailing
    dims after the first two, e.g. (row, col) of a 3x3 kernel; None: all), in ascending order."""
    shape = tuple(int(s) for s in shape)
    tap = parse_tap(tap)
    index = torch.arange(math.prod(shape)).reshape(shape)
    if channel is not None:
        if not shape or not -shape[0] <= channel < shape[0]:
            raise ValueError(f"channel {channel} out of range for a tensor of shape {shape}")
        index = index[[channel]]
    if tap is not None:
        taps = shape[2:]
        if len(tap) != len(taps) or not taps:
            raise ValueError(f"tap {tap} does not fit a tensor of shape {shape}: its kernel taps are "
                             f"{taps or 'none (not a convolution weight)'}")
        if any(not 0 <= t < n for t, n in zip(tap, taps)):
            raise ValueError(f"tap {tap} out of range for kernel shape {taps}")
        index = index[(slice(None), slice(None)) + tap]
    return index.flatten()


def select_view(tensor: torch.Tensor, channel: int | None = None, tap=None) -> torch.Tensor:
    """The entries :func:`select_weights` picks, keeping their layout: ``tensor[channel]``
    (that dimension dropped) at ``tap`` (the trailing dims dropped). Its row-major flattening
    equals ``tensor.flatten()[select_weights(tensor.shape, channel, tap)]``."""
    select_weights(tensor.shape, channel, tap)   # the same checks and messages
    tap = parse_tap(tap)
    view = tensor[channel] if channel is not None else tensor
    if tap is not None:
        view = view[(slice(None),) * (view.dim() - len(tap)) + tap]
    return view


@dataclass
class Trajectory:
    """A weight's history: ``table`` has one row per round (columns :data:`COLUMNS`: the round's
    cumulative fraction, pre-snap mu/sigma/fixed, post-snap mu/sigma/fixed); ``start_mu`` and
    ``start_sigma`` are its values before round 0; ``fixed_round`` is the first round whose snap
    left it fixed (None if none did) and ``fixed_value`` its value after that snap."""
    name: str
    index: tuple
    flat_index: int
    start_mu: float
    start_sigma: float
    table: pd.DataFrame = field(repr=False)
    fixed_round: int | None = None
    fixed_value: float | None = None

    def describe(self) -> str:
        where = f"{self.name}[{', '.join(map(str, self.index))}]"
        if self.fixed_round is None:
            return f"{where}: start {self.start_mu:.5g}, not fixed in any recorded round"
        return (f"{where}: start {self.start_mu:.5g} (sigma {self.start_sigma:.3g}), fixed to "
                f"{self.fixed_value:.6g} in round {self.fixed_round}")

    def _repr_html_(self):
        return f"<p>{self.describe()}</p>" + self.table.to_html(index=False, float_format=lambda v: f"{v:.5g}")


def _flat_index(shape, index) -> tuple[int, tuple]:
    if isinstance(index, (int, np.integer)):
        n = math.prod(shape)
        if not 0 <= int(index) < n:
            raise IndexError(f"weight index {index} out of range: the tensor has {n} entries (shape {tuple(shape)})")
        return int(index), tuple(int(v) for v in np.unravel_index(int(index), shape))
    index = tuple(int(v) for v in index)
    if len(index) != len(shape) or any(not 0 <= v < s for v, s in zip(index, shape)):
        raise IndexError(f"weight index {index} does not fit the tensor's shape {tuple(shape)}")
    return int(np.ravel_multi_index(index, shape)), index


def weight_trajectory(run, name: str, index) -> Trajectory:
    """The history of weight ``index`` (flat int or a full index tuple) of tensor ``name``."""
    shapes = run.meta["tensors"]
    if name not in shapes:
        raise ValueError(f"layer {name!r} does not exist in this run; choose one of: {', '.join(shapes)}")
    flat, full = _flat_index(shapes[name], index)
    get = lambda group: group[name].flatten()[flat].item()  # noqa: E731
    rows = []
    for rnd in run.rounds:
        rows.append(dict(round=rnd.index, fraction=rnd.fraction, pre_mu=get(rnd.pre_mu),
                         pre_sigma=get(rnd.pre_sigma), pre_fixed=bool(get(rnd.pre_fixed)), mu=get(rnd.mu),
                         sigma=get(rnd.sigma), fixed=bool(get(rnd.fixed))))
    table = pd.DataFrame(rows, columns=COLUMNS)
    first = table[table["fixed"]]
    start = run.start
    return Trajectory(name, full, flat, start[f"mu/{name}"].flatten()[flat].item(),
                      start[f"sigma/{name}"].flatten()[flat].item(), table,
                      int(first["round"].iloc[0]) if len(first) else None,
                      float(first["mu"].iloc[0]) if len(first) else None)
