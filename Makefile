# `make run` and `make test` set up everything they need from a machine with only Python.
# They install the versions pinned in constraints.txt (every package, transitive ones included);
# `make test-latest` runs the same checks against the newest releases in a venv of its own.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
EXTRAS := test,plots,dev
LATEST := .venv-latest
LATEST_PY := $(LATEST)/bin/python
LINT_PATHS := formats refsim validation tests bench scripts examples
FAST_TIER := -m "not slow" -q -n 2 --dist loadfile --durations=15
# torch is pinned to 2.13.0 in BOTH venvs: it is the CPU build lying on disk; any newer torch
# (or a range admitting one) makes pip download a CUDA build of several GB. pyproject.toml pins
# it as well; test-latest repeats the pin so that an upgrade can never move it.
TORCH := torch==2.13.0
# Numba's disk cache checks only the file a kernel is defined in, not the kernels of other
# modules compiled into it (refsim.core inside accum_core's, lane inside blocks', ...): the cache
# directory is keyed by the content of every kernel source, so an edit never meets a stale kernel.
KERNEL_HASH := $(shell cat refsim/*.py refsim/kernels/*.py refsim/backends/*.py | cksum | cut -d' ' -f1)
export NUMBA_CACHE_DIR := $(CURDIR)/$(VENV)/numba-cache/$(KERNEL_HASH)

.PHONY: run study test test-latest pins test-slow lint bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) --build-constraint $(CONSTRAINTS) \
		-e ".[$(EXTRAS)]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m refsim study all --quick --out reports/latest

# The decisive studies (docs/studies.md): accumulation, tolerance, causal, allocate in their
# standard grids; measured time in docs/results/README.md; resumes from the cache.
study: $(STAMP)
	$(PY) -m refsim study all --standard --workers 2 --out docs/results --cache reports/cache-standard

test: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) scripts/typecheck.py
	$(PY) -m pytest $(FAST_TIER)

# The same checks on the newest release of every dependency (torch excepted, see TORCH), in
# .venv-latest, upgraded at every run; its versions are written to .venv-latest/versions.txt.
# A peer library that changed behaviour shows here first (tests/validation/test_suite.py names
# the row of validation/adapters.py KNOWN to update).
test-latest: export NUMBA_CACHE_DIR := $(CURDIR)/$(LATEST)/numba-cache/$(KERNEL_HASH)
test-latest:
	test -x $(LATEST_PY) || $(PYTHON) -m venv $(LATEST)
	$(LATEST_PY) -m pip install --quiet --upgrade pip
	$(LATEST_PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[$(EXTRAS)]" \
		"$(TORCH)"
	$(LATEST_PY) -m pip freeze --all --exclude-editable > $(LATEST)/versions.txt
	$(LATEST_PY) -m ruff check $(LINT_PATHS)
	$(LATEST_PY) scripts/typecheck.py
	$(LATEST_PY) -m pytest $(FAST_TIER)

# Rewrite constraints.txt from a venv's `pip freeze` (default .venv; FROM=.venv-latest after a
# green test-latest), keeping its comment lines and dropping local labels (torch's +cpu).
FROM := $(VENV)
pins:
	test -x $(FROM)/bin/python
	{ grep '^#' $(CONSTRAINTS); $(FROM)/bin/python -m pip freeze --all --exclude-editable \
		| sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

lint: $(STAMP)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) scripts/typecheck.py

bench: $(STAMP)
	$(PY) -m bench.quantize

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache .hypothesis .mypy-tree
