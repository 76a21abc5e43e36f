"""The widgets in a real browser: JupyterLab serves a generated notebook that shows every widget
and the dashboard for a small run; headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright's Python package) runs all cells, then works every control and checks that the panels
change, that all panels of a widget show the same round afterwards (each live canvas carries the
CSS class ``pwfn-at-round-<i>``), and that hovering and clicking a weight on a canvas names it.

One JupyterLab and one page serve the whole module. The page counts the pictures each ipympl canvas
draws (``benchmarks/bench_browser.py``'s counter, installed before JupyterLab loads). Screenshots
are kept in test-artifacts/browser/ (with JupyterLab's log). `make browser-deps` installs what this
needs: Debian's chromium and the playwright Python package (never `playwright install`: its browser
download cannot work here). The set-up: JupyterLab runs with a temporary config and settings
folder, its default kernel auto-started (otherwise a kernel dialog blocks "Run All") and its news
notification off; after "Run All Cells" the tests wait until every cell has run.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "02_step_through_rounds.ipynb"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SETTINGS = {  # JupyterLab user settings that keep dialogs and pop-ups out of the way
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True,
                                                                   "windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer {url} within {timeout:.0f} s; log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started, by its PID: terminate, then kill after a timeout."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def lab_server(served: Path, log: Path):
    """A JupyterLab on 127.0.0.1 (random free port, token) serving ``served``, with its own
    config/settings/workspace/IPython dirs under ``served``/.lab; yields (base URL, token)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser-deps` (installs Debian's chromium)"
    tmp = served / ".lab"
    for rel, value in SETTINGS.items():
        path = tmp / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "IPYTHONDIR": str(tmp / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "PWFN_FAST": "1"}
    env.pop("PWFN_RUN_DIR", None)
    token, port = secrets.token_hex(16), _free_port()
    # the venv's python: the notebook's python3 kernel then runs in the same environment
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True",
           f"--ServerApp.root_dir={served}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=served, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield base, token
    finally:
        _stop(proc)


def _wait_all_cells_ran(page, timeout_s: float = 180.0) -> int:
    """Wait until every code cell shows an execution count (none pending); returns how many."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        if prompts and all(p.strip().startswith("[") and p.strip()[1:-2].isdigit() for p in prompts):
            return len(prompts)
        page.wait_for_timeout(500)
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s: prompts {prompts}")


RUN_CONFIG = dict(model="digits_cnn", pretrain_epochs=2, first_round_epochs=0.1, epochs_per_round=0.2,
                  fractions=(0.5, 0.8, 1.0), threads=1)


def _bench():
    """benchmarks/bench_browser.py (the notebook it writes, the draw counter, settling)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_bench_browser", ROOT / "benchmarks" / "bench_browser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """One page with the generated notebook run to the end (every widget shown)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: run `make browser-deps` (pip install playwright; "
                    "never `playwright install`)")
    import pwfn_viz
    bench = _bench()
    tmp = tmp_path_factory.mktemp("jupyterlab")
    run_dir = tmp / "run"
    pwfn_viz.run(pwfn_viz.RunConfig(**RUN_CONFIG), out_dir=run_dir, progress=False, verbose=False)
    served = tmp / "notebooks"
    served.mkdir()
    nb = bench.notebook(str(run_dir), accuracy=False)
    (served / "widgets.ipynb").write_text(json.dumps(nb))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):   # screenshots of an earlier run would mislead
        old.unlink()
    with lab_server(served, ARTIFACTS / "jupyterlab.log") as (base, token), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--disable-dev-shm-usage", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.add_init_script(bench.DRAW_COUNTER)
        try:
            bench.open_notebook(pg, f"{base}/lab/tree/widgets.ipynb?token={token}", len(nb["cells"]),
                                sys.modules[__name__])
            assert pg.locator('[data-mime-type="application/vnd.jupyter.error"]').count() == 0
            pg.screenshot(path=str(ARTIFACTS / "01_notebook_ran.png"))
            pg.bench = bench
            yield pg
        except BaseException:
            pg.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def _widget(page, css: str):
    root = page.locator(css).first
    root.scroll_into_view_if_needed()
    page.bench.settle(page, root, 0, timeout=120, quiet=1.0)   # every panel drawn, idle
    return root


def _state(root) -> dict:
    """Pictures drawn so far per panel, and the round each panel shows (from its CSS class)."""
    return root.evaluate("""(root) => [...root.querySelectorAll('.pwfn-panel')].map(p => ({
        draws: [...p.querySelectorAll('canvas')].reduce((n, c) => n + (c.__pwfnDraws || 0), 0),
        round: ([...p.classList].find(c => c.startsWith('pwfn-at-round-')) || '').slice(14),
        label: ([...p.classList].find(c => c.startsWith('pwfn-panel-')) || '').slice(11)}))""")


def _changed(page, root, act) -> list:
    """Do ``act``, wait for the widget to settle; every panel must have drawn a new picture."""
    before = _state(root)
    t0 = page.bench.now(page)
    act()
    page.bench.settle(page, root, t0)
    after = _state(root)
    assert len(after) == len(before) and all(a["draws"] > b["draws"] for a, b in zip(after, before)), (before, after)
    assert page.locator(".pwfn-message.pwfn-error").count() == 0
    return after


def _slider(root, i: int = 0):
    return root.locator(".widget-slider .noUi-handle").nth(i)


def _press(page, root, key: str, i: int = 0) -> list:
    handle = _slider(root, i)
    handle.focus()
    return _changed(page, root, lambda: handle.press(key))


def _select(page, root, i: int, option: int) -> list:
    box = root.locator("select").nth(i)
    value = box.evaluate(f"e => e.options[{option}].value")
    return _changed(page, root, lambda: box.select_option(value))


def _hover_somewhere(page, panel, label) -> str:
    """Move the mouse over a canvas until the hover label names a weight; returns its text."""
    from playwright.sync_api import expect
    box = panel.locator("canvas").last.bounding_box()
    before = label.inner_text()
    for fy in (0.75, 0.7, 0.8, 0.65, 0.6, 0.85, 0.5):      # the cloud sits low: sigma is small for most
        for fx in (0.5, 0.45, 0.55, 0.4, 0.6, 0.35, 0.65, 0.3, 0.7):
            page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
            page.wait_for_timeout(120)
            if label.inner_text() != before:
                expect(label).to_contain_text("mu ")
                return label.inner_text()
    raise AssertionError("no weight found under the mouse")


def _check_round_explorer_controls_hover_and_click(page):
    from playwright.sync_api import expect
    root = _widget(page, ".pwfn-round-explorer")
    label = root.locator(".pwfn-round-label")
    expect(label).to_contain_text("round 0: ")
    assert [s["round"] for s in _state(root)] == ["0"] * 3
    assert root.locator(".jupyter-matplotlib-toolbar").count() == 3          # zoom and pan on each panel
    after = _press(page, root, "ArrowRight")
    expect(label).to_contain_text("round 1: ")
    assert [s["round"] for s in after] == ["1"] * 3                          # the panels agree
    root.screenshot(path=str(ARTIFACTS / "02_round_explorer_round1.png"))
    hover = root.locator(".pwfn-hover")
    text = _hover_somewhere(page, root.locator(".pwfn-panel-sigma-mu"), hover)
    assert re.search(r"\w+\.\w+\[[\d, ]+\]: mu -?[\d.e-]+, sigma [\d.e-]+, ", text), text
    assert "fixed in round" in text or "never fixed" in text
    page.mouse.down()
    page.mouse.up()
    expect(hover).to_contain_text("picked:")
    _select(page, root, 0, 1)                                                  # one layer
    expect(label).to_contain_text(re.compile(r"conv1\.weight: [\d.]+% fixed"))
    _select(page, root, 0, 0)


def _check_uncertainty_explorer_every_control(page):
    from playwright.sync_api import expect
    root = _widget(page, ".pwfn-uncertainty-explorer")
    for act in (lambda: _press(page, root, "ArrowLeft", 0),       # round
                lambda: _press(page, root, "ArrowRight", 1),      # weight
                lambda: _select(page, root, 1, 2),                # out channel
                lambda: _select(page, root, 2, 3),                # kernel tap
                lambda: _select(page, root, 0, 1)):               # layer
        rounds = {s["round"] for s in act()}
        assert len(rounds) == 1                                   # all panels at one round
    expect(root.locator(".pwfn-weight-label")).to_contain_text("[")
    root.screenshot(path=str(ARTIFACTS / "03_uncertainty_explorer.png"))


def _check_whatif_every_control(page):
    from playwright.sync_api import expect
    root = _widget(page, ".pwfn-whatif")
    table = root.locator("table").first
    for i in (0, 1, 2):                                           # delta, zero 2^-b, fraction
        before = table.inner_text()
        _press(page, root, "ArrowLeft", i)
        assert table.inner_text() != before
    plots = root.locator(".widget-checkbox input").nth(1)         # draw plots off: the panels go away
    plots.uncheck()
    expect(root.locator(".pwfn-panel").first).to_be_hidden()
    plots.check()
    expect(root.locator(".pwfn-panel").first).to_be_visible()
    evaluate = root.locator(".widget-checkbox input").nth(0)
    evaluate.check()
    expect(table).to_contain_text("top1", timeout=60_000)
    box = root.locator(".pwfn-panel-sigma-mu canvas").first.bounding_box()
    assert abs(box["width"] - 5.0 * 90) <= 1                      # shown at the figure's size: not stretched
    root.screenshot(path=str(ARTIFACTS / "04_whatif.png"))


def _check_compare_explorer_every_control(page):
    root = _widget(page, ".pwfn-compare-explorer")
    table = root.locator("table").first
    before = table.inner_text()
    _press(page, root, "ArrowRight")
    assert table.inner_text() != before
    before = table.inner_text()
    _select(page, root, 0, 2)
    assert table.inner_text() != before
    root.screenshot(path=str(ARTIFACTS / "05_compare_explorer.png"))


def _check_dashboard_one_slider_play_and_wrapping(page):
    from playwright.sync_api import expect
    root = _widget(page, ".pwfn-dashboard")
    after = _press(page, root, "ArrowRight")
    assert [s["round"] for s in after] == ["1"] * 6                # six panels, one round
    expect(root.locator(".pwfn-round-label")).to_contain_text("round 1: ")
    root.locator(".pwfn-play button").first.click()                # Play: the rounds advance by themselves
    expect(root.locator(".pwfn-round-label")).to_contain_text("round 2: ", timeout=30_000)
    page.bench.settle(page, root, 0, timeout=60)
    assert {s["round"] for s in _state(root)} == {"2"}
    root.screenshot(path=str(ARTIFACTS / "06_dashboard.png"))
    side = _widget(page, ".pwfn-side-by-side")
    assert [s["round"] for s in _press(page, side, "ArrowRight")] == ["1"] * 4
    page.set_viewport_size({"width": 1050, "height": 1000})        # narrow: the rows wrap, nothing is cut
    page.wait_for_timeout(500)
    root.scroll_into_view_if_needed()
    width = page.locator(".jp-Notebook").first.bounding_box()
    for canvas in root.locator(".pwfn-panel canvas").all():
        box = canvas.bounding_box()
        if box and box["width"] > 50:
            assert box["x"] + box["width"] <= width["x"] + width["width"] + 1
    root.screenshot(path=str(ARTIFACTS / "07_dashboard_narrow.png"))
    page.set_viewport_size({"width": 1400, "height": 1000})


def _check_dashboard_selection_is_linked(page):
    """A rectangle dragged over the round view's sigma against mu outlines the weights in the
    weight views too (their sigma against mu and position panels draw again)."""
    from playwright.sync_api import expect
    root = _widget(page, ".pwfn-dashboard")
    panel = root.locator(".pwfn-panel-sigma-mu").first
    panel.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    before = _state(root)
    box = panel.locator("canvas").last.bounding_box()
    t0 = page.bench.now(page)
    # from the top left of the axes (large sigma, small mu: empty, so the press picks nothing)
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.3 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.9 * box["width"], box["y"] + 0.85 * box["height"], steps=8)
    page.mouse.up()
    expect(root.locator(".pwfn-hover").first).to_contain_text("weights selected", timeout=30_000)
    expect(root.locator(".pwfn-hover").nth(1)).to_contain_text("selected:", timeout=30_000)
    page.bench.settle(page, root, t0 - 1e9, timeout=60)
    after = _state(root)
    drew = {a["label"] for a, b in zip(after, before) if a["draws"] > b["draws"]}
    assert {"sigma-mu", "position"} <= drew, (before, after)
    redrawn = [a["label"] for a, b in zip(after, before) if a["draws"] > b["draws"]]
    assert redrawn.count("sigma-mu") == 2                         # the round view's outline too
    root.screenshot(path=str(ARTIFACTS / "08_dashboard_selection.png"))


@pytest.mark.slow
def test_every_widget_in_jupyterlab(page):
    """One test, so that one JupyterLab serves every check even when the suite runs on several
    pytest-xdist workers (a module-scoped fixture is made once per worker)."""
    try:
        _check_round_explorer_controls_hover_and_click(page)
        _check_uncertainty_explorer_every_control(page)
        _check_whatif_every_control(page)
        _check_compare_explorer_every_control(page)
        _check_dashboard_one_slider_play_and_wrapping(page)
        _check_dashboard_selection_is_linked(page)
    except BaseException:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        raise
