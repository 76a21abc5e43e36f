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
"""
from __future__ import annotations

import contextlib
import functools
import threading

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns
from cycler import cycler

__all__ = ["COLOURS", "PALETTE", "ROLE", "SEQUENTIAL_CMAP", "DENSITY_CMAP", "style", "styled", "new_axes",
           "order_colour", "save"]

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
    "svg.fonttype": "path",       # SVGs render the same without the fonts installed
    "svg.hashsalt": "pwfn_viz",   # deterministic ids inside SVG files
    "legend.frameon": False,
    "axes.titlesize": "medium",
}
_state = threading.local()


def order_colour(order: int) -> str:
    """The colour of centres that need ``order`` powers of two (0: the zero centre)."""
    return _ORDER_COLOURS[max(0, min(int(order), len(_ORDER_COLOURS) - 1))]


@contextlib.contextmanager
def style(context: str = "paper", font_scale: float = 1.1, rc: dict | None = None):
    """Apply pwfn_viz's look (seaborn ``ticks`` style, ``context``, Okabe-Ito palette) inside a
    ``with`` block; the previous rcParams come back on exit. Nested calls are no-ops, so an
    outer ``with style("talk"):`` wins over the default every plot function applies."""
    if getattr(_state, "depth", 0):
        _state.depth += 1
        try:
            yield
        finally:
            _state.depth -= 1
        return
    _state.depth = 1
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
        if interactive is not None:
            mpl.interactive(interactive)


def styled(fn):
    """Decorator: run a plot function inside :func:`style`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)
    return wrapper


def new_axes(ax, figsize):
    """``(figure, ax)``: the given Axes' figure, or a new figure of ``figsize`` inches."""
    if ax is not None:
        return ax.figure, ax
    return plt.subplots(figsize=figsize, layout="constrained")


def save(fig, path, **kwargs):
    """Save ``fig`` with the package style's export settings (fonts embedded, fixed dpi)."""
    with style():
        fig.savefig(path, **kwargs)
