# Two commands for a new machine: `make run` and `make test`. Both create .venv and install from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run dev test lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/gateway serve --config config.yaml

dev: $(VENV)/.installed
	$(BIN)/gateway dev --config config.yaml

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

soak: $(VENV)/.installed-dev  # GATEWAY_SOAK_SECONDS=60 make soak for a short run (default 600)
	$(BIN)/python -m pytest -m soak -s tests/test_client_soak.py

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/routes_bench.py

clean:
	rm -rf $(VENV) .pytest_cache
