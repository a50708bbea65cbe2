# `make run` and `make test` set up everything they need from a machine with only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NUMBA_CACHE_DIR := $(CURDIR)/.venv/numba-cache

.PHONY: run test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,plots,dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m refsim study all --quick --out reports/latest

test: $(STAMP)
	$(PY) -m ruff check formats refsim validation tests bench
	$(PY) -m mypy
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile --durations=15

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(PY) -m ruff check formats refsim validation tests bench
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench.quantize

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
