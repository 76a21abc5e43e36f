"""Mouse interaction on live panels: hover names a weight, a click picks it, a dragged rectangle
selects weights (matplotlib events, which ipympl sends from the browser).

    >>> hover = Hover(panel, describe, label, on_pick)     # doctest: +SKIP
"""
from __future__ import annotations

import html

from matplotlib.widgets import RectangleSelector

from ._data import hover_text
from ._live import redraw

__all__ = ["Hover", "rectangle_selector"]


class Hover:
    """On a :class:`~pwfn_viz.widgets._panels.SigmaMuPanel`: the weight under the mouse is ringed,
    its centre's band drawn and ``label`` (an HTML widget) names it (``describe(position) -> dict``,
    see :func:`~pwfn_viz.widgets._data.hover_info`); a click (not while zooming or panning)
    calls ``on_pick(position)``."""

    def __init__(self, panel, describe, label, on_pick=None):
        self.panel, self.describe, self.label, self.on_pick = panel, describe, label, on_pick
        self.position = None
        panel.canvas.mpl_connect("motion_notify_event", self._move)
        panel.canvas.mpl_connect("button_press_event", self._click)

    def _busy_tool(self) -> bool:
        toolbar = self.panel.canvas.toolbar
        return toolbar is not None and bool(toolbar.mode)

    def _move(self, event):
        if event.inaxes is not self.panel.ax or self.panel.data is None:
            return
        i = self.panel.nearest(event.x, event.y)
        if i == self.position:
            return
        self.position = i
        if i is not None:
            self.label.value = html.escape(hover_text(self.describe(i)))
        self.panel.hover(i)
        self.panel.touch()
        redraw([self.panel])

    def _click(self, event):
        if event.inaxes is not self.panel.ax or event.button != 1 or self._busy_tool() or self.on_pick is None:
            return
        i = self.panel.nearest(event.x, event.y)
        if i is not None:
            self.on_pick(i)


def rectangle_selector(panel, on_select):
    """A rectangle dragged with the left button on ``panel`` calls ``on_select(x0, x1, y0, y1)``
    (data coordinates); a plain click does not (it picks)."""
    def done(press, release):
        if abs(press.x - release.x) < 4 and abs(press.y - release.y) < 4:
            return
        on_select(press.xdata, release.xdata, press.ydata, release.ydata)

    return RectangleSelector(panel.ax, done, useblit=False, button=[1], minspanx=4, minspany=4,
                             spancoords="pixels", interactive=False,
                             props=dict(facecolor="none", edgecolor="black", linestyle="--"))
