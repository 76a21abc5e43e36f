"""The notebooks' single source: each notebooks/<name>.py (jupytext py:percent) is the source of
notebooks/<name>.ipynb, which `make notebooks` regenerates from it. Regenerating each .ipynb from
its .py gives the committed file's cells (types, sources, cell metadata such as the hidden
solution cells' tags), every .ipynb has a source and every source a .ipynb, and the committed
.ipynb files hold their outputs: every code cell executed in order, no error, the figures as
images and the widgets' state saved (`make notebooks-outputs`), so that a notebook opened where
no kernel runs (GitHub, nbviewer, JupyterLab before a kernel starts) shows what it computed."""
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))


# cell metadata that executing a notebook may add; not part of its source
_RUN_METADATA = {"execution", "scrolled", "collapsed"}


def _cells(nb) -> list[tuple[str, str, dict]]:
    return [(cell.cell_type, cell.source, {k: v for k, v in cell.metadata.items() if k not in _RUN_METADATA})
            for cell in nb.cells]


def test_every_notebook_has_a_source_and_every_source_a_notebook():
    assert IPYNBS, "notebooks/ holds no .ipynb"
    assert [p.stem for p in SOURCES] == [p.stem for p in IPYNBS], (
        "each notebooks/<name>.ipynb is generated from notebooks/<name>.py: add the missing file "
        "(`jupytext --to py:percent X.ipynb` for a source, `make notebooks` for the .ipynb)")


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_ipynb_matches_its_py_percent_source(source):
    generated = jupytext.read(source)
    assert generated.metadata["jupytext"]["text_representation"]["format_name"] == "percent", (
        f"{source.name} is not in jupytext's py:percent format")
    ipynb = source.with_suffix(".ipynb")
    committed = nbformat.read(ipynb, as_version=4)
    assert _cells(generated) == _cells(committed), (
        f"{ipynb.name} differs from its source {source.name}: edit the .py and run `make notebooks`")
    assert committed.metadata["kernelspec"] == generated.metadata["kernelspec"]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_committed_notebooks_hold_their_outputs(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert None not in counts and counts == sorted(counts), (
        f"{ipynb.name} is not stored executed top to bottom: run `make notebooks-outputs`")
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{ipynb.name} holds an error output: {errors[0].get('ename')}"
    shown = [o for cell in code for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
    assert any("image/png" in o.data or "image/svg+xml" in o.data or WIDGET_VIEW in o.data for o in shown), (
        f"{ipynb.name} shows no figure")
    views = {o.data[WIDGET_VIEW]["model_id"] for o in shown if WIDGET_VIEW in o.data}
    if views:   # every widget view can be drawn from the saved state (no "model not found")
        state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        assert views <= set(state), f"{ipynb.name}: widget state not saved for {sorted(views - set(state))[:3]}"
