"""One consistent, colour-blind-safe look for every pwfn_viz figure.

Colours are the Okabe-Ito palette (distinguishable under the common colour-vision deficiencies);
colour maps are ``cividis`` (sequential, designed for colour-vision deficiency) and ``Greys``
for densities. Nothing changes matplotlib's global settings on import: every plot function runs
inside :func:`style`, a context manager that applies a seaborn context and the palette and
restores the previous settings on exit.

    >>> from pwfn_viz.viz.style import style, COLOURS
    >>> import matplotlib.pyplot as plt
    >>> with style():                                # doctest: +SKIP
    ...     fig, ax = plt.subplots()
    ...     ax.plot([0, 1], color=COLOURS["blue"])

``style`` nests: when a user wraps calls in ``with style("talk"):``, the plot functions inside
keep the user's choice instead of re-applying the default.

Paper figures: ``style(venue="neurips")`` (see :data:`VENUES`) sizes every new figure to the venue's
text width (``width="column"``: one column of a two-column venue), keeping each plot's aspect, and
sets the fonts to the sizes they will have in print (8 pt labels, 7 pt ticks and legends; nothing
below :data:`MIN_FONT_PT`). :func:`figsize` gives the size for a figure of your own:

    >>> figsize("icml", "column", aspect=0.75)
    (3.25, 2.44)
    >>> with style(venue="cvpr", width="column", serif=True):      # doctest: +SKIP
    ...     fig = plot_timeline(run)                                 # 3.25 in wide, serif text

Text stays text in every vector format: PDFs embed TrueType fonts (``pdf.fonttype`` 42) and SVGs
keep ``<text>`` elements (``svg.fonttype`` "none"), so labels can be edited in Inkscape or
Illustrator.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns
from cycler import cycler
from matplotlib.text import Text

__all__ = ["COLOURS", "PALETTE", "ROLE", "SEQUENTIAL_CMAP", "DENSITY_CMAP", "MIN_FONT_PT", "Venue", "VENUES",
           "SYMBOL", "style", "styled", "new_axes", "scaled_figsize", "figsize", "get_venue", "active_venue", "finish",
           "legend_outside", "order_colour", "save"]

COLOURS = {"blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73", "purple": "#CC79A7",
           "orange": "#E69F00", "sky": "#56B4E9", "yellow": "#F0E442", "black": "#000000",
           "grey": "#999999"}
PALETTE = [COLOURS[c] for c in ("blue", "vermillion", "green", "purple", "orange", "sky", "yellow", "black")]
#: what each quantity is drawn in, the same in every figure
ROLE = {"before": COLOURS["blue"], "after": COLOURS["vermillion"], "unique": COLOURS["green"],
        "entropy": COLOURS["purple"], "free": COLOURS["blue"], "fixed_now": COLOURS["vermillion"],
        "fixed_earlier": COLOURS["grey"], "centre": COLOURS["black"], "pre": COLOURS["blue"],
        "post": COLOURS["vermillion"], "kmeans": COLOURS["blue"]}
SEQUENTIAL_CMAP = "cividis"
DENSITY_CMAP = "Greys"
#: one colour per order P (number of powers of two in a centre): 1..4, index 0 for zero
_ORDER_COLOURS = (COLOURS["black"], COLOURS["blue"], COLOURS["green"], COLOURS["orange"], COLOURS["purple"])

_RC = {
    "axes.prop_cycle": cycler(color=PALETTE),
    "image.cmap": SEQUENTIAL_CMAP,
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "pdf.fonttype": 42,           # editable TrueType text in PDFs (journals ask for it)
    "ps.fonttype": 42,
    "svg.fonttype": "none",       # SVG text stays <text>: editable in a vector editor
    "svg.hashsalt": "pwfn_viz",   # deterministic ids inside SVG files
    "legend.frameon": False,
    "axes.titlesize": "medium",
}
_state = threading.local()


def order_colour(order: int) -> str:
    """The colour of centres that need ``order`` powers of two (0: the zero centre)."""
    return _ORDER_COLOURS[max(0, min(int(order), len(_ORDER_COLOURS) - 1))]


#: the smallest font size (points, at print size) a venue figure may use: the usual floor of
#: conference style guides for text in figures
MIN_FONT_PT = 7.0
#: how the package writes its quantities in labels and titles (matplotlib mathtext)
SYMBOL = {"sigma": r"$\sigma$", "mu": r"$\mu$", "delta": r"$\delta$"}


@dataclasses.dataclass(frozen=True)
class Venue:
    """Page geometry of a venue's LaTeX template, in inches, and the font sizes figures get.

    ``text_width`` is ``\\textwidth``; ``column_width`` is ``\\columnwidth`` (the same for a
    single-column venue). ``font_size`` is for labels and titles, ``small_size`` for ticks, legends
    and annotations (both in points at print size, so a figure must be included at 100 %)."""
    name: str
    text_width: float
    column_width: float
    font_size: float = 8.0
    small_size: float = 7.0
    serif: bool = False

    @property
    def two_column(self) -> bool:
        return self.column_width < self.text_width

    def width(self, width="text") -> float:
        """Inches for ``width``: "text" (or "full"), "column" (or "half"), or a fraction of the
        text width (``0.5``)."""
        if width in ("text", "full"):
            return self.text_width
        if width in ("column", "half"):
            return self.column_width
        if isinstance(width, (int, float)) and 0 < width <= 1:
            return round(self.text_width * float(width), 3)
        raise ValueError(f"width={width!r}: use 'text', 'column' or a fraction of the text width in (0, 1]")


_PT = 1 / 72.27   # TeX points per inch: templates give widths in pt
#: templates' text and column widths (from their style files: NeurIPS and ICLR are single-column)
VENUES = {
    "neurips": Venue("NeurIPS", 5.5, 5.5),
    "iclr": Venue("ICLR", 5.5, 5.5),
    "icml": Venue("ICML", 6.75, 3.25),
    "cvpr": Venue("CVPR", 6.875, 3.25),
    "ieee": Venue("IEEE", round(516 * _PT, 2), round(252 * _PT, 2), serif=True),
    "aaai": Venue("AAAI", 7.0, 3.3, serif=True),
}


def get_venue(name) -> Venue:
    """The :class:`Venue` called ``name`` (case-insensitive), or ``name`` itself if it is one."""
    if isinstance(name, Venue):
        return name
    key = str(name).lower()
    if key not in VENUES:
        raise ValueError(f"no venue {name!r}; known: {', '.join(VENUES)}")
    return VENUES[key]


def figsize(venue_name, width="text", aspect: float = 0.62, height: float | None = None) -> tuple[float, float]:
    """``(width, height)`` in inches of a figure for ``venue_name`` (see :data:`VENUES`):
    ``width`` "text" (full width), "column" (one column) or a fraction of the text width; the
    height is ``aspect`` times the width unless ``height`` is given.

        >>> figsize("neurips")
        (5.5, 3.41)
        >>> figsize("ieee", "column", height=2.0)
        (3.49, 2.0)
    """
    w = get_venue(venue_name).width(width)
    return w, round(height if height is not None else w * aspect, 2)


def _serif_rc() -> dict:
    # STIX is bundled with matplotlib: a Times-like face without a TeX installation
    return {"font.family": "serif", "font.serif": ["STIXGeneral", "DejaVu Serif"], "mathtext.fontset": "stix"}


def _font_rc(v: Venue, serif: bool) -> dict:
    """rcParams for text at print size under venue ``v``."""
    big, small = max(v.font_size, MIN_FONT_PT), max(v.small_size, MIN_FONT_PT)
    rc = {"font.size": big, "axes.labelsize": big, "axes.titlesize": big, "figure.titlesize": big,
          "xtick.labelsize": small, "ytick.labelsize": small, "legend.fontsize": small,
          "legend.title_fontsize": small, "lines.linewidth": 1.0, "lines.markersize": 4.0,
          "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
          "xtick.major.size": 2.5, "ytick.major.size": 2.5, "patch.linewidth": 0.6,
          "figure.constrained_layout.h_pad": 0.02, "figure.constrained_layout.w_pad": 0.02}
    if serif:
        rc.update(_serif_rc())
    return rc


@contextlib.contextmanager
def style(context: str = "paper", font_scale: float = 1.1, rc: dict | None = None, *, venue=None,
          width="text", serif: bool | None = None):
    """Apply pwfn_viz's look (seaborn ``ticks`` style, ``context``, Okabe-Ito palette) inside a
    ``with`` block; the previous rcParams come back on exit. Nested calls are no-ops, so an
    outer ``with style("talk"):`` wins over the default every plot function applies.

    ``venue`` (a name in :data:`VENUES` or a :class:`Venue`): paper figures. Every figure a plot
    function makes is ``width`` wide ("text", "column" or a fraction, see :func:`figsize`) with its
    own aspect, fonts are set to their print size (none below :data:`MIN_FONT_PT`); ``serif``
    (default: the venue's) switches to a serif face."""
    if getattr(_state, "depth", 0):
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    chosen = get_venue(venue) if venue is not None else None
    if chosen is not None:
        chosen.width(width)   # a clear error for a bad width, before anything changes
        rc = {**_font_rc(chosen, chosen.serif if serif is None else serif), **(rc or {})}
    elif serif:
        rc = {**_serif_rc(), **(rc or {})}
    _state.depth = 1
    _state.venue, _state.width = chosen, width
    # Resolve the backend first: in Jupyter, resolving it turns interactive mode on, and that must
    # not be undone on exit (figures would stop showing); "interactive" keeps its value at exit.
    mpl.get_backend()
    interactive = None
    try:
        with mpl.rc_context():   # restores everything seaborn changes below, too
            try:
                # color_codes=False: seaborn would otherwise remap "b", "g", ... globally, outside rcParams
                sns.set_theme(context=context, style="ticks", palette=PALETTE, font_scale=font_scale,
                              color_codes=False, rc={**_RC, **(rc or {})})
                yield
            finally:
                interactive = mpl.rcParams["interactive"]
    finally:
        _state.depth = 0
        _state.venue = None
        if interactive is not None:
            mpl.interactive(interactive)


def active_venue() -> Venue | None:
    """The venue of the enclosing ``with style(venue=...)`` block, if any."""
    return getattr(_state, "venue", None)


def styled(fn):
    """Decorator: run a plot function inside :func:`style`; under a venue, the returned figure is
    :func:`finish`-ed (no text below the venue's font floor)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            fig = fn(*args, **kwargs)
            if active_venue() is not None and hasattr(fig, "axes"):
                finish(fig)
            return fig
    return wrapper


def scaled_figsize(size) -> tuple[float, float]:
    """``size`` (inches) as it is, or, inside ``style(venue=...)``, rescaled to the venue's chosen
    width with the same aspect (the height capped at 1.3 times the width, so a tall plot still fits
    a page)."""
    v = active_venue()
    if v is None:
        return tuple(size)
    w = v.width(getattr(_state, "width", "text"))
    return w, round(min(size[1] * w / size[0], 1.3 * w), 3)


def new_axes(ax, figsize):
    """``(figure, ax)``: the given Axes' figure, or a new figure of ``figsize`` inches (rescaled to
    the venue's width inside ``style(venue=...)``, see :func:`scaled_figsize`)."""
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=scaled_figsize(figsize), layout="constrained")


def finish(fig, min_size: float | None = None):
    """Raise every text of ``fig`` (labels, ticks, legends, annotations, colour bars) to at least
    ``min_size`` points (default: the active venue's small size, else :data:`MIN_FONT_PT`); the
    tick size is stored on each axis, so tick labels made later at draw time get it too.
    Returns ``fig``."""
    v = active_venue()
    floor = min_size if min_size is not None else max(v.small_size, MIN_FONT_PT) if v else MIN_FONT_PT
    tick = mpl.rcParams["xtick.labelsize"]
    tick = tick if isinstance(tick, (int, float)) else floor
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            sizes = [t.get_fontsize() for t in axis.get_ticklabels(which="both")]
            if not sizes or min(sizes) < floor:
                axis.set_tick_params(which="both", labelsize=max(floor, min(sizes, default=tick)))
    for text in fig.findobj(Text):
        if text.get_fontsize() < floor:
            text.set_fontsize(floor)
    return fig


def legend_outside(ax, handles=None, labels=None, *, where: str = "right", ncols: int | None = None, **kwargs):
    """A legend beside the axes (``where="right"``) or above them (``"top"``), never on the data.
    ``handles``/``labels`` default to the axes' own. Above the axes, the axes' title (if any) becomes
    the legend's title, so the two never overlap. Returns the Legend."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if where == "right":
        place = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=ncols or 1)
    elif where == "top":
        place = dict(loc="lower left", bbox_to_anchor=(0.0, 1.02), ncols=ncols or min(3, max(1, len(handles))))
        if ax.get_title() and "title" not in kwargs:
            kwargs["title"] = ax.get_title()
            kwargs.setdefault("alignment", "left")
            ax.set_title("")
    else:
        raise ValueError(f"where={where!r}: use 'right' or 'top'")
    return ax.legend(handles, labels, borderaxespad=0.0, **place, **kwargs)


def save(fig, path, **kwargs):
    """Save ``fig`` with the package style's export settings (fonts embedded, fixed dpi)."""
    with style():
        fig.savefig(path, **kwargs)
