"""What every widget shares: loading a run without a traceback, messages, a busy indicator,
wrapping rows, figures rendered to PNG bytes (static exports), the images that stand in for a
widget where it cannot run (a saved notebook opened without a kernel), and the run's test loader.

The base class :class:`Explorer` is an ``ipywidgets.VBox``: a message line on top, the widget's own
controls (with the busy indicator beside them), then its live panels. Subclasses do their work inside
``with self.busy(n) as step:``; any exception raised there ends up as a message in the widget
(and in ``widget.error``), never as a traceback in the notebook.

    >>> png(Figure()).startswith(b"\\x89PNG")
    True
"""
from __future__ import annotations

import contextlib
import html
import io
import math
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from ..core.sigma_learning import ADVICE as SIGMA_ADVICE
from ..core.sigma_learning import describe as describe_learning
from ..core.sigma_learning import layers_learned
from ..core.clustering_cpu import torch_threads  # noqa: F401  (the widgets' thread setting)
from ..record.rundir import Run, load_run

__all__ = ["Explorer", "row", "png", "figure", "as_run", "incomplete_message", "test_loader", "table_html", "threads_for",
           "torch_threads"]

DPI = 90
ALL = "all"          # the dropdown value meaning "no restriction" (a None value shows as blank)
SMALL = 1_000_000   # below this many converted weights an update runs on one CPU thread
_STYLES = {"error": "#b00020", "warning": "#8a5300", "info": "#205080"}


def figure(width: float = 5.5, height: float = 3.8, nrows: int = 1, ncols: int = 1, **subplot_kw):
    """A Figure outside pyplot (never shown by the inline backend, nothing to close) and its axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, **subplot_kw)
    return fig, axes


def png(fig) -> bytes:
    """The figure as PNG bytes (the value of an ``ipywidgets.Image``); closes pyplot figures."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    import matplotlib.pyplot as plt
    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)
    return buf.getvalue()


def table_html(frame, max_rows: int = 40, float_format: str = "{:.4g}", height: str = "240px") -> str:
    """A DataFrame as a scrollable HTML table (the first ``max_rows`` rows, with a note if cut)."""
    shown = frame.head(max_rows)
    note = f"<p><i>first {max_rows} of {len(frame)} rows</i></p>" if len(frame) > max_rows else ""
    body = shown.to_html(index=False, float_format=lambda v: float_format.format(v), border=0)
    return f'<div style="max-height:{height}; overflow:auto; font-size:12px">{body}</div>{note}'


def as_run(run) -> Run:
    """A :class:`Run` from a Run or a run directory (raises FileNotFoundError with the fix)."""
    if isinstance(run, Run):
        return run
    if isinstance(run, (str, Path)):
        return load_run(run)
    raise TypeError(f"expected a pwfn_viz Run or a run directory, got {type(run).__name__}; "
                    "load one with pwfn_viz.load_run(path)")


def incomplete_message(run: Run) -> str:
    """'' for a complete run; otherwise what is there and how to finish it."""
    if run.complete:
        return ""
    total = len(run.config.get("fractions", ()))
    done = len(run.rounds)
    there = "no round yet: nothing to show" if done == 0 else f"showing rounds 0..{done - 1}"
    return (f"{run.path} is an incomplete run: {done} of {total} rounds recorded ({there}). "
            f"Continue it with `pwfn-viz run --resume {run.path}`.")


def test_loader(run: Run, data=None, batch_size: int = 512):
    """The test split of the run's dataset (rebuilt from its config unless ``data`` is given)."""
    from ..data.datasets import create_dataset, make_loader
    if data is None:
        cfg = run.config
        by_model = {"model_name": cfg["model"]} if cfg["dataset"] == "imagefolder" else {}
        data = create_dataset(cfg["dataset"], root=cfg.get("data_root"), image_size=cfg.get("image_size"),
                              in_chans=cfg.get("in_chans"), seed=cfg.get("seed", 0), **by_model)
    return make_loader(data.test, batch_size=max(batch_size, run.config.get("batch_size", 0)))


def held_batches(loader, limit: int):
    """The loader's ``(x, y)`` batches in a list when they fit in ``limit`` bytes, else the loader.

    A widget that evaluates the same test split at every update (WhatIf, CompareExplorer) keeps
    its batches: the data pipeline (per-sample transforms, collation) runs once. A test loader
    yields the same batches at every pass (no shuffling, no augmentation), so the numbers do not
    change. When the first batch times the loader's length exceeds ``limit``, reading stops there.
    """
    batches, size = [], 0
    for x, y in loader:
        size += x.nbytes + y.nbytes
        if size > limit or (not batches and size * (len(loader) if hasattr(loader, "__len__") else 1) > limit):
            return loader
        batches.append((x, y))
    return batches


def threads_for(run: Run | None) -> int | None:
    """CPU threads for a widget update, by the pipeline's rule: the run's ``threads`` setting if
    given, else 1 for networks under a million converted weights (many small tensor operations,
    where thread start-up costs more than it saves; on a busy 2-core machine several times
    more), else None (leave torch's setting)."""
    if run is None:
        return None
    if run.config.get("threads"):
        return int(run.config["threads"])
    n = run.meta.get("n_converted") or sum(math.prod(s) for s in run.meta["tensors"].values())
    return 1 if n < SMALL else None


# What a reader without a running widget sees: per panel, a PNG of exactly the size of its live
# canvas (the canvas draws its saved image 1:1), and, for the whole view, those PNGs in wrapping
# rows no wider than VIEW_WIDTH pixels (about a notebook's output width, so that the image is shown
# at its own size: text as legible as in the live widget). A plot has few colours besides its
# antialiasing: a 256-colour palette PNG looks the same as the full-colour one at under half the bytes.
VIEW_WIDTH = 1000
PALETTE_COLOURS = 256
_GAP = 8             # pixels between the panels of the view image


def _palette_png(image) -> bytes:
    """``image`` (PIL) as an optimised palette PNG."""
    from PIL import Image
    buf = io.BytesIO()
    image.convert("RGB").quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT).save(buf, "png", optimize=True)
    return buf.getvalue()


def panel_image(panel):
    """The panel as its canvas shows it now (PIL image, RGB): drawn onto a new figure of its size
    and resolution, animated artists included."""
    from PIL import Image
    dpi = panel.fig.dpi
    fig = Figure(figsize=panel.fig.get_size_inches(), dpi=dpi, layout="constrained")
    panel.copy_onto(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return Image.open(buf).convert("RGB")


def view_image(images, max_width: int = VIEW_WIDTH):
    """``images`` (PIL) side by side in rows no wider than ``max_width`` (an image wider than that
    gets a row of its own), as the widget's rows wrap in a narrow window."""
    from PIL import Image
    rows, row = [], []
    for image in images:
        if row and sum(i.width + _GAP for i in row) + image.width > max_width:
            rows.append(row)
            row = []
        row.append(image)
    rows.append(row)
    width = max(sum(i.width for i in r) + _GAP * (len(r) - 1) for r in rows)
    height = sum(max(i.height for i in r) for r in rows) + _GAP * (len(rows) - 1)
    view = Image.new("RGB", (width, height), "white")
    y = 0
    for r in rows:
        x = 0
        for image in r:
            view.paste(image, (x, y))
            x += image.width + _GAP
        y += max(i.height for i in r) + _GAP
    return view


def static_images(panels) -> dict:
    """Base64 palette PNGs of ``panels`` as shown now: {"view": the panels that have drawn
    something, in wrapping rows (:func:`view_image`), "panels": one per such panel, in order, each
    the size of its live canvas}. Raises ValueError when no panel has drawn anything."""
    import base64
    shown = [p for p in panels if p is not None and p.data is not None]
    if not shown:
        raise ValueError("nothing is shown yet: there is no view to render")
    images = [panel_image(p) for p in shown]

    def encode(image) -> str:
        return base64.b64encode(_palette_png(image)).decode("ascii")
    return {"view": encode(view_image(images)), "panels": [encode(i) for i in images]}


def layer_options(run: Run, allow_all: bool = True) -> list:
    """(label, value) pairs for a layer dropdown: "all layers" (value ALL) then every tensor."""
    names = [(f"{n}  {tuple(s)}", n) for n, s in run.meta["tensors"].items()]
    return ([("all layers", ALL)] if allow_all else []) + names


def unknown_layer(run: Run, name, allow_all: bool = True) -> str:
    names = list(run.meta["tensors"])
    return (f"layer {name!r} does not exist in this run; choose one of: {', '.join(names)}"
            + (" (or None for all layers)" if allow_all else ""))


def sigma_learning_html(run: Run, round_index: int, layer: str | None = None) -> str:
    """One line: has the sigma this round clustered with learned, for ``layer`` (None: the network)?
    Styled as a warning, with what to change, when it is essentially its initialisation."""
    table = run.sigma_learning_layers(round_index)
    row = table[table["layer"] == (layer or "all")].iloc[0].to_dict()
    where = layer or "all layers"
    text = html.escape(f"{where}, round {run.rounds[round_index].index}: {describe_learning(row)}"
                       + ("" if layer else f" ({layers_learned(table)} layers)"))
    learned = row["sigma_learned"]
    if learned is not None and not pd.isna(learned) and not bool(learned):
        return (f'<div class="pwfn-sigma-learning" style="color:{_STYLES["warning"]}"><b>sigma not learned:</b> '
                f'{text}<br><small>{html.escape(SIGMA_ADVICE)}</small></div>')
    return f'<div class="pwfn-sigma-learning" style="color:{_STYLES["info"]}">{text}</div>'


def row(*children, **layout) -> widgets.Box:
    """A row that wraps below its width (flex-wrap): panels go under each other in a narrow window."""
    box = widgets.Box(list(children), layout=widgets.Layout(display="flex", flex_flow="row wrap",
                                                              align_items="flex-start", **layout))
    box.add_class("pwfn-row")
    return box


class Explorer(widgets.VBox):
    """Base of the widgets: ``message`` (HTML) on top, then the controls with one busy indicator
    beside them (``busy_indicator``, shown while an update runs), then the panels.

    ``error`` holds the last exception caught while updating (None after a good update).
    ``css_class`` names the widget in the page (for styling and browser tests). ``panels`` are
    its live figures (see :mod:`pwfn_viz.widgets._live`); :meth:`save` writes them to one file."""

    css_class = "pwfn-widget"

    def __init__(self, **kwargs):
        self.message = widgets.HTML(layout=widgets.Layout(margin="0 0 4px 0"))
        self.busy_indicator = widgets.HTML("", layout=widgets.Layout(visibility="hidden", min_width="150px"))
        self.busy_indicator.add_class("pwfn-busy")
        self.error: Exception | None = None
        self.run: Run | None = None
        self.panels: list = []
        self.updates = 0          # updates run (the tests count them: coalescing, caching)
        self._notice = ""
        super().__init__(**kwargs)
        self.add_class("pwfn-widget")
        self.add_class(self.css_class)

    def _compose(self, controls, *body):
        """The widget's children: the message, ``controls`` (a list, in one wrapping row with the
        busy indicator) and ``body``."""
        self.children = (self.message, row(*controls, self.busy_indicator, align_self="stretch"), *body)

    def save(self, path, title: str | None = None) -> str:
        """Write the panels as shown now to ``path`` (.pdf, .svg or .png) through matplotlib.

        >>> w.save("round3.pdf")      # doctest: +SKIP
        """
        from ._live import save_panels
        return save_panels(self.panels, path, self.__class__.__name__ if title is None else title)

    def _repr_mimebundle_(self, **kwargs):
        """The live widget, plus what shows where it cannot run: a PNG of the current view (the
        output's image/png: GitHub, a JupyterLab that has not trusted the notebook, any reader
        without the widget manager) and each canvas's image and size in its saved state (the
        widget drawn from the notebook's saved state, e.g. by nbviewer, shows it; without a size
        a saved canvas is 0 x 0 pixels)."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        # instead of ipywidgets' repr of every child: what a reader without images sees
        data["text/plain"] = f"{type(self).__name__}: {self.message_text or 'a live view'} (run the notebook to use it)"
        shown = [p for p in self.panels if p is not None and p.data is not None]
        try:
            images = static_images(shown)
        except Exception:   # nothing drawn yet, or a panel that cannot draw: the live widget alone
            return bundle
        for panel, encoded in zip(shown, images["panels"]):
            canvas = getattr(panel, "canvas", None)
            if canvas is not None and hasattr(canvas, "_data_url"):
                ratio = getattr(canvas, "device_pixel_ratio", 1) or 1   # as ipympl sizes a canvas
                width, height = panel.fig.bbox.size
                canvas._size = (round(width / ratio), round(height / ratio))
                canvas._data_url = "data:image/png;base64," + encoded
        data["image/png"] = images["view"]
        return bundle

    # messages -------------------------------------------------------------------------------
    def show_message(self, text: str, kind: str = "error") -> None:
        """Show ``text`` above the widget (kind: error, warning or info); '' clears it."""
        if not text:
            self.message.value = ""
            return
        colour = _STYLES.get(kind, _STYLES["error"])
        self.message.value = (f'<div class="pwfn-message pwfn-{kind}" style="color:{colour}; '
                              f'white-space:normal"><b>{kind}:</b> {html.escape(text)}</div>')

    @property
    def message_text(self) -> str:
        """The message shown, as plain text ('' when none)."""
        import re
        return html.unescape(re.sub(r"<[^>]+>", "", self.message.value))

    def _set_notice(self, text: str) -> None:
        """A lasting warning (e.g. an incomplete run) shown whenever no error is."""
        self._notice = text
        self.show_message(text, "warning")

    def _open_run(self, run) -> bool:
        """Read ``run`` into ``self.run``; on a bad directory or a run without rounds show why,
        disable the controls and return False."""
        self.run = None
        try:
            self.run = as_run(run)
        except Exception as exc:
            self.error = exc
            self.show_message(f"{type(exc).__name__}: {exc}")
            self._disable()
            return False
        self._set_notice(incomplete_message(self.run))
        if not self.run.rounds:
            self._disable()
            return False
        return True

    # busy indicator -------------------------------------------------------------------------
    @contextlib.contextmanager
    def busy(self, n_steps: int = 1):
        """Show the busy indicator while the block runs; yields ``step(label)``, which names the
        part running. An exception inside becomes the widget's message (kept in ``self.error``).
        The block runs with :func:`threads_for` the widget's run."""
        self.busy_indicator.value = '<span style="color:#205080">&#8987; updating ...</span>'
        self.busy_indicator.layout.visibility = "visible"

        def step(label: str):
            self.busy_indicator.value = f'<span style="color:#205080">&#8987; {html.escape(label)} ...</span>'

        try:
            with torch_threads(threads_for(self.run)):
                yield step
            self.error = None
            self.show_message(self._notice, "warning")
        except Exception as exc:   # shown in the widget instead of a traceback
            self.error = exc
            self.show_message(f"{type(exc).__name__}: {exc}")
        finally:
            self.updates += 1
            self.busy_indicator.layout.visibility = "hidden"
