"""Live panels of one layer's weights: sigma by position in the tensor and one weight's
trajectory over the rounds (see :mod:`pwfn_viz.widgets._live` for how panels update).

The position heatmap's colour scale is the layer's over every round (``PositionData.limits``),
so two rounds compare by colour; sigma is the clamped value the method uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import NullLocator

from ..viz.style import COLOURS, ROLE, SEQUENTIAL_CMAP, SYMBOL
from ._live import Panel

__all__ = ["PositionData", "PositionPanel", "TrajectoryPanel"]

SIGMA_CLAMPED = f"{SYMBOL['sigma']} (clamped)"


@dataclass
class PositionData:
    """Sigma of a selection keeping its layout (``grid``: 1-D or rows x columns), the picked entry
    (flat position in the selection), the colour limits shared by all rounds and axis names."""
    round_index: int
    grid: np.ndarray
    limits: tuple
    dims: list
    title: str
    pick: int | None = None
    highlight: np.ndarray | None = None   # flat positions outlined (a selection in another view)


class PositionPanel(Panel):
    """Sigma by position: a heatmap (log colour, limits shared over the rounds) for a 2-D or
    larger selection, a line over the index for 1-D. ``cell(x, y)`` maps a data point back to a
    flat position in the selection (for clicks)."""

    label = "position"

    def build(self):
        ax = self.ax = self.fig.subplots()
        self.image = ax.imshow(np.ones((2, 2)), aspect="auto", interpolation="nearest", cmap=SEQUENTIAL_CMAP,
                               norm=LogNorm(1e-3, 1))
        self.colorbar = self.fig.colorbar(self.image, ax=ax, label=SIGMA_CLAMPED)
        self.line, = ax.plot([], [], "o-", ms=3, lw=0.8, color=ROLE["free"])
        self.pick_mark, = ax.plot([], [], "s", ms=9, mfc="none", mec=COLOURS["vermillion"], mew=1.5)
        self.marks, = ax.plot([], [], "s", ms=4, mfc="none", mec="black", mew=0.6)
        self.title = ax.set_title("", fontsize="small")
        self.animated = [self.image, self.line, self.pick_mark, self.marks]
        self._frame = self._limits = None
        # text costs most of a drawing: the colour bar (one per layer) and axes that stay (the
        # same grid at another channel or tap) come back as the pixels of their last drawing
        cbar = self.colorbar
        self.keep_pixels(cbar.ax, lambda: (cbar.ax.bbox.bounds, cbar.norm.vmin, cbar.norm.vmax))
        self.keep_pixels(ax.xaxis)
        self.keep_pixels(ax.yaxis)

    def _xy(self, d, flat):
        flat = np.atleast_1d(np.asarray(flat, dtype=np.int64))
        if d.grid.ndim <= 1:
            return flat, d.grid.reshape(-1)[flat]
        r, c = np.divmod(flat, d.grid.shape[1])
        return c, r

    def update(self, d):
        ax = self.ax
        one_d = d.grid.ndim <= 1
        self.image.set_visible(not one_d)
        self.colorbar.ax.set_visible(not one_d)
        self.line.set_visible(one_d)
        self.mark(d.pick)
        self.highlight(d.highlight)
        if one_d:
            self.line.set_data(np.arange(d.grid.size), d.grid.reshape(-1))
        else:
            self.image.set_data(d.grid)
        frame = (d.grid.shape, d.limits, tuple(d.dims), d.title)
        if frame == self._frame:
            return False   # the same axes and colour scale: only the cells change
        self._frame = frame
        if one_d:
            flat = d.grid.reshape(-1)
            if ax.get_yscale() != "log":
                ax.set_yscale("log")
                ax.yaxis.set_minor_locator(NullLocator())   # decades of minor ticks cost more than the data
            ax.set_xlim(-0.5, flat.size - 0.5)
            ax.set_ylim(d.limits[0] / 1.3, d.limits[1] * 1.3)
            ax.set_xlabel(d.dims[0] if d.dims else "position")
            ax.set_ylabel(SIGMA_CLAMPED)
        else:
            if ax.get_yscale() != "linear":
                ax.set_yscale("linear")
            self.image.set_extent((-0.5, d.grid.shape[1] - 0.5, d.grid.shape[0] - 0.5, -0.5))
            if d.limits != self._limits:   # a new layer (a channel or tap of the same one keeps them)
                self._limits = d.limits
                self.image.set_norm(LogNorm(*d.limits))   # the colour bar follows the image
                self.colorbar.minorticks_off()
            ax.set_xlim(-0.5, d.grid.shape[1] - 0.5)
            ax.set_ylim(d.grid.shape[0] - 0.5, -0.5)
            ax.set_xlabel(d.dims[1] if len(d.dims) == 2 else f"({', '.join(d.dims[1:])}), row-major")
            ax.set_ylabel(d.dims[0])
        self.title.set_text(d.title)
        return True

    def mark(self, pick):
        d = self.data
        if pick is None or d is None:
            self.pick_mark.set_data([], [])
        else:
            self.pick_mark.set_data(*self._xy(d, pick))

    def highlight(self, flat):
        d = self.data
        if flat is None or d is None or not len(flat):
            self.marks.set_data([], [])
        else:
            self.marks.set_data(*self._xy(d, flat))

    def cell(self, x: float, y: float) -> int | None:
        """The flat position (in the selection) under data point (x, y)."""
        d = self.data
        if d is None:
            return None
        if d.grid.ndim <= 1:
            i = int(round(x))
            return i if 0 <= i < d.grid.size else None
        r, c = int(round(y)), int(round(x))
        rows, cols = d.grid.shape[0], int(np.prod(d.grid.shape[1:]))
        return r * cols + c if 0 <= r < rows and 0 <= c < cols else None

    def cells_inside(self, x0, x1, y0, y1) -> np.ndarray:
        """Flat positions of the cells inside a data rectangle."""
        d = self.data
        if d.grid.ndim <= 1:
            i = np.arange(d.grid.size)
            v = d.grid.reshape(-1)
            return i[(i >= min(x0, x1)) & (i <= max(x0, x1)) & (v >= min(y0, y1)) & (v <= max(y0, y1))]
        rows, cols = d.grid.shape[0], int(np.prod(d.grid.shape[1:]))
        r = np.arange(rows)[(np.arange(rows) >= min(y0, y1) - 0.5) & (np.arange(rows) <= max(y0, y1) + 0.5)]
        c = np.arange(cols)[(np.arange(cols) >= min(x0, x1) - 0.5) & (np.arange(cols) <= max(x0, x1) + 0.5)]
        return (r[:, None] * cols + c[None, :]).reshape(-1)


class TrajectoryPanel(Panel):
    """One weight's mu over the rounds (start, then before and after each snap) with a +-sigma
    band (sigma clamped) and the value it was fixed to. Data: a
    :class:`~pwfn_viz.widgets.trajectory.Trajectory`; ``round_index`` marks the round shown."""

    label = "trajectory"

    def build(self):
        ax = self.ax = self.fig.subplots()
        self.band = ax.fill_between([0, 1], [0, 0], [0, 0], color=ROLE["pre"], alpha=0.2, lw=0,
                                    label=r"$\mu \pm \sigma$")
        self.path, = ax.plot([], [], "-", color=ROLE["pre"], lw=1)
        self.before, = ax.plot([], [], "o", color=ROLE["pre"], ms=5, label="before the snap")
        self.after, = ax.plot([], [], "s", color=ROLE["post"], ms=5, label="after the snap")
        self.start, = ax.plot([], [], "D", color="black", ms=5, label="start")
        self.fixed = ax.axhline(0, color=ROLE["centre"], ls="--", lw=0.8, label="fixed value")
        self.now = ax.axvline(0, color="grey", lw=1.0, alpha=0.6, label="round shown")
        self.animated = [self.now]
        self._shown = None
        ax.set_xlabel("round")
        ax.set_ylabel(SYMBOL["mu"])
        legend = ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        # text costs most of a drawing: the legend and the round axis stay, and so does the mu
        # axis of weights with the same ticks; they come back as the pixels of their last drawing
        self.keep_pixels(legend, lambda: ax.bbox.bounds)
        self.keep_pixels(ax.xaxis)
        self.keep_pixels(ax.yaxis)
        self.title = ax.set_title("", fontsize="small")

    def update(self, data):
        traj, shown = data.trajectory, data.round_index
        self.now.set_xdata([shown, shown])
        if traj is self._shown:
            return False   # the same weight: only the round marker moves
        self._shown = traj
        t = traj.table
        x = [-0.5]
        mu, sigma = [traj.start_mu], [traj.start_sigma]
        for r, a, b, sa, sb in zip(t["round"], t["pre_mu"], t["mu"], t["pre_sigma"], t["sigma"]):
            x += [r - 0.15, r + 0.15]
            mu += [a, b]
            sigma += [sa, sb]
        x, mu = np.array(x), np.array(mu)
        sigma = np.maximum(np.array(sigma), 2.0 ** -30)
        self.band.set_verts([np.column_stack([np.r_[x, x[::-1]], np.r_[mu + sigma, (mu - sigma)[::-1]]])])
        self.path.set_data(x, mu)
        self.before.set_data(x[1::2], mu[1::2])
        self.after.set_data(x[2::2], mu[2::2])
        self.start.set_data(x[:1], mu[:1])
        self.fixed.set_visible(traj.fixed_round is not None)
        if traj.fixed_round is not None:
            self.fixed.set_ydata([traj.fixed_value] * 2)
        self.ax.set_xticks(list(t["round"]))
        self.ax.set_xlim(-0.8, max(t["round"].max(), 0) + 0.5)
        lo, hi = float((mu - sigma).min()), float((mu + sigma).max())
        pad = 0.08 * (hi - lo) if hi > lo else 1e-3
        self.ax.set_ylim(lo - pad, hi + pad)
        fixed = "" if traj.fixed_round is None else f", fixed to {traj.fixed_value:.5g} in round {traj.fixed_round}"
        self.title.set_text(f"{traj.name}[{', '.join(map(str, traj.index))}] over the rounds{fixed}")
        return True
