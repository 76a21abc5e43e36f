"""The notebooks' single source: each notebooks/<name>.py (jupytext py:percent) is the source of
notebooks/<name>.ipynb, which `make notebooks` regenerates from it. Regenerating each .ipynb from
its .py gives the committed file's cells (types, sources, cell metadata such as the hidden
solution cells' tags), every .ipynb has a source and every source a .ipynb, and the committed
.ipynb files carry no outputs."""
from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str, dict]]:
    return [(cell.cell_type, cell.source, dict(cell.metadata)) for cell in nb.cells]


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


@pytest.mark.parametrize("ipynb", IPYNBS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{ipynb.name} holds outputs"
