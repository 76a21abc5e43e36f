"""Widgets of the teaching notebook: answers that stay hidden until the reader asks, and a
``delta`` slider over the toy weights.

    >>> answer = reveal(lambda: 6 * 7, label="Show the answer")   # displays a button
    >>> answer.shown, answer.result
    (False, None)
    >>> answer.reveal().result                                       # what clicking the button does
    42
    >>> explorer = DeltaExplorer([0.26, 0.3, 0.6], [0.02, 0.1, 0.01], [0.0, 0.25, 0.5])
    >>> explorer.delta.value = 16.0
    >>> explorer.assignment.tolist()
    [0.5, 0.5, 0.5]

The numbers come from :func:`pwfn_viz.viz.teaching.greedy_assign`; the widgets only hold the state.
"""
from __future__ import annotations

import io
from typing import Callable

import ipywidgets as widgets
import torch

from ..viz.teaching import greedy_assign, plot_delta_assignment

__all__ = ["Answer", "reveal", "DeltaExplorer"]


class Answer(widgets.VBox):
    """A button and, once clicked (or :meth:`reveal` called), the answer: ``solution()`` runs then,
    not before, its printed output and return value show below the button (``result`` holds the
    value). Clicking again hides or shows it without running ``solution`` again."""

    def __init__(self, solution: Callable[[], object], label: str = "Show the answer"):
        self._solution, self._label = solution, label
        self.shown = self.computed = False
        self.result = None
        self.button = widgets.Button(description=label, icon="eye", layout=widgets.Layout(width="auto"))
        self.output = widgets.Output(layout=widgets.Layout(display="none"))
        self.button.on_click(lambda _: self.toggle())
        super().__init__([self.button, self.output])

    def reveal(self) -> "Answer":
        """Run the solution (the first time only) and show it; returns the Answer."""
        if not self.computed:
            with self.output:   # in a notebook: prints and the value appear inside the widget
                self.result = self._solution()
                from IPython import get_ipython
                if self.result is not None and get_ipython() is not None:   # a kernel shows it in the Output
                    from IPython.display import display
                    display(self.result)
            self.computed = True
        self.shown = True
        self.output.layout.display = None
        self.button.description, self.button.icon = "Hide the answer", "eye-slash"
        return self

    def hide(self) -> "Answer":
        """Hide the answer again (it is kept, not recomputed)."""
        self.shown = False
        self.output.layout.display = "none"
        self.button.description, self.button.icon = self._label, "eye"
        return self

    def toggle(self) -> "Answer":
        return self.hide() if self.shown else self.reveal()

    def _repr_mimebundle_(self, **kwargs):
        """The live button, and for a reader without a kernel a line saying what it hides."""
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = f"{self._label}: hidden until you run the notebook and click"
        return bundle


def reveal(solution: Callable[[], object], label: str = "Show the answer") -> Answer:
    """An :class:`Answer` for ``solution`` (a function of no arguments), hidden until asked."""
    if not callable(solution):
        raise TypeError(f"reveal wants a function to run when asked, got {type(solution).__name__}")
    return Answer(solution, label)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


class DeltaExplorer(widgets.VBox):
    """Drag ``delta`` (a log2 slider) and watch which centre each toy weight takes in one greedy
    pass (:func:`~pwfn_viz.viz.teaching.greedy_assign`): its allowance ``mu +- delta * sigma``,
    the arrow to its centre, and a line saying how many weights fit. ``assignment`` is the current
    answer as a tensor (NaN: no centre fits)."""

    def __init__(self, mu, sigma, centres, delta: float = 1.0, *, labels=None, draw: bool = True):
        self.mu = torch.as_tensor(mu, dtype=torch.float64).flatten()
        self.sigma = torch.as_tensor(sigma, dtype=torch.float64).flatten()
        self.centres = torch.as_tensor(centres, dtype=torch.float64).flatten()
        self.labels, self._draw = labels, draw
        self.delta = widgets.FloatLogSlider(value=delta, base=2, min=-3, max=5, step=0.25, description="delta",
                                            continuous_update=False, readout_format=".3g")
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png")
        self.assignment = greedy_assign(self.mu, self.sigma, self.centres, delta)
        self.delta.observe(lambda _: self._update(), "value")
        super().__init__([self.delta, self.summary, self.image])
        self._update()

    def _update(self) -> None:
        d = self.delta.value
        self.assignment = greedy_assign(self.mu, self.sigma, self.centres, d)
        fit = ~torch.isnan(self.assignment)
        used = sorted(set(self.assignment[fit].tolist()))
        self.summary.value = (f"delta = {d:.3g}: <b>{int(fit.sum())} of {fit.numel()}</b> weights fit a centre; "
                              f"centres used: {', '.join(f'{c:g}' for c in used) or 'none'}")
        if self._draw:
            self.image.value = _png(plot_delta_assignment(self.mu, self.sigma, self.centres, d, labels=self.labels))

    def _repr_mimebundle_(self, **kwargs):
        """The live slider and picture, and the picture itself (image/png) for a reader without
        the widget manager (GitHub, a notebook opened without a kernel)."""
        import base64
        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = f"DeltaExplorer: delta = {self.delta.value:g} (run the notebook to drag it)"
        if self.image.value:
            data["image/png"] = base64.b64encode(self.image.value).decode("ascii")
        return bundle
