# pwfn_viz: `make run` runs the demo, `make test` runs the whole test suite (pytest + notebooks).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: run test venv clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -c constraints.txt -e ".[dev]" && touch $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/pwfn-viz run

# Notebooks run only when notebooks/ holds some: pytest exits 5 when it collects nothing.
test: $(VENV)/.installed
	$(PY) -m pytest -n 2 tests
ifneq ($(strip $(NOTEBOOKS)),)
	$(PY) -m pytest --nbval-lax notebooks
else
	@echo "no notebooks/*.ipynb: notebook tests skipped"
endif

clean-venv:
	rm -rf $(VENV)
