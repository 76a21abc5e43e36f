"""The committed notebooks read where no kernel runs: every figure and every widget's view shows.

A reader without a kernel sees a notebook's saved outputs. JupyterLab shows an output with the
richest *safe* renderer while the notebook is not trusted (a downloaded notebook never is): a widget
view is not safe, so a widget's output shows its image/png, which every widget that draws a figure
carries (``Explorer._repr_mimebundle_``). GitHub and any renderer that runs no widget code show the
same image/png. nbviewer (nbconvert's HTML export with the widget manager loaded from a CDN) draws
the widget from the notebook's saved widget state instead: each ipympl canvas there holds its image
(``_data_url``) and its size in pixels (``_size``; without it the canvas is 0 x 0), each
``ipywidgets.Image`` its picture.

``test_saved_notebooks_without_kernel`` opens the committed notebooks in JupyterLab and headless
Chromium with no kernel (the server offers no kernelspec: JupyterLab asks which kernel, the test
answers "No Kernel") and checks what the page shows; the other tests check the saved files and the
HTML export without a browser. Screenshots of every figure output are kept in
test-artifacts/browser-saved/. ``make browser-deps`` installs Chromium and Playwright.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = ROOT / "test-artifacts" / "browser-saved"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
IMAGES = ("image/png", "image/svg+xml", "image/jpeg")
FIGURE_MODELS = {"MPLCanvasModel", "ImageModel"}   # widget models that show a picture


def _lab_helpers():
    """tests/test_browser.py (lab_server, CHROMIUM), loaded from its path as benchmarks do."""
    spec = importlib.util.spec_from_file_location("_browser_setup_saved", ROOT / "tests" / "test_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- what the saved files say a reader must see ---------------------------------------------------
def _widget_state(nb) -> dict:
    return nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def _models_under(state: dict, model_id: str) -> list[dict]:
    """The saved models of the widget ``model_id`` and of every widget it holds (children, toolbar, ...)."""
    seen, todo, found = set(), [model_id], []
    while todo:
        mid = todo.pop()
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        found.append(state[mid])
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state[mid]["state"]))
    return found


def _is_figure_widget(state: dict, model_id: str) -> bool:
    return any(m["model_name"] in FIGURE_MODELS for m in _models_under(state, model_id))


def _code_outputs(nb) -> list[list]:
    return [cell.outputs for cell in nb.cells if cell.cell_type == "code"]


def _shows_a_figure(output, state: dict) -> bool:
    """Whether ``output`` is a figure (an image) or the view of a widget that draws one."""
    data = output.get("data", {})
    if any(m in data for m in IMAGES):
        return True
    return WIDGET_VIEW in data and _is_figure_widget(state, data[WIDGET_VIEW]["model_id"])


def _figure_count(nb) -> int:
    state = _widget_state(nb)
    return sum(_shows_a_figure(o, state) for outputs in _code_outputs(nb) for o in outputs)


def _png_pixels(encoded: str):
    from PIL import Image
    return Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")


def _mean_difference(a, b) -> float:
    """Mean absolute difference of two RGB images' channels (0..255); palettes differ a little."""
    from PIL import ImageChops, ImageStat
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def _blank(image) -> bool:
    lo, hi = zip(*image.getextrema())
    return all(a == b for a, b in zip(lo, hi))


# --- without a browser ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(view_run):   # tests/conftest.py: a small digits run
    return view_run


def test_view_image_wraps_panels_into_rows_no_wider_than_the_output():
    from PIL import Image
    from pwfn_viz.widgets._common import VIEW_WIDTH, view_image
    colours = ["red", "green", "blue"]
    panels = [Image.new("RGB", (450, 300 + 10 * i), c) for i, c in enumerate(colours)]
    view = view_image(panels)
    assert view.width <= VIEW_WIDTH
    assert view.getpixel((10, 10)) == (255, 0, 0) and view.getpixel((view.width - 10, 10)) == (0, 128, 0)
    assert view.getpixel((10, view.height - 10)) == (0, 0, 255)          # the third panel wrapped below
    assert view.height == 310 + 8 + 320                                    # rows as tall as their tallest panel
    wide = view_image([Image.new("RGB", (VIEW_WIDTH + 200, 100), "red"), panels[0]])
    assert wide.size == (VIEW_WIDTH + 200, 100 + 8 + 300)                 # a wider panel: a row of its own


def test_widget_bundle_shows_its_view_where_widgets_cannot_run(run):
    """The display bundle: an image/png of the panels (legible at its own size: no wider than an
    output) and, in each canvas's state, its image with exactly the canvas's size."""
    from pwfn_viz.widgets import RoundExplorer
    from pwfn_viz.widgets._common import VIEW_WIDTH
    widget = RoundExplorer(run)
    data = widget._repr_mimebundle_()
    data = data[0] if isinstance(data, tuple) else data
    assert WIDGET_VIEW in data and data["text/plain"].startswith("RoundExplorer: ")
    view = _png_pixels(data["image/png"])
    assert 0 < view.width <= VIEW_WIDTH and not _blank(view)
    panels = [p for p in widget.panels if p is not None and p.data is not None]
    assert len(panels) == 3
    for panel in panels:
        image = _png_pixels(panel.canvas._data_url.split(",", 1)[1])
        assert image.size == tuple(panel.canvas._size) == tuple(round(v) for v in panel.fig.bbox.size)
        assert not _blank(image)
    first = _png_pixels(panels[0].canvas._data_url.split(",", 1)[1])
    assert _mean_difference(view.crop((0, 0, *first.size)), first) < 1.0   # the view is made of the panels


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_static_html_has_an_image_for_every_widget_figure(ipynb):
    """nbconvert's HTML export as a renderer that runs no widget code (GitHub) makes it: every
    output that is a figure or a figure-drawing widget holds an <img>."""
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    nb = nbformat.read(ipynb, as_version=4)
    config = Config()
    config.NbConvertBase.display_data_priority = [
        m for m in HTMLExporter().default_config["NbConvertBase"]["display_data_priority"] if m != WIDGET_VIEW]
    body, _ = HTMLExporter(config=config).from_notebook_node(nb)
    html_cells = BeautifulSoup(body, "html.parser").select(".jp-CodeCell")
    outputs = _code_outputs(nb)
    assert len(html_cells) == len(outputs)
    state, missing, widgets = _widget_state(nb), [], 0
    for i, (html_cell, cell_outputs) in enumerate(zip(html_cells, outputs)):
        shown = html_cell.select(".jp-OutputArea-child")
        assert len(shown) == len(cell_outputs), f"code cell {i}: outputs and HTML outputs differ"
        for html_output, output in zip(shown, cell_outputs):
            widgets += WIDGET_VIEW in output.get("data", {})
            if _shows_a_figure(output, state) and not html_output.find("img"):
                missing.append(f"code cell {i}: {sorted(output.get('data', {}))}")
    assert not missing, (f"{ipynb.name}: figure outputs without an image where widgets cannot run "
                         f"(the widget's display bundle needs an image/png): {missing}")


@pytest.mark.parametrize("ipynb", [p for p in NOTEBOOKS if _widget_state(nbformat.read(p, as_version=4))],
                         ids=lambda p: p.name)
def test_saved_widget_state_draws_every_figure(ipynb):
    """What nbviewer draws a widget from: every ipympl canvas under a displayed widget has a saved
    image of its saved size (a 0 x 0 canvas shows nothing) that is not blank; every
    ``ipywidgets.Image`` has its picture."""
    nb = nbformat.read(ipynb, as_version=4)
    state = _widget_state(nb)
    shown = {o.data[WIDGET_VIEW]["model_id"] for outputs in _code_outputs(nb) for o in outputs
             if WIDGET_VIEW in o.get("data", {})}
    assert shown <= set(state), f"{ipynb.name}: no saved state for {sorted(shown - set(state))[:3]}"
    problems = []
    for model_id in sorted(shown):
        for model in _models_under(state, model_id):
            name, saved = model["model_name"], model["state"]
            if name == "MPLCanvasModel":
                url, size = saved.get("_data_url") or "", tuple(saved.get("_size", (0, 0)))
                if not url.startswith("data:image/png;base64,"):
                    problems.append(f"{model_id}: canvas without a saved image")
                    continue
                image = _png_pixels(url.split(",", 1)[1])
                if min(size) <= 0 or image.size != size or _blank(image):
                    problems.append(f"{model_id}: canvas image {image.size}, size {size}, blank {_blank(image)}")
            elif name == "ImageModel":
                buffers = [b for b in model.get("buffers", ()) if b.get("path") == ["value"]]
                if not buffers or _blank(_png_pixels(buffers[0]["data"])):
                    problems.append(f"{model_id}: image widget without a picture")
    assert not problems, f"{ipynb.name}: {problems}"


# --- in a browser -----------------------------------------------------------------------------------
# Per output of the notebook shown: its images and canvases, their size in pixels and on the page,
# and whether their pixels differ at all (a blank or 0 x 0 picture shows nothing).
_OUTPUTS = """(panel) => [...panel.querySelectorAll('.jp-OutputArea-output')].map((out) => {
  const pictures = [...out.querySelectorAll('img, canvas')].map((el) => {
    const img = el.tagName === 'IMG';
    const w = img ? el.naturalWidth : el.width, h = img ? el.naturalHeight : el.height;
    const box = el.getBoundingClientRect();
    let drawn = false;
    if (w > 0 && h > 0) {
      const c = document.createElement('canvas');
      c.width = Math.min(w, 400); c.height = Math.min(h, 400);
      const ctx = c.getContext('2d');
      ctx.drawImage(el, 0, 0, c.width, c.height);
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      for (let i = 4; i < px.length && !drawn; i += 4)
        drawn = px[i] !== px[0] || px[i + 1] !== px[1] || px[i + 2] !== px[2] || px[i + 3] !== px[3];
    }
    return {tag: el.tagName, w, h, shown_w: box.width, shown_h: box.height, drawn,
            complete: !img || el.complete};
  });
  return {mime: out.getAttribute('data-mime-type'), pictures};
})"""


def _open_without_kernel(browser, base: str, token: str, name: str):
    """A fresh page showing notebook ``name``; answers JupyterLab's kernel dialog with "No Kernel"."""
    context = browser.new_context(viewport={"width": 1400, "height": 1800})   # the tallest view fits
    page = context.new_page()
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}")
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
    page.locator(".jp-Dialog button", has_text="No Kernel").click(timeout=30_000)
    return context, page


def _settled_outputs(page, timeout_s: float = 30.0) -> list[dict]:
    """The outputs of the notebook shown, once every image has loaded."""
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
    deadline = time.monotonic() + timeout_s
    while True:
        outputs = panel.evaluate(_OUTPUTS)
        if all(p["complete"] for o in outputs for p in o["pictures"]) or time.monotonic() > deadline:
            return outputs
        page.wait_for_timeout(250)


@pytest.mark.slow
def test_saved_notebooks_without_kernel(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: run `make browser-deps` (pip install playwright; "
                    "never `playwright install`)")
    lab = _lab_helpers()
    # no kernel starts by itself: no default kernel, and no kernelspec the notebooks could ask for
    lab.SETTINGS = {**lab.SETTINGS, "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
                    {"autoStartDefaultKernel": False, "windowingMode": "none"}}
    served = tmp_path / "notebooks"
    (served / ".lab" / "config").mkdir(parents=True)
    (served / ".lab" / "config" / "jupyter_server_config.json").write_text(
        json.dumps({"KernelSpecManager": {"allowed_kernelspecs": ["no-such-kernel"]}}))
    for ipynb in NOTEBOOKS:
        shutil.copy(ipynb, served / ipynb.name)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)   # screenshots of an earlier run would mislead
    ARTIFACTS.mkdir(parents=True)
    failures = []
    with lab.lab_server(served, ARTIFACTS / "jupyterlab.log") as (base, token), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=lab.CHROMIUM, headless=True,
                                    args=["--disable-dev-shm-usage", "--disable-gpu"])
        try:
            for ipynb in NOTEBOOKS:
                context, page = _open_without_kernel(browser, base, token, ipynb.name)
                try:
                    failures += _check_notebook(page, ipynb)
                except BaseException:
                    page.screenshot(path=str(ARTIFACTS / f"{ipynb.stem}_failure.png"))
                    raise
                finally:
                    context.close()
        finally:
            browser.close()
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}") as response:
            assert json.load(response) == [], "a kernel was started: the check is not without a kernel"
    assert not failures, "\n".join(failures)


def _check_notebook(page, ipynb: Path) -> list[str]:
    """What is wrong with ``ipynb`` as the page shows it (also saves a screenshot of each figure)."""
    outputs = _settled_outputs(page)
    name, problems = ipynb.name, []
    text = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first.inner_text()
    if "Error displaying widget" in text:
        problems.append(f"{name}: 'Error displaying widget' shown")
    errors = [o for o in outputs if o["mime"] == "application/vnd.jupyter.error"]
    if errors:
        problems.append(f"{name}: {len(errors)} error outputs")
    with_pictures = [o for o in outputs if o["pictures"]]
    bad = [o["pictures"] for o in with_pictures
           if not all(p["w"] > 0 and p["h"] > 0 and p["shown_w"] > 0 and p["shown_h"] > 0 and p["drawn"]
                      for p in o["pictures"])]
    if bad:
        problems.append(f"{name}: {len(bad)} outputs with an empty, blank or hidden picture: {bad[:3]}")
    nb = nbformat.read(ipynb, as_version=4)
    expected = _figure_count(nb)
    if len(with_pictures) != expected:
        no_png = [f"code cell {i}: {o.get('data', {}).get('text/plain', '')[:40]}"
                  for i, outputs in enumerate(_code_outputs(nb)) for o in outputs
                  if _shows_a_figure(o, _widget_state(nb)) and not any(m in o.get("data", {}) for m in IMAGES)]
        problems.append(f"{name}: {len(with_pictures)} outputs show a picture, the notebook holds {expected} "
                        f"figures or figure widgets; figure widgets without an image/png: {no_png}")
    shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
    for i, output in enumerate(outputs):
        if output["pictures"] or output["mime"] == "text/plain":
            shown.nth(i).scroll_into_view_if_needed()
            shown.nth(i).screenshot(path=str(ARTIFACTS / f"{ipynb.stem}_{i:02d}.png"))
    print(f"{name}: {len(with_pictures)} of {len(outputs)} outputs show a picture", file=sys.stderr)
    return problems
