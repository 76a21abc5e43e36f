"""The widgets in a real browser: JupyterLab serves a copy of notebooks/02_step_through_rounds,
headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's Python package) runs all
cells, moves RoundExplorer's round slider and checks that the round label and the plot change.

Screenshots are kept in test-artifacts/browser/ (with JupyterLab's log). `make browser-deps`
installs what this needs: Debian's chromium and the playwright Python package (never
`playwright install`: its browser download cannot work here). The set-up: JupyterLab runs with a
temporary config and settings folder, its default kernel auto-started (otherwise a kernel dialog
blocks "Run All") and its news notification off; after "Run All Cells" the test waits until every
cell has run before it moves the slider.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
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


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """A JupyterLab on 127.0.0.1 (random free port, token) serving a temporary copy of the
    notebook, with its own config/settings/workspace/IPython dirs; yields (base URL, token)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser-deps` (installs Debian's chromium)"
    tmp = tmp_path_factory.mktemp("jupyterlab")
    served = tmp / "notebooks"
    served.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, served / NOTEBOOK)
    for rel, value in SETTINGS.items():
        path = tmp / "settings" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "IPYTHONDIR": str(tmp / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "PWFN_FAST": "1"}
    env.pop("PWFN_RUN_DIR", None)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):   # screenshots of an earlier run would mislead
        old.unlink()
    log = ARTIFACTS / "jupyterlab.log"
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


@pytest.mark.slow
def test_round_explorer_in_jupyterlab(jupyterlab):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: run `make browser-deps` (pip install playwright; "
                    "never `playwright install`)")

    base, token = jupyterlab
    url = f"{base}/lab/workspaces/{uuid.uuid4().hex[:8]}/tree/{NOTEBOOK}?token={token}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--disable-dev-shm-usage", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(url)
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=90_000)
            page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
            # exactly "Run All Cells": "Restart Kernel and Run All Cells..." would open a dialog
            page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
            n_cells = _wait_all_cells_ran(page)
            assert n_cells == 6
            assert page.locator('[data-mime-type="application/vnd.jupyter.error"]').count() == 0

            explorer = page.locator(".pwfn-round-explorer").first
            label = explorer.locator(".pwfn-round-label")
            expect(label).to_contain_text("round 0: ", timeout=60_000)
            assert "% fixed" in label.inner_text()
            scatter, timeline = explorer.locator("img").nth(0), explorer.locator("img").nth(1)
            for img in (scatter, timeline):
                expect(img).to_have_attribute("src", re.compile("^(blob:|data:image/png)"))
                assert img.evaluate("e => e.naturalWidth") > 200        # a decoded picture
            progress = explorer.locator(".pwfn-progress")
            assert progress.count() == 1
            expect(progress).to_be_hidden(timeout=60_000)               # no update running
            layer = explorer.locator("select").first
            assert layer.evaluate("e => e.options[e.selectedIndex].text").replace("\xa0", " ") == "all layers"
            handle = explorer.locator(".widget-slider .noUi-handle").first
            assert handle.get_attribute("aria-valuenow").startswith("0")
            explorer.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "01_notebook_ran.png"))
            explorer.screenshot(path=str(ARTIFACTS / "02_round_explorer_round0.png"))
            label_before = label.inner_text()
            scatter_before, timeline_before = scatter.get_attribute("src"), timeline.get_attribute("src")

            handle.focus()
            handle.press("ArrowRight")
            expect(label).to_contain_text("round 1: ", timeout=60_000)
            expect(scatter).not_to_have_attribute("src", scatter_before, timeout=60_000)
            expect(timeline).not_to_have_attribute("src", timeline_before, timeout=60_000)
            expect(progress).to_be_hidden(timeout=60_000)
            assert handle.get_attribute("aria-valuenow").startswith("1")
            assert label.inner_text() != label_before
            assert page.locator(".pwfn-message.pwfn-error").count() == 0
            explorer.screenshot(path=str(ARTIFACTS / "03_round_explorer_round1.png"))
            page.screenshot(path=str(ARTIFACTS / "04_after_slider.png"), full_page=True)
            for name in ("pwfn-uncertainty-explorer", "pwfn-whatif", "pwfn-compare-explorer"):
                widget = page.locator(f".{name}").first
                widget.scroll_into_view_if_needed()
                expect(widget.locator("img").first).to_have_attribute("src", re.compile("."))
                widget.screenshot(path=str(ARTIFACTS / f"05_{name}.png"))
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
