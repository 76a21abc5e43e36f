"""Live panels of codebooks: shared values and how many weights hold each (one stem series per
method) and per-layer weight error (grouped bars). The count axis is linear unless the counts
span decades; bars start at zero; legends sit outside the data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.collections import LineCollection

from ..viz.style import COLOURS
from ._data import count_scale
from ._live import Panel

__all__ = ["Codebooks", "ValueCountsPanel", "LayerErrorPanel"]

METHOD_COLOURS = (COLOURS["vermillion"], COLOURS["blue"], COLOURS["green"], COLOURS["purple"])


@dataclass
class Codebooks:
    """Per series label: (values, counts); ``title`` above the panel."""
    series: dict
    title: str = ""
    round_index: int | None = None


class ValueCountsPanel(Panel):
    """Shared values (x) and the weights holding each (y), one stem series per entry (at most
    ``n_series``, set at construction)."""

    label = "codebook"

    def build(self):
        ax = self.ax = self.fig.subplots()
        n = self.options.get("n_series", 2)
        self.stems = [ax.add_collection(LineCollection([], colors=METHOD_COLOURS[i], alpha=0.6, lw=1))
                      for i in range(n)]
        self.heads = [ax.plot([], [], "o^sd"[i % 4], color=METHOD_COLOURS[i], ms=3.5, label=" ")[0] for i in range(n)]
        ax.set_xlabel("shared value")
        ax.set_ylabel("weights holding it")
        self.legend = ax.legend(fontsize="x-small", loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2,
                                frameon=False, borderaxespad=0)
        self.title = self.fig.suptitle("", fontsize="small")

    def update(self, data: Codebooks):
        ax = self.ax
        items = list(data.series.items())
        counts_all = np.concatenate([np.asarray(c, float) for _, (_, c) in items]) if items else np.zeros(0)
        scale = count_scale(counts_all)
        base = 0.8 if scale == "log" else 0.0
        ax.set_yscale(scale)
        xs = []
        for i, (stem, head) in enumerate(zip(self.stems, self.heads)):
            if i < len(items):
                label, (values, counts) = items[i]
                values, counts = np.asarray(values, float), np.asarray(counts, float)
                stem.set_segments([[(v, base), (v, c)] for v, c in zip(values, counts)])
                head.set_data(values, counts)
                self.legend.get_texts()[i].set_text(f"{label}: {len(values)} values")
                xs.append(values)
            else:
                stem.set_segments([])
                head.set_data([], [])
                self.legend.get_texts()[i].set_text("")
        x = np.concatenate(xs) if xs else np.zeros(1)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        pad = 0.04 * (hi - lo) if hi > lo else 0.01
        ax.set_xlim(lo - pad, hi + pad)
        top = float(counts_all.max()) if counts_all.size else 1.0
        ax.set_ylim((0.8, top * 1.6) if scale == "log" else (0, top * 1.08 + 0.5))
        self.title.set_text(data.title)


class LayerErrorPanel(Panel):
    """Relative weight error per layer, grouped bars from zero, one colour per method. Data: a
    table with columns layer, method, weight_error; the layers and methods are fixed at the first
    update (the bars then change height only)."""

    label = "layer-error"

    def build(self):
        self.ax = self.fig.subplots()
        self.bars = None
        self.ax.set_ylabel("||w - w_start|| / ||w_start||")
        self.title = self.fig.suptitle("weight error per layer", fontsize="small")

    def _build_bars(self, pivot):
        ax = self.ax
        methods, layers = list(pivot.columns), list(pivot.index)
        width = 0.8 / max(1, len(methods))
        pos = np.arange(len(layers))
        self.bars = {}
        for i, m in enumerate(methods):
            self.bars[i] = ax.bar(pos + (i - (len(methods) - 1) / 2) * width, np.zeros(len(layers)), width,
                                  color=METHOD_COLOURS[i % len(METHOD_COLOURS)], label=m)
        ax.set_xticks(pos, layers, rotation=40, ha="right", fontsize="x-small")
        self.legend = ax.legend(fontsize="x-small", loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=2,
                                frameon=False, borderaxespad=0)

    def update(self, layers):
        pivot = layers.pivot(index="layer", columns="method", values="weight_error")
        pivot = pivot.reindex(list(dict.fromkeys(layers["layer"])))
        pivot = pivot[list(dict.fromkeys(layers["method"]))]
        if self.bars is None:
            self._build_bars(pivot)
        for i, m in enumerate(pivot.columns):
            for rect, h in zip(self.bars[i], pivot[m].to_numpy(float)):
                rect.set_height(h)
            self.legend.get_texts()[i].set_text(m)
        top = float(np.nanmax(pivot.to_numpy(float))) if pivot.size else 1.0
        self.ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
