# `make run` and `make test` each set up everything they need on a fresh machine:
# a virtual environment in .venv with the package and its dev tools, and the data.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXPERIMENT ?= experiments/lighting.yaml

.PHONY: run test lint format data browser setup clean

run: setup data
	$(BIN)/python -m robustbench_fmnist run $(EXPERIMENT) --download

test: setup data browser
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[dev]'
	touch $@

data:
	@bash scripts/install-data.sh

browser:
	@bash scripts/install-browser.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
