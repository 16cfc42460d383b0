# Set-up and checks. `make run` and `make test` work on a fresh clone: they
# create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest fuzz bench bench-peer clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/tracehouse serve

test: $(VENV)/.test-installed lint typecheck pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

# Two workers, each with its own embedded ClickHouse: most tests wait on a
# server, so two share the two cores well (10.4 min alone, 6.8 min so).
pytest: $(VENV)/.test-installed
	$(BIN)/pytest -n 2

# The fuzz suite of `make test`, run far longer (random, not derandomized).
FUZZ_EXAMPLES ?= 3000

fuzz: $(VENV)/.test-installed
	TRACEHOUSE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/test_fuzz.py --timeout=3600

# The benchmarks of benchmarks/RESULTS.md; each prints its figures and the
# command that reproduces them. The query benchmark builds 1M runs first.
bench: $(VENV)/.test-installed
	$(BIN)/python -m benchmarks.ingest_bench
	$(BIN)/python -m benchmarks.insert_bench
	$(BIN)/python -m benchmarks.live_bench
	$(BIN)/python -m benchmarks.query_bench --runs 1000000

# The same ingest load against Arize Phoenix, side by side. Phoenix is pinned
# and lives in a virtual environment of its own: it is no project dependency.
# `make bench-peer PEER_ARGS=--quick` for a one-minute smoke run.
PHOENIX_VERSION := 20.26.1
PEER_VENV := benchmarks/.peer-venv
PEER_ARGS ?=

$(PEER_VENV)/.phoenix-$(PHOENIX_VERSION):
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --quiet arize-phoenix==$(PHOENIX_VERSION)
	touch $@

bench-peer: $(VENV)/.test-installed $(PEER_VENV)/.phoenix-$(PHOENIX_VERSION)
	$(BIN)/python -m benchmarks.peer --phoenix-venv $(PEER_VENV) $(PEER_ARGS)

clean:
	rm -rf $(VENV) $(PEER_VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
