"""The live panels of the round views: sigma against mu, the run's timeline, the greedy steps.
Each creates its artists once (:meth:`build`) and moves them to new data (:meth:`update`).

Sigma against mu stays readable at every round: the axes follow the weights, the round's centres
are short ticks on the mu axis (only those in view), and only the band of the hovered or picked
weight's centre is drawn. Sigma is the clamped value the method samples with.
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import LogNorm, to_rgba
from matplotlib.patches import Polygon, Rectangle
from matplotlib.transforms import blended_transform_factory

from ..viz.style import COLOURS, DENSITY_CMAP, ROLE, SYMBOL, order_colour
from ..viz.uncertainty import STATUS_LABELS
from ._data import centres_in_view, step_of_weight
from ._live import Panel

__all__ = ["SigmaMuPanel", "TimelinePanel", "StepsPanel", "STATUS_COLOURS"]

STATUS_COLOURS = (ROLE["fixed_earlier"], ROLE["fixed_now"], ROLE["free"])
MAX_POINTS = 6000        # points drawn per status; past it a density image shows all weights


class SigmaMuPanel(Panel):
    """Pre-snap sigma against mu of one round (data: :class:`~pwfn_viz.widgets._data.SigmaMu`).

    ``drawn`` holds the weight positions drawn as points (all of them up to :data:`MAX_POINTS`
    per status); :meth:`nearest` finds the drawn weight under the mouse; :meth:`mark` rings a
    weight and shows the band of its centre; :meth:`highlight` outlines a set of weights."""

    label = "sigma-mu"

    def build(self):
        ax = self.ax = self.fig.subplots()
        self.density = ax.imshow(np.zeros((2, 2)), extent=(0, 1, 0, 1), origin="lower", aspect="auto",
                                 cmap=DENSITY_CMAP, norm=LogNorm(1, 10), interpolation="nearest", zorder=0,
                                 visible=False)
        # Line2D markers: Agg draws them several times faster than a scatter's PathCollection
        self.points = {s: ax.plot([], [], "o", ms=2.5, color=STATUS_COLOURS[s], mec="none", alpha=0.6, zorder=3)[0]
                       for s in (0, 2, 1)}   # earlier-fixed under free under just-fixed
        rug = blended_transform_factory(ax.transData, ax.transAxes)
        self.ticks = ax.scatter([], [], marker="|", s=150, linewidths=1.4, transform=rug, zorder=4, clip_on=False)
        self.zero = Rectangle((0, 0), 0, 1, transform=rug, color=order_colour(0), alpha=0.12, lw=0, zorder=1,
                              visible=False)
        ax.add_patch(self.zero)
        self.band = Polygon([[0, 0]] * 3, closed=True, alpha=0.15, lw=0.8, zorder=2, visible=False)
        ax.add_patch(self.band)
        self.picked = ax.scatter([], [], s=90, facecolors="none", edgecolors="black", linewidths=1.5, zorder=6)
        self.hovered = ax.scatter([], [], s=60, facecolors="none", edgecolors=COLOURS["orange"], linewidths=1.5,
                                  zorder=6)
        self.selected = ax.scatter([], [], s=16, facecolors="none", edgecolors=COLOURS["black"], linewidths=0.6,
                                   zorder=5)
        ax.set_xlabel(f"{SYMBOL['mu']} before the snap")
        ax.set_ylabel(r"$\sigma$, clamped: $\max(\sigma, 2^{-30})$")
        proxies = [ax.scatter([], [], s=12, color=STATUS_COLOURS[s]) for s in range(3)]
        proxies.append(ax.scatter([], [], marker="|", s=60, color="black"))
        # the legend names the statuses (static, outside the data); the counts are in the title
        legend = ax.legend(proxies, [STATUS_LABELS[s] for s in range(3)] + ["centres of the round (in view)"],
                           fontsize="x-small", loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2, borderaxespad=0,
                           frameon=False)
        # a new frame (layer, selection) redraws in full: the static legend comes back as pixels, and
        # the kept layout makes room when new tick labels would be cut off
        self.keep_pixels(legend, lambda: ax.bbox.bounds)
        self.title = self.fig.suptitle("\n", fontsize="small")   # two lines: what, and the round's counts
        # everything that changes with the round is animated: with the axes the same (limits
        # shared by the rounds) an update blits these over the cached axes
        self.animated = [self.density, *self.points.values(), self.ticks, self.zero, self.band, self.picked,
                         self.hovered, self.selected, self.title]
        self._frame = None
        self.drawn = np.zeros(0, dtype=np.int64)
        self.visible_centres = np.zeros(0, dtype=np.int64)
        ax.callbacks.connect("xlim_changed", lambda _ax: self._show_centres())

    def update(self, d):
        counts = d.counts
        dense = any(c > MAX_POINTS for c in counts)
        lo, hi = (float(d.mu.min()), float(d.mu.max())) if d.mu.size else (-1.0, 1.0)
        pad = 0.04 * (hi - lo) if hi > lo else 0.01
        top = float(d.sigma.max()) * 1.08 if d.sigma.size else 1.0
        drawn = []
        for s, coll in self.points.items():
            idx = d.sample(s, MAX_POINTS)
            drawn.append(idx)
            coll.set_data(d.mu[idx], d.sigma[idx])
            coll.set_markersize(2.5 if d.mu.size < 20_000 else 1.8)
        self.drawn = np.concatenate(drawn)
        self.density.set_visible(dense)
        if dense:   # the density of all weights under the sampled points
            h, extent = d.density()
            self.density.set_data(np.ma.masked_equal(h, 0))
            self.density.set_extent(extent)
            self.density.set_norm(LogNorm(1, max(2.0, h.max())))
        sampled = " (points sampled)" if dense else ""
        zero = d.zero_band if d.zero_band and (d.centres == 0).any() else None
        self.zero.set_visible(zero is not None)
        if zero is not None:
            self.zero.set_x(-zero)
            self.zero.set_width(2 * zero)
        (x0, x1), (y0, y1) = d.limits if d.limits is not None else ((lo - pad, hi + pad), (0.0, top))
        frame = (x0, x1, y0, y1)
        changed = frame != self._frame
        self._frame = frame
        if changed:
            self.ax.set_xlim(x0, x1)   # fires xlim_changed: the ticks follow
            self.ax.set_ylim(y0, y1)
        else:
            self._show_centres()
        self.top = y1
        # Unicode letters, not mathtext: a title changes every round, and mathtext parses each new one
        what = d.title or f"σ against μ before the snap: {d.layer or 'all layers'}"
        self.title.set_text(f"{what}\nround {d.round_index}: {counts[1]:,} fixed now, {counts[0]:,} before, "
                            f"{counts[2]:,} free, {len(d.centres)} centres{sampled}")
        self.mark(None, None)
        self.hover(None)
        self.highlight(np.zeros(0, dtype=np.int64))
        return changed

    def _show_centres(self):
        d = self.data
        if d is None:
            return
        lo, hi = self.ax.get_xlim()
        keep = centres_in_view(d.centres, lo, hi)
        self.visible_centres = keep
        self.ticks.set_offsets(np.column_stack([d.centres[keep], np.full(keep.size, 0.025)]) if keep.size
                               else np.zeros((0, 2)))
        self.ticks.set_color([order_colour(p) for p in d.orders[keep]] if keep.size else "black")

    def nearest(self, x: float, y: float, radius: float = 6.0) -> int | None:
        """The drawn weight nearest to display point (x, y), within ``radius`` pixels."""
        d = self.data
        if d is None or not self.drawn.size:
            return None
        xy = self.ax.transData.transform(np.column_stack([d.mu[self.drawn], d.sigma[self.drawn]]))
        dist = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
        k = int(np.argmin(dist))
        return int(self.drawn[k]) if dist[k] <= radius else None

    def _band_of(self, i):
        d = self.data
        step = step_of_weight(d, i)
        if step is None:
            self.band.set_visible(False)
            return
        c, delta = d.centres[step], d.deltas[step]
        self.band.set_xy([(c - delta * self.top, self.top), (c, 0.0), (c + delta * self.top, self.top)])
        colour = order_colour(d.orders[step])
        self.band.set_facecolor(to_rgba(colour, 0.15))
        self.band.set_edgecolor(colour)
        self.band.set_visible(True)

    def hover(self, i: int | None) -> None:
        """Ring the hovered weight and show its centre's band (the picked one's when none)."""
        d = self.data
        if i is None or d is None:
            self.hovered.set_offsets(np.zeros((0, 2)))
            if self._pick is not None:
                self._band_of(self._pick)
            else:
                self.band.set_visible(False)
            return
        self.hovered.set_offsets([[d.mu[i], d.sigma[i]]])
        self._band_of(i)

    _pick = None

    def mark(self, i: int | None, _unused=None) -> None:
        """Ring the picked weight ``i`` (None: none) and show its centre's band."""
        d = self.data
        self._pick = i
        if i is None or d is None or i >= d.mu.size:
            self._pick = None
            self.picked.set_offsets(np.zeros((0, 2)))
            self.band.set_visible(False)
            return
        self.picked.set_offsets([[d.mu[i], d.sigma[i]]])
        self._band_of(i)

    def highlight(self, idx) -> None:
        """Outline the weights at positions ``idx`` (a selection made in another view)."""
        d = self.data
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size > MAX_POINTS:   # a large selection: outline the drawn points among it (an outline each is slow)
            idx = idx[np.isin(idx, self.drawn)]
        self.selected.set_offsets(np.column_stack([d.mu[idx], d.sigma[idx]]) if idx.size and d is not None
                                  else np.zeros((0, 2)))

    def inside(self, x0, x1, y0, y1) -> np.ndarray:
        """Positions of all weights (not only the drawn ones) inside a data rectangle."""
        d = self.data
        lo_x, hi_x, lo_y, hi_y = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        return np.flatnonzero((d.mu >= lo_x) & (d.mu <= hi_x) & (d.sigma >= lo_y) & (d.sigma <= hi_y))


class TimelinePanel(Panel):
    """The run's timeline (primary metric before and after each snap, unique values, entropy)
    against the share fixed; the shown round is a vertical line. Data: ``(table, round_index,
    fraction)``; the curves are drawn once (they do not change with the round)."""

    label = "timeline"

    def build(self):
        run = self.options["run"]
        table = run.table()
        metric, label = run.primary, run.primary_label
        ax = self.ax = self.fig.subplots()
        x = table["fraction"] * 100
        ax.plot(x, table[f"{metric}_before"], "o-", color=ROLE["before"], ms=4, label=f"{label} before snap")
        ax.plot(x, table[f"{metric}_after"], "s--", color=ROLE["after"], ms=4, label=f"{label} after snap")
        base = run.baseline.get(metric)
        if base is not None:
            ax.axhline(base, color="grey", lw=0.8, ls=":", label="unquantised")
        ax.set_xlabel("weights fixed (%)")
        ax.set_ylabel(f"test {label}")
        right = ax.twinx()
        right.plot(x, table["unique"], "^-", color=ROLE["unique"], ms=4, label="unique values")
        right.set_yscale("log" if table["unique"].max() / max(1, table["unique"].min()) > 100 else "linear")
        right.set_ylabel("unique values", color=ROLE["unique"])
        outer = ax.twinx()
        outer.spines["right"].set_position(("axes", 1.26))   # clear of the unique-values label
        outer.plot(x, table["entropy"], "D:", color=ROLE["entropy"], ms=3, label="entropy (bits)")
        outer.set_ylim(0, None)
        outer.set_ylabel("entropy (bits)", color=ROLE["entropy"])
        handles, labels = [], []
        for a in (ax, right, outer):
            h, lab = a.get_legend_handles_labels()
            handles, labels = handles + h, labels + lab
        ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncols=3, fontsize="x-small",
                  frameon=False)
        self.marker = ax.axvline(0, color="black", lw=1.2, alpha=0.6, zorder=3)
        self.text = ax.annotate("", (0, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                                textcoords="offset points", fontsize="small")
        self.animated = [self.marker, self.text]

    def update(self, data):
        x = 100 * data.fraction
        self.marker.set_xdata([x, x])
        self.text.xy = (x, 1)
        self.text.set_text(f"round {data.round_index}")
        return False   # the curves stay: only the marker moves


class StepsPanel(Panel):
    """The greedy steps of a round in three rows sharing the step axis: centres in the order chosen
    (coloured by order P), weights fitting and taken per step (a linear axis unless the counts
    span decades), and P and delta. Data: :class:`~pwfn_viz.widgets._data.StepsData`."""

    label = "steps"

    def build(self):
        self.axes = self.fig.subplots(3, 1, sharex=True, height_ratios=(1.2, 1, 0.8))
        a0, a1, a2 = self.axes
        self.centres = a0.scatter([], [], s=14, zorder=3)
        a0.axhline(0, color="grey", lw=0.5)
        a0.set_ylabel("centre")
        self.fit, = a1.plot([], [], "o", ms=2.5, color=COLOURS["blue"], label="fitting")
        self.taken, = a1.plot([], [], "-", drawstyle="steps-mid", color=COLOURS["sky"], lw=1.5, label="taken")
        a1.set_ylabel("weights")
        a1.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)   # outside
        self.order, = a2.plot([], [], drawstyle="steps-mid", color=COLOURS["green"], label="order P")
        a2.set_ylabel("order P", color=COLOURS["green"])
        self.right = a2.twinx()
        self.delta, = self.right.plot([], [], drawstyle="steps-mid", color=COLOURS["purple"], ls="--")
        self.right.set_ylabel(SYMBOL["delta"], color=COLOURS["purple"])
        a2.set_xlabel("greedy step")
        self.empty = a0.text(0.5, 0.5, "", transform=a0.transAxes, ha="center", va="center")
        self.title = self.fig.suptitle("", fontsize="small")
        self.animated = [self.centres, self.fit, self.taken, self.order, self.delta, self.empty, self.title]
        self._frame = None

    def update(self, data):
        s = data.steps
        a0, a1, a2 = self.axes
        n = len(s)
        self.empty.set_text("" if n else f"no greedy steps recorded for round {data.round_index}")
        self.title.set_text(f"round {data.round_index}: {n} greedy steps (centres in the order chosen)")
        step = s["step"].to_numpy(float) if n else np.zeros(0)
        if n:
            self.centres.set_offsets(np.column_stack([step, s["centre"].to_numpy(float)]))
            self.centres.set_color([order_colour(p) for p in s["P"].to_numpy(int)])
        else:
            self.centres.set_offsets(np.zeros((0, 2)))
        self.fit.set_data(step, s["n_fit"].to_numpy(float) if n else [])
        self.taken.set_data(step, s["n_taken"].to_numpy(float) if n else [])
        self.order.set_data(step, s["P"].to_numpy(float) if n else [])
        self.delta.set_data(step, s["delta"].to_numpy(float) if n else [])
        if data.frame == self._frame or not data.frame:
            return data.frame != self._frame
        self._frame = data.frame
        n_steps, centre_lim, scale, top, p_max, delta_lim = data.frame
        a0.set_xlim(-0.5, n_steps - 0.5)
        a0.set_ylim(*centre_lim)
        a1.set_yscale(scale)
        a1.set_ylim((0.8, top * 1.5) if scale == "log" else (0, top * 1.1 + 0.5))
        a2.set_ylim(0.5, p_max + 0.5)
        a2.set_yticks(range(1, p_max + 1))
        self.right.set_yscale("log", base=2) if delta_lim[1] / max(delta_lim[0], 1e-12) > 4 else \
            self.right.set_yscale("linear")
        self.right.set_ylim(*delta_lim)
        return True
