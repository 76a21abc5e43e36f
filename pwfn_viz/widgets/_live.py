"""The machinery of live views: figures drawn into ipympl canvases and updated in place,
results cached per key, bursts of control changes coalesced into one update.

A :class:`Panel` owns one matplotlib Figure. ``Panel(width, height)`` puts it on an ipympl
``Canvas`` (a widget: toolbar with zoom and pan, mouse events back to Python);
``Panel(..., target=fig)`` draws onto a given Figure or SubFigure instead, which is how
``widget.save(path)`` redraws the current view into one file. Subclasses create their artists
once in :meth:`Panel.build` and change them in :meth:`Panel.show` (``set_data``,
``set_offsets``, ...); :func:`redraw` then draws every changed canvas once.

A full drawing costs mostly text, so a live panel keeps what it can between drawings (see
:mod:`~pwfn_viz.widgets._draw_cache`): its layout, while every label fits, and the pixels of
artists that stay (a legend, a colour bar, an axis whose ticks did not change).

    >>> calls = []
    >>> c = Coalescer(lambda: calls.append(1))
    >>> c.request()              # no frontend event loop here: runs at once
    >>> calls
    [1]
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict

import ipywidgets as widgets
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Polygon

from ._draw_cache import KeptLayout, PixelCache

__all__ = ["Coalescer", "Memo", "Panel", "redraw", "from_frontend", "save_panels"]

DPI = 90


def from_frontend(change) -> bool:
    """Whether a traitlets change came from the browser (ipywidgets holds the property lock
    while it applies a frontend message), not from Python code."""
    owner = change.get("owner") if isinstance(change, dict) else getattr(change, "owner", None)
    return bool(getattr(owner, "_property_lock", None))


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Coalescer:
    """Runs ``fn`` (which reads the controls' current values) once per burst of requests.

    A request from Python runs ``fn`` at once, so code that sets a control and reads the outputs
    sees them updated. A request from the browser, inside the kernel's event loop, is deferred
    by ``delay`` seconds: the slider messages that queued up while an update ran are all
    handled first (each only re-arms the pending run), then ``fn`` runs once, for the latest
    values. ``requests`` and ``runs`` count both (for tests and benchmarks).
    """

    def __init__(self, fn, delay: float = 0.03, idle=None, idle_after: float = 0.4):
        self.fn, self.delay = fn, delay
        self.idle, self.idle_after = idle, idle_after   # idle(): one small job (e.g. the next round) while waiting
        self.requests = self.runs = 0
        self._handle = self._idle_handle = None

    def request(self, deferred: bool = False) -> None:
        self.requests += 1
        loop = _running_loop() if deferred else None
        if loop is None:
            self.cancel()
            self._run()
        elif self._handle is None:
            self._handle = loop.call_later(self.delay, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def flush(self) -> None:
        """Run a pending update now (nothing when none is pending)."""
        if self._handle is not None:
            self.cancel()
            self._run()

    @property
    def pending(self) -> bool:
        return self._handle is not None

    def _run(self) -> None:
        deferred = self._handle is not None
        self._handle = None
        self.runs += 1
        self.fn()
        if deferred and self.idle is not None:
            self._schedule_idle()

    def _schedule_idle(self) -> None:
        loop = _running_loop()
        if loop is not None:
            if self._idle_handle is not None:
                self._idle_handle.cancel()
            self._idle_handle = loop.call_later(self.idle_after, self._run_idle)

    def _run_idle(self) -> None:
        """While nothing is pending: run one idle job; it returns True when it did some work
        (then another follows), False when there is nothing left to do."""
        self._idle_handle = None
        if self._handle is None and self.idle():
            self._schedule_idle()


class Memo:
    """A small least-recently-used cache: ``memo.get(key, compute)`` computes once per key.
    ``hits`` and ``misses`` count lookups (the tests check that a round shown twice is
    computed once)."""

    def __init__(self, size: int = 64):
        self.size, self.hits, self.misses = size, 0, 0
        self._data: OrderedDict = OrderedDict()

    def get(self, key, compute):
        if key in self._data:
            self.hits += 1
            self._data.move_to_end(key)
            return self._data[key]
        self.misses += 1
        value = self._data[key] = compute()
        if len(self._data) > self.size:
            self._data.popitem(last=False)
        return value

    def __contains__(self, key) -> bool:
        return key in self._data

    def clear(self) -> None:
        self._data.clear()


_CANVAS = None


def _canvas_class():
    """ipympl's canvas, sending its pictures as fast-compressed PNG: at zlib level 1 encoding a
    panel takes a fraction of the default level's time (the pictures travel to a local browser,
    where a few more bytes cost nothing)."""
    global _CANVAS
    if _CANVAS is None:
        import io

        from ipympl.backend_nbagg import Canvas
        from PIL import Image

        class FastCanvas(Canvas):
            after_render = None   # the panel's look at a rendering before it is sent: True renders again

            def draw(self):
                # FigureCanvasWebAggCore.draw, rendering again while the panel asks for it
                self._png_is_old = True
                try:
                    FigureCanvasAgg.draw(self)
                    for _ in range(3):   # room was made for a cut-off label: render again, look again
                        if self.after_render is None or not self.after_render():
                            break
                        FigureCanvasAgg.draw(self)
                finally:
                    self.manager.refresh_all()

            def get_diff_image(self):
                # matplotlib's FigureCanvasWebAggCore.get_diff_image with compress_level=1
                if not self._png_is_old:
                    return None
                pixels = np.asarray(self.get_renderer().buffer_rgba())
                buff = pixels.view(np.uint32).squeeze(2)
                if self._force_full or buff.shape != self._last_buff.shape or (pixels[:, :, 3] != 255).any():
                    self.set_image_mode("full")
                    output = buff
                else:
                    self.set_image_mode("diff")
                    output = np.where(buff != self._last_buff, buff, 0)
                self._last_buff = buff.copy()
                self._force_full = self._png_is_old = False
                with io.BytesIO() as png:
                    Image.fromarray(output.view(dtype=np.uint8).reshape((*output.shape, 4))).save(
                        png, format="png", compress_level=1)
                    return png.getvalue()

        _CANVAS = FastCanvas
    return _CANVAS


def _canvas(fig: Figure, label: str):
    """An ipympl canvas widget for ``fig`` (no pyplot, so nothing else ever shows the figure)."""
    from ipympl.backend_nbagg import FigureManager
    canvas = _canvas_class()(fig)
    FigureManager(canvas, 0)   # the toolbar and the draw protocol need a manager
    canvas.header_visible = canvas.footer_visible = canvas.resizable = False
    canvas.toolbar_position = "left"
    canvas.toolbar_visible = "fade-in-fade-out"
    canvas.layout = widgets.Layout(flex="0 0 auto", overflow="visible")
    canvas.add_class("pwfn-panel")
    canvas.add_class(f"pwfn-panel-{label}")
    return canvas


class Panel:
    """One figure of a widget. ``live`` panels have ``canvas`` (the ipympl widget to display);
    panels drawn onto ``target`` (a Figure or SubFigure, for saving) have ``canvas = None``.
    ``data`` is what :meth:`show` last drew; ``round_shown`` the round it belongs to (the
    canvas carries it as the CSS class ``pwfn-at-round-<i>``, which the browser tests read)."""

    label = "panel"
    # the layout is kept after the first drawing; after a drawing with new axes or ticks, look whether
    # every label still fits and make room if not (KeptLayout.fits). False only for a panel whose
    # labels never change.
    relayout = True

    def __init__(self, width: float = 5.6, height: float = 4.0, *, target=None, **options):
        self.width, self.height, self.options = width, height, options
        self.data, self.round_shown, self._dirty = None, None, False
        self.animated: list = []   # artists that move alone (a marker): redrawn over a cached background
        self._background, self._check_fit = None, False
        self.pixel_caches: list = []   # PixelCache of the artists drawn from their last pixels
        if target is None:
            self.fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
            self.canvas = _canvas(self.fig, self.label)
            self.kept_layout = KeptLayout(self.fig)
            self.canvas.mpl_connect("draw_event", lambda _event: self.kept_layout.rendered())
            self.canvas.mpl_connect("draw_event", self._keep_background)
            self.canvas.after_render = self._after_render
        else:
            self.fig, self.canvas, self.kept_layout = target, None, None
        self.build()
        for artist in self.animated:
            artist.set_animated(self.canvas is not None)   # a saved figure draws them as usual

    def _after_render(self) -> bool:
        """After a rendering of new axes, before it is sent: True to render again (the kept
        layout cut a label off and made room for it; the next rendering is looked at too)."""
        if not self._check_fit or self.kept_layout.fits(self.canvas.get_renderer()):
            self._check_fit = False
            return False
        return True

    def keep_pixels(self, artist, key=None) -> None:
        """Draw ``artist`` from the pixels of its last drawing while ``key()`` (what places and
        shapes it; for an axis by default its :meth:`PixelCache.axis_key`) is unchanged (see
        :class:`PixelCache`); live panels only."""
        if self.canvas is not None:
            self.pixel_caches.append(PixelCache(artist, key or PixelCache.axis_key(artist)))

    def _keep_background(self, _event) -> None:
        """After a full draw: keep the picture without the animated artists, then add them."""
        if not self.animated:
            return
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        for artist in self.animated:
            self.fig.draw_artist(artist)

    def touch(self) -> None:
        """Only animated artists changed: the next :func:`redraw` blits them over the background."""
        if not self._dirty:
            self._dirty = "animated"

    def _blit(self) -> None:
        self.canvas.restore_region(self._background)
        for artist in self.animated:
            self.fig.draw_artist(artist)
        self.canvas.blit(self.fig.bbox)

    def build(self) -> None:  # pragma: no cover - every subclass has one
        raise NotImplementedError

    def show(self, data) -> None:
        """Change the artists to show ``data`` (no drawing yet: see :func:`redraw`). When
        :meth:`update` reports that only animated artists changed (the axes, ticks and labels
        are as before), the next redraw blits them over the cached background."""
        self.data = data
        static_changed = self.update(data) is not False
        if (static_changed or self._background is None) and self.relayout and self.kept_layout is not None:
            self._check_fit = True   # the next rendering looks whether every label still fits
        if static_changed or self._background is None:
            self._dirty = True
        else:
            self.touch()
        i = getattr(data, "round_index", None)
        if self.canvas is not None and i != self.round_shown:
            if self.round_shown is not None:
                self.canvas.remove_class(f"pwfn-at-round-{self.round_shown}")
            if i is not None:
                self.canvas.add_class(f"pwfn-at-round-{i}")
        self.round_shown = i

    def update(self, data) -> bool | None:  # pragma: no cover
        """Move the artists to ``data``; return False when only the animated ones changed."""
        raise NotImplementedError

    def copy_onto(self, target) -> "Panel":
        """The same panel drawn onto ``target`` as it shows now (for saving): the data, then what
        the reader did to it: zoom and pan (each axis's limits), and the marks of the picked,
        hovered and selected weights (the animated artists' positions and colours)."""
        other = type(self)(self.width, self.height, target=target, **self.options)
        if self.data is None:
            return other
        other.data = self.data   # before update: artists that follow the axes read it
        other.update(self.data)
        for mine, theirs in zip(self.fig.axes, other.fig.axes):
            if (mine.get_xlim(), mine.get_ylim()) != (theirs.get_xlim(), theirs.get_ylim()):
                theirs.set_xlim(mine.get_xlim())
                theirs.set_ylim(mine.get_ylim())
        for mine, theirs in zip(self.animated, other.animated):
            _copy_marks(mine, theirs)
        return other


def _copy_marks(source, target) -> None:
    """Give ``target`` the position, colour and visibility of ``source`` (the same kind of artist)."""
    if isinstance(source, Line2D):
        target.set_data(*source.get_data())
    elif isinstance(source, PathCollection):
        target.set_offsets(source.get_offsets())
        target.set_facecolor(source.get_facecolor())
        target.set_edgecolor(source.get_edgecolor())
    elif isinstance(source, Polygon):
        target.set_xy(source.get_xy())
        target.set_facecolor(source.get_facecolor())
        target.set_edgecolor(source.get_edgecolor())
    target.set_visible(source.get_visible())


def redraw(panels) -> None:
    """Draw every changed live panel once. With the browser attached the canvas renders now
    and sends its picture (all panels' pictures leave together, right after the update);
    without one (a script, a test) only a draw request is queued."""
    for p in panels:
        if p is None or p.canvas is None or not p._dirty:
            continue
        only_animated, p._dirty = p._dirty == "animated", False
        if getattr(p.canvas, "syncing_data_url", True):
            p.canvas.draw_idle()
        elif only_animated and p._background is not None:
            p._blit()
        else:
            p.canvas.draw()


def save_panels(panels, path, title: str = "") -> str:
    """Write ``panels`` (side by side, as shown) to ``path`` through matplotlib; the format
    follows the extension (.pdf, .svg, .png). Returns the path written."""
    from pathlib import Path
    path = Path(path)
    if path.suffix.lower() not in (".pdf", ".svg", ".png"):
        raise ValueError(f"save to .pdf, .svg or .png, not {path.suffix or 'a name without extension'!r}")
    panels = [p for p in panels if p is not None and p.data is not None]
    if not panels:
        raise ValueError("nothing is shown yet: there is no view to save")
    width = sum(p.width for p in panels)
    height = max(p.height for p in panels) + (0.3 if title else 0)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    subs = fig.subfigures(1, len(panels), width_ratios=[p.width for p in panels], squeeze=False)[0]
    for p, sub in zip(panels, subs):
        p.copy_onto(sub)
    if title:
        fig.suptitle(title, fontsize="small")
    fig.savefig(path, dpi=150 if path.suffix.lower() == ".png" else DPI)
    return str(path)
