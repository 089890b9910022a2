# Two entry points: `make sweep` (the main job) and `make test` (the whole suite);
# `make check` is the fast selection to run while working (under a minute).
# Each creates .venv and installs the project on first use. Tests run in one process per
# CPU (pytest-xdist); every test keeps its stores, databases and ports to itself, so a process
# that runs out of work takes tests from another's queue (worksteal: the slow sweeps do not
# pile up at the end of one process).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: sweep test check lint bench ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --progress-bar off -e .
	touch $@

$(VENV)/.test: pyproject.toml constraints-test.txt | $(BIN)/python
	$(BIN)/pip install --progress-bar off -e '.[test,gp]' -c constraints-test.txt
	touch $@ $(VENV)/.base

sweep: $(VENV)/.base
	$(BIN)/sweep run studies/homework-grid-5k.toml

PARALLEL := -n auto --dist worksteal

test: $(VENV)/.test
	$(BIN)/python -m pytest $(PARALLEL)

# The model, the study files, samplers, reports, refine, the bad-input corpus, the import rules and
# the docs' links: no whole sweeps.
CHECK := tests/core tests/sweep/test_spec.py tests/sweep/test_samplers.py tests/sweep/test_report.py \
	tests/sweep/test_refine.py tests/sweep/test_pareto.py tests/sweep/test_bad_input.py \
	tests/sweep/test_layering.py tests/test_docs.py

check: lint
	$(BIN)/python -m pytest -q $(PARALLEL) -m "not slow and not postgres" $(CHECK)

# ruff's lint rules and formatter (pyproject.toml), over the whole tree.
lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_core.py

ui: $(VENV)/.base
	$(BIN)/sweep ui
