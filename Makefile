# The README's whole set-up: `make test` and `make demo` each build .venv from nothing if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo bench lint clean

# Re-install only when pyproject.toml changed (the stamp is older than it).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check cityseg_fast tests benchmarks
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/cityseg demo

bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-enable --benchmark-only

lint: $(STAMP)
	$(VENV)/bin/ruff check cityseg_fast tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
