# nodemedic: `make run` runs the agent here; `make test` runs every check CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/nodemedic.yaml
# Debian packages: building systemd-python needs the first four; the tests need the rest.
APT_BUILD := python3-venv python3-dev libsystemd-dev pkg-config gcc
APT_TEST := e2fsprogs mount util-linux
export NODEMEDIC_PROMTOOL := $(CURDIR)/.cache/promtool/usr/bin/promtool

.PHONY: help run test check lint typecheck pytest bench venv clean

help:
	@echo "make run    - set up .venv and run the agent with $(CONFIG)"
	@echo "make test   - install test dependencies and run lint, types and the whole test suite"
	@echo "make bench  - run the benchmarks under bench/"

$(BIN)/.installed: pyproject.toml
	@scripts/ensure-apt $(APT_BUILD)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/nodemedic run --config $(CONFIG)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	@scripts/ensure-apt $(APT_TEST)
	@scripts/ensure-promtool
	$(BIN)/pytest

check: lint typecheck

test: lint typecheck pytest

bench: venv
	$(BIN)/python -m bench.agent_overhead

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache state
