# Two commands for a new machine: `make run` and `make test`. Both create .venv and install from pyproject.toml.
# CONFIG picks the config: `make run CONFIG=examples/openai.yaml` (its key from the environment or a .env beside it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml

.PHONY: install run dev check routes test lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed  # then `. .venv/bin/activate` puts `gateway` on PATH

run: $(VENV)/.installed
	$(BIN)/gateway serve --config $(CONFIG)

dev: $(VENV)/.installed
	$(BIN)/gateway dev --config $(CONFIG)

check: $(VENV)/.installed
	$(BIN)/gateway check --config $(CONFIG)

routes: $(VENV)/.installed
	$(BIN)/gateway routes --config $(CONFIG)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

soak: $(VENV)/.installed-dev  # GATEWAY_SOAK_SECONDS=60 make soak for a short run (default 600)
	$(BIN)/python -m pytest -m soak -s tests/test_client_soak.py

# About 5 minutes: the gateway against a naive aiohttp proxy, what each protection and the access log and metrics
# cost, then 10 against 1,000 routes (README, Performance). The load is wrk (apt-get install wrk); without it a
# Python client stands in and the figures are not comparable.
bench: $(VENV)/.installed
	@command -v wrk >/dev/null || echo "make bench: wrk is not installed (sudo apt-get install wrk): using a Python load instead, whose figures are not comparable with the README's"
	$(BIN)/python bench/proxy_bench.py
	$(BIN)/python bench/features_bench.py
	$(BIN)/python bench/routes_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
