# cdrflow install contract: setup (idempotent), demo, test, bench.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

# Re-installs the venv only when pyproject.toml changed (or the venv is missing); the
# servers script checks for itself and does nothing when ClickHouse and the broker are there.
setup: $(STAMP)
	@bash scripts/setup-servers.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The streaming pipeline on the embedded stack; leaves it up (`.venv/bin/cdrflow down`).
demo: setup
	$(BIN)/cdrflow demo

# Four pytest-xdist workers, a test file each at a time (the integration tests mostly wait
# on the broker: on these 2 cores 4 workers took 9.4-9.8 min, 2 workers 13 min on a busier
# machine the same day; 5.7 min once the embedded S3 server lost its 40 ms a request,
# 2026-12-07); each worker that runs a test of
# tests/integration starts its own embedded stack (a session fixture, on ports of its own).
test: setup
	$(BIN)/python -m pytest -n 4 --dist loadfile --durations=25

# Every bench one after the other, then one table: figures, floors measured in the same run,
# ratios, targets, and the change from the previous run (bench/summary.py).
bench: setup
	$(BIN)/python bench/summary.py

clean:
	rm -rf demo-data .pytest_cache .hypothesis
