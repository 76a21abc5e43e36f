# pwfn_viz: `make run` runs the demo, `make test` runs the whole test suite (pytest + notebooks).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: run test venv clean-venv browser-deps

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install -c constraints.txt -e ".[dev]" && touch $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/pwfn-viz run

# What tests/test_browser.py needs: Debian's chromium (installed when missing, as root) and the
# playwright Python package (never `playwright install`: its browser download cannot work here).
browser-deps: $(VENV)/.installed
	@if [ -x /usr/bin/chromium ]; then echo "browser-deps: /usr/bin/chromium present"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "browser-deps: /usr/bin/chromium is missing and this is not root: run" \
		"'apt-get update && apt-get install -y chromium' as root, or tests/test_browser.py fails"; fi
	@$(PY) -c "import playwright" 2>/dev/null || $(VENV)/bin/pip install -c constraints.txt playwright

# Notebooks run only when notebooks/ holds some: pytest exits 5 when it collects nothing.
test: $(VENV)/.installed browser-deps
	$(PY) -m pytest -n 2 tests
ifneq ($(strip $(NOTEBOOKS)),)
	$(PY) -m pytest --nbval-lax notebooks
else
	@echo "no notebooks/*.ipynb: notebook tests skipped"
endif

clean-venv:
	rm -rf $(VENV)
