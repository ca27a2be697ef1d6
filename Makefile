# `make run` and `make test` each set up everything they need on a fresh machine:
# a virtual environment in .venv with the package and its dev tools, and the data.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXPERIMENT ?= experiments/quickstart.yaml
LOCK := constraints.txt

.PHONY: run test test-fast gpu-check bench bench-baseline lint format docs docs-pictures data browser setup lock clean

# the experiment, then `verify` on its report: a sample of every stored record evaluated again
run: setup data
	$(BIN)/python -m robustbench_fmnist run $(EXPERIMENT) --download
	$(BIN)/python -m robustbench_fmnist verify reports/$$(sed -n 's/^name: *//p' $(EXPERIMENT) | head -1)

# unit and integration tests on every core (pytest-xdist; a group's tests share one worker) beside a
# local 2-CPU Ray cluster for the Ray executor's, then the regression benchmarks alone, on a quiet machine
PARALLEL := -n auto --dist loadgroup
test: setup data browser
	BIN=$(BIN) bash scripts/with-ray-cluster.sh $(BIN)/python -m pytest $(PARALLEL)
	$(BIN)/python -m pytest -m benchmark tests/benchmarks

# the edit loop: everything not marked slow or integration (no Ray cluster, no browser, no benchmarks)
test-fast: setup data
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow and not integration and not benchmark"

# on a machine with a CUDA GPU: CUDA property tests, bench on cuda, the lighting sweep on cuda vs cpu
gpu-check: setup data
	BIN=$(BIN) bash scripts/gpu-check.sh

# every machine kind is gated: by its own committed ratios, or where it has none by every recorded
# kind's (tests/benchmarks/gate.py: the envelope as each benchmark runs, the scaled bound at the end)
bench: setup data
	$(BIN)/python -m pytest -m benchmark tests/benchmarks

# on a new machine kind, or after an intended speed change: record this kind's ratios (median of three
# runs; the other kinds are kept), then commit tests/benchmarks/baseline.json
BENCH_REGRESSION := $(BIN)/python -m pytest -q -m benchmark tests/benchmarks/test_regression.py
bench-baseline: setup data
	$(BENCH_REGRESSION) --update-baseline reset
	$(BENCH_REGRESSION) --update-baseline append
	$(BENCH_REGRESSION) --update-baseline append

# the documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or reference fails it
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

# the docs' preview pictures: every perturbation at every severity, and the worst-case reference's spaces
# (tests/test_docs_pictures.py checks them against the registry and the code)
docs-pictures: setup data
	$(BIN)/python -m robustbench_fmnist -q preview all --output-dir docs/img/perturbations
	$(BIN)/python -m robustbench_fmnist -q preview experiments/worst_case.yaml --output-dir docs/img/adversaries

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

setup: $(STAMP)

# the exact versions of the reference environment (constraints.txt); pyproject.toml keeps open ranges
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -c $(LOCK) -e '.[dev,ray,e2cnn,onnx,keras,docs]'
	touch $@

# refresh the lock: resolve pyproject's open ranges in a fresh venv and freeze what pip chose
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --progress-bar off -e '.[dev,ray,e2cnn,onnx,keras,docs]'
	{ sed -n '1,2p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable | grep -vi '^robustbench'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

data:
	@bash scripts/install-data.sh

browser:
	@bash scripts/install-browser.sh

clean:
	rm -rf $(VENV) .lock-venv .pytest_cache .ruff_cache
