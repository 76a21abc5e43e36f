"""Benchmark: the widgets' latency in a real browser, from an input to the last panel updated.

JupyterLab (started as ``tests/test_browser.py`` starts it: temporary settings, token, free port)
serves a generated notebook that shows every widget and the dashboard for one run; headless
Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright's Python package) runs it and then
works each control, ``--repeats`` times. The page counts every picture an ipympl canvas draws
(a wrapper around ``CanvasRenderingContext2D.drawImage``, installed before JupyterLab loads); the
latency of one input is from just before the key press or selection to the last picture drawn by
any panel of the widget, once the widget's busy indicator is hidden and no picture has come for
``--settle`` seconds. "burst" presses the slider key three times in a row (the updates that queued
are coalesced: the time is to the last picture of the last round).

    .venv/bin/python -m benchmarks.bench_browser --run /tmp/w_run             # the digits run
    .venv/bin/python -m benchmarks.bench_browser --run /tmp/w1m/run --only RoundExplorer

Prints one line per control: median, min and max latency in seconds, and the load average.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Counts the pictures every <canvas> in the page receives: ipympl draws each new frame of a figure
# with drawImage into the canvas the panel shows.
DRAW_COUNTER = """
(() => {
  const original = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const result = original.apply(this, args);
    const c = this.canvas;
    c.__pwfnDraws = (c.__pwfnDraws || 0) + 1;
    c.__pwfnAt = performance.now();
    return result;
  };
})();
"""

# The newest picture time (ms) over the panels under `root`, and whether its busy indicator shows.
PANEL_STATE = """
(root) => {
  let last = 0, oldest = Infinity;
  for (const p of root.querySelectorAll('.pwfn-panel')) {
    if (!p.offsetParent) continue;   // a hidden panel draws nothing
    let newest = 0;
    for (const c of p.querySelectorAll('canvas')) newest = Math.max(newest, c.__pwfnAt || 0);
    last = Math.max(last, newest);
    oldest = Math.min(oldest, newest);
  }
  const busy = [...root.querySelectorAll('.pwfn-busy')].some(b => getComputedStyle(b).visibility !== 'hidden');
  return {last, oldest, busy, now: performance.now()};
}
"""


def _lab_helpers():
    """The JupyterLab set-up of the browser tests (one definition of it)."""
    spec = importlib.util.spec_from_file_location("_browser_setup", ROOT / "tests" / "test_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CELLS = {"RoundExplorer": "RoundExplorer(run)", "UncertaintyExplorer": "UncertaintyExplorer(run)",
         "WhatIf": "WhatIf(run, accuracy={accuracy})", "CompareExplorer": "CompareExplorer(run)",
         "dashboard": "run.dashboard()", "side_by_side": "side_by_side(run, pwfn_viz.load_run({other!r}))"}


def notebook(run_dir: str, other_dir: str | None = None, accuracy: bool = True, only=None) -> dict:
    """A notebook showing the widgets ``only`` (default all) for ``run_dir``, the side-by-side view
    with ``other_dir`` (default the same run)."""
    cells = ["import pwfn_viz\nfrom pwfn_viz.widgets import (CompareExplorer, RoundExplorer, UncertaintyExplorer, "
             f"WhatIf, side_by_side)\nrun = pwfn_viz.load_run({run_dir!r})"]
    cells += [src.format(accuracy=accuracy, other=other_dir or run_dir) for name, src in CELLS.items()
              if only is None or name in only]
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                       "outputs": [], "source": src} for i, src in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def settle(page, root, since: float, timeout: float = 60.0, quiet: float = 0.4) -> float:
    """Wait until every visible panel of the widget under ``root`` has drawn a picture after
    ``since`` (page clock, ms), the widget is idle and no picture has arrived for ``quiet``
    seconds; returns the time (s) from ``since`` to the last picture."""
    deadline = time.monotonic() + timeout
    s = {}
    while time.monotonic() < deadline:
        s = root.evaluate(PANEL_STATE)
        if not s["busy"] and s["oldest"] > since and s["now"] - s["last"] > quiet * 1000:
            return (s["last"] - since) / 1000
        page.wait_for_timeout(25)
    raise TimeoutError(f"the widget did not finish its update: {s}")


def now(page) -> float:
    return page.evaluate("performance.now()")


def press(page, root, slider_index: int, key: str, times: int = 1) -> float:
    """Press ``key`` ``times`` on a slider (the other arrow when the slider has no room that way)."""
    handle = root.locator(".widget-slider .noUi-handle").nth(slider_index)
    now_, low, high = (float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemin", "aria-valuemax"))
    # room for `times` steps: a step is 1 on an integer slider, and small on the others
    step = times * (1 if float(high).is_integer() and float(low).is_integer() else (high - low) / 100)
    if key == "ArrowRight" and now_ + step > high:
        key = "ArrowLeft"
    elif key == "ArrowLeft" and now_ - step < low:
        key = "ArrowRight"
    handle.focus()
    t0 = now(page)
    for _ in range(times):
        handle.press(key)
    return settle(page, root, t0)


def select(page, root, select_index: int, option_index: int) -> float:
    box = root.locator("select").nth(select_index)
    value = box.evaluate(f"e => e.options[{option_index}].value")
    t0 = now(page)
    box.select_option(value)
    return settle(page, root, t0)


def click(page, root, selector: str) -> float:
    t0 = now(page)
    root.locator(selector).first.click()
    return settle(page, root, t0)


# (widget class in the page, control name, action(page, root, repetition) -> seconds). A slider moves
# one way each repetition (a new value every time: nothing cached), or back and forth ("revisit":
# the values shown before come from the widget's cache); a dropdown walks through its options.
def _slider(i, times=1, revisit=False):
    def act(page, root, r):
        key = "ArrowLeft" if revisit and r % 2 else "ArrowRight"
        return press(page, root, i, key, times)
    return act


def _dropdown(i):
    def act(page, root, r):
        n, now_ = root.locator("select").nth(i).evaluate("e => [e.options.length, e.selectedIndex]")
        return select(page, root, i, (now_ + 1) % n)
    return act


CONTROLS = {
    "RoundExplorer": (".pwfn-round-explorer", [("round slider", _slider(0)), ("round, revisit", _slider(0, revisit=True)),
                                              ("3 quick presses", _slider(0, 3, revisit=True)), ("layer", _dropdown(0))]),
    "UncertaintyExplorer": (".pwfn-uncertainty-explorer", [("round slider", _slider(0)), ("weight", _slider(1)),
                                                          ("out channel", _dropdown(1)), ("kernel tap", _dropdown(2)),
                                                          ("layer", _dropdown(0))]),
    "WhatIf": (".pwfn-whatif", [("delta", _slider(0)), ("zero 2^-b", _slider(1)), ("fraction", _slider(2))]),
    "CompareExplorer": (".pwfn-compare-explorer", [("k", _slider(0)), ("init", _dropdown(0))]),
    "dashboard": (".pwfn-dashboard", [("round slider", _slider(0)), ("3 quick presses", _slider(0, 3, revisit=True))]),
}


def open_notebook(page, url: str, n_cells: int, helpers) -> None:
    import re
    from playwright.sync_api import expect
    page.goto(url)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
    expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
    assert helpers._wait_all_cells_ran(page, timeout_s=600) == n_cells


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory to show")
    parser.add_argument("--other", help="second run for the side-by-side view (default: the same run)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", nargs="*", default=list(CONTROLS), choices=list(CONTROLS))
    parser.add_argument("--no-accuracy", action="store_true", help="WhatIf without evaluating the network")
    args = parser.parse_args(argv)
    helpers = _lab_helpers()
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        nb = notebook(str(Path(args.run).resolve()), args.other and str(Path(args.other).resolve()),
                      accuracy=not args.no_accuracy, only=args.only)
        (Path(tmp) / "bench.ipynb").write_text(json.dumps(nb))
        with helpers.lab_server(Path(tmp), Path(tmp) / "lab.log") as (base, token), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=helpers.CHROMIUM, headless=True,
                                        args=["--disable-dev-shm-usage", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(DRAW_COUNTER)
            open_notebook(page, f"{base}/lab/tree/bench.ipynb?token={token}", len(nb["cells"]), helpers)
            # every widget's first pictures (requested by the browser when it shows them) come first
            settle(page, page.locator("body"), 0, timeout=600, quiet=1.5)
            print(f"run {args.run}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
            print(f"{'widget':22s} {'control':18s} {'median':>7s} {'min':>6s} {'max':>6s}  load")
            for name in args.only:
                selector, controls = CONTROLS[name]
                root = page.locator(selector).first
                root.scroll_into_view_if_needed()
                settle(page, root, 0, timeout=120)
                for control, action in controls:
                    times = [action(page, root, r) for r in range(args.repeats)]
                    print(f"{name:22s} {control:18s} {statistics.median(times):7.3f} {min(times):6.3f} "
                          f"{max(times):6.3f}  {os.getloadavg()[0]:.2f}", flush=True)
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
