# Two entry points: `make sweep` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs the project on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: sweep test bench ui

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: pyproject.toml constraints-test.txt | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,gp]' -c constraints-test.txt
	touch $@ $(VENV)/.base

sweep: $(VENV)/.base
	$(BIN)/sweep run studies/homework-grid-5k.toml

test: $(VENV)/.test
	$(BIN)/python -m pytest

bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench_core.py

ui: $(VENV)/.base
	$(BIN)/sweep ui
