"""What the live views draw, computed from a run record by pure functions (no widgets, no
drawing), so the numbers can be tested against the stored tensors.

    >>> locate(["a", "b"], {"a": (2, 3), "b": (4,)}, 7)    # the 8th weight of the network
    ('b', (1,), 1)
    >>> count_scale([1, 2, 1])                               # small counts: a linear axis
    'linear'
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..analysis.tables import weight_status
from ..constants import SAMPLING_SIGMA_FLOOR, ZERO_BAND_EXPONENT

__all__ = ["density_grid", "SigmaMu", "sigma_mu_data", "locate", "hover_info", "fixed_rounds", "count_scale", "clamped_sigma",
           "StepsData", "steps_data", "centres_in_view", "step_of_weight", "selection_data", "position_of", "where", "shared_limits", "steps_frame"]


def clamped_sigma(sigma) -> np.ndarray:
    """Sigma as the method uses it when it samples: ``max(sigma, 2^-30)`` (a raw sigma may be <= 0)."""
    return np.maximum(np.asarray(sigma, dtype=float), SAMPLING_SIGMA_FLOOR)


def count_scale(counts, decades: float = 2.0) -> str:
    """'log' only when the counts span more than ``decades`` decades, else 'linear' (counts of
    1 or 2 on a log axis read as nothing)."""
    c = np.asarray(counts, dtype=float)
    c = c[c > 0]
    if c.size == 0 or c.max() < 100:
        return "linear"
    return "log" if math.log10(c.max() / c.min()) > decades else "linear"


def locate(names, shapes, position: int) -> tuple[str, tuple, int]:
    """(tensor name, full index, flat index in the tensor) of weight ``position`` of the network
    flattened in ``names`` order."""
    start = 0
    for n in names:
        size = math.prod(shapes[n])
        if position < start + size:
            flat = int(position - start)
            return n, tuple(int(v) for v in np.unravel_index(flat, tuple(shapes[n]))), flat
        start += size
    raise IndexError(f"weight {position} out of range: the selection has {start} weights")


def fixed_rounds(run) -> dict[str, torch.Tensor]:
    """Per tensor: the first round whose snap left each weight fixed (-1: none did)."""
    out = {n: torch.full(tuple(s), -1, dtype=torch.int16) for n, s in run.meta["tensors"].items()}
    for rnd in reversed(run.rounds):
        for n, f in rnd.fixed.items():
            out[n][f] = rnd.index
    return out


@dataclass
class SigmaMu:
    """Sigma against mu before one round's snap: every weight of ``names`` (network order),
    its clamped sigma, its status (0 fixed earlier, 1 fixed by this round, 2 free), the
    round's greedy steps (centre, order P, delta) and the zero band."""
    round_index: int
    names: list
    mu: np.ndarray
    sigma: np.ndarray
    status: np.ndarray
    post: np.ndarray = field(repr=False)         # the value after the snap
    centres: np.ndarray = field(repr=False)
    orders: np.ndarray = field(repr=False)
    deltas: np.ndarray = field(repr=False)
    zero_band: float | None = None
    fraction: float = 0.0
    layer: str | None = None
    flat_index: np.ndarray | None = field(default=None, repr=False)   # a selection: its flat indices in ``layer``
    limits: tuple | None = None   # ((mu lo, mu hi), (0, sigma hi)) shared by the rounds compared; None: this round's
    title: str | None = None      # above the panel (default: what the weights are)

    @property
    def counts(self) -> list[int]:
        return [int((self.status == s).sum()) for s in range(3)]

    def sample(self, status: int, n: int) -> np.ndarray:
        """Positions of at most ``n`` weights of ``status`` (all of them when there are fewer;
        else a seeded random sample), computed once."""
        key = ("sample", status, n)
        if key not in self._cache:
            idx = np.flatnonzero(self.status == status)
            if idx.size > n:
                idx = np.sort(np.random.default_rng(status).choice(idx, size=n, replace=False))
            self._cache[key] = idx
        return self._cache[key]

    def density(self, bins=(160, 110)) -> tuple[np.ndarray, tuple]:
        """Counts of weights on a mu x sigma grid over the data's range (rows: sigma) and the
        grid's extent, computed once (integer binning: several times faster than histogram2d)."""
        if "density" not in self._cache:
            self._cache["density"] = density_grid(self.mu, self.sigma, bins)
        return self._cache["density"]

    _cache: dict = field(default_factory=dict, repr=False)


def density_grid(x, y, bins=(160, 110)) -> tuple[np.ndarray, tuple]:
    """(counts with shape (bins[1], bins[0]), extent (x0, x1, y0, y1)) of points (x, y) on a
    regular grid from min to max of x and from 0 to max of y."""
    x0, x1 = float(x.min()), float(x.max())
    y1 = float(y.max()) or 1.0
    x1 = x1 if x1 > x0 else x0 + 1e-12
    ix = np.minimum(((x - x0) * (bins[0] / (x1 - x0))).astype(np.int64), bins[0] - 1)
    iy = np.minimum((y * (bins[1] / y1)).astype(np.int64), bins[1] - 1)
    counts = np.bincount(iy * bins[0] + ix, minlength=bins[0] * bins[1]).reshape(bins[1], bins[0])
    return counts, (x0, x1, 0.0, y1)


def sigma_mu_data(run, round_index: int, layer: str | None = None) -> SigmaMu:
    """The data of a sigma-against-mu view of ``run``'s round ``round_index`` (``layer``: one
    tensor, None: all)."""
    rnd = run.rounds[round_index]
    names = [layer] if layer is not None else list(rnd.names or rnd.pre_mu)
    flat = lambda d: torch.cat([d[n].detach().double().flatten() for n in names]).numpy()  # noqa: E731
    cluster = run.config.get("cluster", {})
    zero = 2.0 ** -cluster.get("b", ZERO_BAND_EXPONENT) if cluster.get("zero_fix", True) else None
    steps = rnd.steps
    col = lambda c, t: steps[c].to_numpy(t) if len(steps) else np.zeros(0, t)  # noqa: E731
    return SigmaMu(rnd.index, names, flat(rnd.pre_mu), clamped_sigma(flat(rnd.pre_sigma)),
                   weight_status(rnd, layer).astype(np.int8), flat(rnd.mu), col("centre", float), col("P", int),
                   col("delta", float), zero, float(rnd.fraction), layer)


def selection_data(run, round_index: int, layer: str, chosen) -> SigmaMu:
    """:func:`sigma_mu_data` of the weights ``chosen`` (flat indices) of one layer."""
    full = sigma_mu_data(run, round_index, layer)
    idx = np.asarray(chosen, dtype=np.int64)
    return SigmaMu(full.round_index, [layer], full.mu[idx], full.sigma[idx], full.status[idx], full.post[idx],
                   full.centres, full.orders, full.deltas, full.zero_band, full.fraction, layer, flat_index=idx)


def position_of(data: SigmaMu, shapes, name: str, flat: int) -> int | None:
    """Where weight ``flat`` of tensor ``name`` sits in a view's arrays (None: not in it)."""
    if name not in data.names:
        return None
    if data.flat_index is not None:
        hits = np.flatnonzero(data.flat_index == flat)
        return int(hits[0]) if hits.size else None
    return sum(math.prod(shapes[n]) for n in data.names[:data.names.index(name)]) + int(flat)


def where(data: SigmaMu, shapes, i: int) -> tuple[str, tuple, int]:
    """(tensor, full index, flat index) of position ``i`` of a view."""
    if data.flat_index is not None:
        name = data.names[0]
        flat = int(data.flat_index[i])
        return name, tuple(int(v) for v in np.unravel_index(flat, tuple(shapes[name]))), flat
    return locate(data.names, shapes, int(i))


def shared_limits(run, layer: str | None = None, chosen=None, pad: float = 0.04) -> tuple:
    """Axis limits for sigma against mu that hold for every round of ``run`` (the weights of
    ``layer``, None: all; ``chosen``: flat indices into the layer): the mu range padded by
    ``pad`` of its width, and sigma from 0 to 8% above its largest clamped value. One frame for
    all rounds: stepping through them moves the weights, not the axes."""
    lo, hi, top = np.inf, -np.inf, 0.0
    names = [layer] if layer is not None else list(run.meta["tensors"])
    idx = None if chosen is None else torch.as_tensor(np.asarray(chosen, dtype=np.int64))
    for rnd in run.rounds:
        for n in names:
            mu, sigma = rnd.pre_mu[n].flatten(), rnd.pre_sigma[n].flatten()
            if idx is not None:
                mu, sigma = mu[idx], sigma[idx]
            lo, hi = min(lo, float(mu.min())), max(hi, float(mu.max()))
            top = max(top, float(sigma.max()))
    width = (hi - lo) * pad if hi > lo else 0.01
    return (lo - width, hi + width), (0.0, max(top, SAMPLING_SIGMA_FLOOR) * 1.08)


def step_of_weight(data: SigmaMu, i: int) -> int | None:
    """The greedy step whose centre weight ``i`` was snapped to this round (None: not snapped by it)."""
    if data.status[i] != 1 or not data.centres.size:
        return None
    hits = np.flatnonzero(data.centres == data.post[i])
    return int(hits[0]) if hits.size else None


def centres_in_view(centres, lo: float, hi: float) -> np.ndarray:
    """Positions (into ``centres``) of the centres inside the x range [lo, hi]."""
    c = np.asarray(centres, dtype=float)
    return np.flatnonzero((c >= lo) & (c <= hi))


def hover_info(run, data: SigmaMu, i: int, fixed_round: dict | None = None) -> dict:
    """What the hover label says about weight ``i`` of a sigma-against-mu view: its tensor, index,
    pre-snap mu, clamped sigma, the centre this round snapped it to (None if it stayed free;
    its earlier value if fixed before), and the first round that fixed it (None: no round)."""
    name, index, flat = where(data, run.meta["tensors"], i)
    fixed_round = fixed_round if fixed_round is not None else fixed_rounds(run)
    first = int(fixed_round[name].flatten()[flat])
    return {"tensor": name, "index": index, "mu": float(data.mu[i]), "sigma": float(data.sigma[i]),
            "centre": None if data.status[i] == 2 else float(data.post[i]),
            "fixed_round": None if first < 0 else first, "round": data.round_index}


def hover_text(info: dict) -> str:
    """One line for the hover label."""
    where = f"{info['tensor']}[{', '.join(map(str, info['index']))}]"
    centre = "free after this round" if info["centre"] is None else f"centre {info['centre']:.6g}"
    fixed = "never fixed" if info["fixed_round"] is None else f"fixed in round {info['fixed_round']}"
    return f"{where}: mu {info['mu']:.6g}, sigma {info['sigma']:.3g}, {centre}, {fixed}"


@dataclass
class StepsData:
    """The greedy steps of one round as the steps panel draws them, with axis limits shared by
    all rounds of the run (``frame``: steps, centre range, count scale and top, largest P, delta
    range), so stepping through the rounds compares like with like."""
    round_index: int
    steps: pd.DataFrame
    count_scale: str
    frame: tuple = ()


def steps_frame(run) -> tuple:
    """The shared axes of :class:`StepsData` over all rounds of ``run``."""
    every = pd.concat([r.steps for r in run.rounds if len(r.steps)]) if run.rounds else pd.DataFrame()
    if not len(every):
        return ()
    n = int(every.groupby("round")["step"].max().max()) + 1 if "round" in every else int(every["step"].max()) + 1
    c = every["centre"].to_numpy(float)
    span = max(c.max() - c.min(), 1e-6)
    d = every["delta"].to_numpy(float)
    return (n, (c.min() - 0.08 * span, c.max() + 0.08 * span), count_scale(every["n_fit"]),
            float(every["n_fit"].max()), max(4, int(every["P"].max())), (d.min() / 1.2, d.max() * 1.2))


def steps_data(run, round_index: int, frame: tuple | None = None) -> StepsData:
    steps = run.rounds[round_index].steps
    frame = steps_frame(run) if frame is None else frame
    return StepsData(run.rounds[round_index].index, steps, frame[2] if frame else "linear", frame)
