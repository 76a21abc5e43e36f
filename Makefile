# pwfn_viz: `make run` runs the demo, `make test` runs the whole test suite (pytest + notebooks),
# `make notebooks` regenerates notebooks/*.ipynb from their sources notebooks/*.py, `make
# notebooks-outputs` executes them in place (the committed files hold their outputs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
NOTEBOOK_SOURCES := $(wildcard notebooks/*.py)

.PHONY: run test venv clean-venv browser-deps notebooks notebooks-outputs

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -c constraints.txt -e ".[dev,baselines,hf,export]" && touch $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/pwfn-viz run --preset digits-demo

# What tests/test_browser.py needs: Debian's chromium (installed when missing, as root) and the
# playwright Python package (never `playwright install`: its browser download cannot work here).
browser-deps: $(VENV)/.installed
	@if [ -x /usr/bin/chromium ]; then echo "browser-deps: /usr/bin/chromium present"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "browser-deps: /usr/bin/chromium is missing and this is not root: run" \
		"'apt-get update && apt-get install -y chromium' as root, or tests/test_browser.py fails"; fi
	@$(PY) -c "import playwright" 2>/dev/null || $(VENV)/bin/pip install -c constraints.txt playwright

# Each notebook's source is notebooks/<name>.py in jupytext's py:percent format: edit that, then
# run this. --update keeps what the .ipynb holds beyond its cells' inputs (cell ids), so a source
# that did not change leaves its .ipynb untouched; tests/test_notebooks_sync.py checks both agree.
notebooks: $(VENV)/.installed
	$(VENV)/bin/jupytext --update --to ipynb $(NOTEBOOK_SOURCES)

# The committed notebooks hold their outputs (figures, tables, and the widgets' state, which holds
# each live figure's last image), so that GitHub, nbviewer and a JupyterLab without a kernel show
# them: run this after `make notebooks` when a notebook or what it shows changed (a few minutes).
# A widget's output carries a PNG of its view and each of its canvases the image of its own size
# (pwfn_viz/widgets/_common.py); tests/test_browser_saved.py checks what a reader sees without a kernel.
notebooks-outputs: $(VENV)/.installed
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 \
		--ExecutePreprocessor.store_widget_state=True --ExecutePreprocessor.record_timing=False $(NOTEBOOKS)

# Everything under tests/, the tests marked slow (> ~5 s each) included: no -m filter here (for a
# quick local pass, `$(PY) -m pytest -n 2 -m "not slow" tests`). Notebooks run only when
# notebooks/ holds some: pytest exits 5 when it collects nothing.
test: $(VENV)/.installed browser-deps
	$(PY) -m pytest -n 2 tests
ifneq ($(strip $(NOTEBOOKS)),)
	$(PY) -m pytest --nbval-lax notebooks
else
	@echo "no notebooks/*.ipynb: notebook tests skipped"
endif

clean-venv:
	rm -rf $(VENV)
