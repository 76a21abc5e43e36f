"""What a live panel keeps between drawings, so that a new frame costs less than a full
drawing and looks the same.

Text is most of the cost of drawing a panel (glyphs, and the extents matplotlib measures to
place tick and axis labels). :class:`KeptLayout` runs constrained layout once and keeps its
positions while every label still fits; :class:`PixelCache` draws an artist that did not change
(a legend, a colour bar, an axis with the same ticks) as the pixels of its last drawing, and
only when the pixels beneath it are those it was drawn over, so the picture is exactly the one
a full drawing gives.
"""
from __future__ import annotations

import numpy as np
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.transforms import Bbox

__all__ = ["KeptLayout", "PixelCache", "label_overflow"]


class KeptLayout:
    """A figure's layout found once by constrained layout, then kept.

    Running constrained layout at every update costs more than drawing the figure. New data may
    bring wider tick labels, which push an axis label out: after each rendering of new axes,
    :meth:`fits` looks whether the titles and axis labels lie inside the figure; when one does
    not, the axes' edges move in by what is cut off plus :attr:`headroom` and the figure is
    rendered again. The first layout gets that headroom at once beside the y tick labels (the
    ones whose width changes with the data). Margins only grow, so they soon hold the widest
    labels of the data shown. (A hidden axes keeps its place: constrained layout leaves room
    for it too.)
    """

    headroom = 16.0   # pixels of room beyond a label: a sign and two digits

    def __init__(self, fig):
        self.fig, self._fresh = fig, False

    def rendered(self) -> None:
        """After a rendering: constrained layout, if it ran, is switched off, its result kept."""
        if isinstance(self.fig.get_layout_engine(), ConstrainedLayoutEngine):
            self.fig.set_layout_engine("none")
            self._fresh = True

    def fits(self, renderer, slack: float = 0.5) -> bool:
        """True when the figure as rendered keeps every label inside and needs no more room;
        else the axes move to make room (render again)."""
        room = [v + self.headroom if v > slack else 0.0 for v in label_overflow(self.fig, renderer)]
        if self._fresh:   # the first layout: room beside the y tick labels, on the sides they are
            sides = {ax.yaxis.get_label_position() for ax in self.fig.axes if ax.get_visible()}
            room[0] = max(room[0], self.headroom * ("left" in sides))
            room[2] = max(room[2], self.headroom * ("right" in sides))
            self._fresh = False
        if not any(room):
            return True
        # the axes' outer edges move in by the room; what sits outside them (labels, a legend
        # beside the axes) moves with them, and the other edges stay where they are
        width, height = self.fig.bbox.width, self.fig.bbox.height
        boxes = [ax.get_position(original=True) for ax in self.fig.axes]
        x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
        y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
        kx = (x1 - x0 - (room[0] + room[2]) / width) / (x1 - x0)
        ky = (y1 - y0 - (room[1] + room[3]) / height) / (y1 - y0)
        if min(kx, ky) < 0.5:   # labels as wide as the axes: no room to be made for them
            return True
        for ax, b in zip(self.fig.axes, boxes):
            ax.set_position(Bbox.from_bounds(x0 + room[0] / width + (b.x0 - x0) * kx,
                                             y0 + room[1] / height + (b.y0 - y0) * ky, b.width * kx, b.height * ky))
        return False


def label_overflow(fig, renderer) -> tuple:
    """How far (pixels) the visible axes' titles, axis labels, offset texts and end tick labels
    reach outside ``fig`` as last rendered: (left, bottom, right, top), 0 where nothing does.
    An axis label sits outside its tick labels, so when it is inside they are too, except at the
    ends of the axis, where the first and last tick labels reach past it. A text wider or
    taller than the figure is left out: no margin makes room for it."""
    width, height = fig.bbox.width, fig.bbox.height
    left = bottom = right = top = 0.0
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.offsetText, ax.yaxis.offsetText,
                 *_end_tick_labels(ax.xaxis), *_end_tick_labels(ax.yaxis)]
        for text in texts:
            if not (text.get_visible() and text.get_text()):
                continue
            box = text.get_window_extent(renderer)
            if box.width < width and box.height < height:
                left, bottom = max(left, -box.x0), max(bottom, -box.y0)
                right, top = max(right, box.x1 - width), max(top, box.y1 - height)
    return left, bottom, right, top


def _end_tick_labels(axis) -> list:
    """The labels of the first and last major ticks drawn (those inside the axis' range)."""
    lo, hi = sorted(axis.get_view_interval())
    locs = axis.get_majorticklocs()
    tol = 1e-9 * (hi - lo)
    drawn = [tick for tick, loc in zip(axis.get_major_ticks(len(locs)), locs) if lo - tol <= loc <= hi + tol]
    return [label for tick in drawn[:1] + drawn[-1:] for label in (tick.label1, tick.label2)]


class PixelCache:
    """Draws a static ``artist`` from the pixels of its last drawing, exactly.

    The pixels are reused while ``key()`` (what places and shapes the artist: its axes' position,
    a colour bar's limits, an axis' ticks) and the canvas size are those of that drawing, and the
    pixels beneath it (what was drawn before it in its box) are exactly those it was drawn over;
    otherwise it is drawn as usual and its pixels kept again. Its box is where that drawing
    changed the picture, plus :attr:`pad`. Text is the costly part of a drawing: a legend, a
    colour bar or an axis that stays costs a copy instead.
    """

    pad = 4   # pixels around what the drawing changed (where its antialiased edges met equal colour)

    def __init__(self, artist, key):
        self.artist, self.key, self._draw = artist, key, artist.draw
        self._state = self._box = self._under = self._over = None
        self.hits = 0   # drawings served from the kept pixels
        artist.draw = self.draw

    def forget(self) -> None:
        """Draw in full next time."""
        self._state = None

    def draw(self, renderer) -> None:
        if not (self.artist.get_visible() and hasattr(renderer, "buffer_rgba")):   # hidden, or a vector file
            return self._draw(renderer)
        pixels = np.asarray(renderer.buffer_rgba())
        state = (pixels.shape, self.key())
        if state == self._state and np.array_equal(pixels[self._box], self._under):
            pixels[self._box] = self._over
            self.hits += 1
            return None
        before = pixels.copy()
        self._draw(renderer)
        changed = (pixels != before).any(axis=2)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        if not rows.size:
            self._state = None
            return None
        box = (slice(max(0, rows[0] - self.pad), rows[-1] + 1 + self.pad),
               slice(max(0, cols[0] - self.pad), cols[-1] + 1 + self.pad))
        self._state, self._box, self._under, self._over = state, box, before[box].copy(), pixels[box].copy()
        return None

    @staticmethod
    def axis_key(axis):
        """What an axis' drawing depends on: its axes' place, range, scale, ticks and label."""
        return lambda: (axis.axes.bbox.bounds, tuple(axis.get_view_interval()), axis.get_scale(),
                        tuple(axis.get_majorticklocs()), axis.label.get_text())
