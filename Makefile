# Two commands: `make repro` (set-up + the pipeline on the default synthetic data) and
# `make test` (set-up + the whole test suite). Set-up is idempotent: the venv is rebuilt only
# when the requirements change.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1
# One id groups the MLflow runs of one `make repro` (plain `dvc repro` derives one itself).
export SEMKNOBS_EXECUTION_ID ?= make-$(shell date -u +%Y%m%dT%H%M%S)-$(shell echo $$$$)

.PHONY: setup repro science test test-fast bench compare ui lint format dag clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $@

repro: $(STAMP)
	test -d .dvc || dvc init -q
	dvc repro
	dvc metrics show

# The study suite: the pipeline on every study of studies/ (the default in this workspace, the
# others in .science/<study>), then one fidelity table (metrics/science.json, docs/science.md).
science: repro
	$(BIN)/python -m semknobs.science studies/default.yaml studies/other_law.yaml studies/confounded.yaml studies/interaction.yaml

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --out benchmarks/results.json --table benchmarks/results.md

ui: $(STAMP)
	$(BIN)/python -m semknobs.cli ui --host 127.0.0.1 --port $${PORT:-5000}

# The last executions side by side (N of them, default 5): the promotion gates' metrics and the
# params that differ, metrics as rows and executions as columns, at most 100 characters wide.
compare: $(STAMP)
	$(BIN)/semknobs compare --last $(or $(N),5)

dag: $(STAMP)
	dvc dag

lint: $(STAMP)
	$(BIN)/ruff check src pipelines tests benchmarks
	$(BIN)/ruff format --check src pipelines tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src pipelines tests benchmarks
	$(BIN)/ruff check --fix src pipelines tests benchmarks

clean-venv:
	rm -rf $(VENV)

