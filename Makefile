# Two entry points (see README): `make app` and `make test`. Both set up .venv first: `make
# app` with what the product needs, `make test` with the test tools (the [test] extra) on top.
PYTHON ?= python3.11
# Where torch comes from. Empty: pip's configured index. On a machine whose pip reaches the public
# PyPI, that is the CUDA build (several GB); for the CPU-only build run
#   make app TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
VENV := .venv
BIN := $(VENV)/bin
APP_STAMP := $(VENV)/.installed-app
TEST_STAMP := $(VENV)/.installed-test

.PHONY: app test setup lint serve screenshot clean

$(APP_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on this project's machines.
	$(BIN)/pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/pip install --quiet -e .
	touch $(APP_STAMP)

$(TEST_STAMP): pyproject.toml $(APP_STAMP)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(TEST_STAMP)

setup: $(TEST_STAMP)

app: $(APP_STAMP)
	$(BIN)/mri-tumor app

serve: $(APP_STAMP)
	$(BIN)/mri-tumor serve

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

test: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Regenerates docs/app-screenshot.png (needs /usr/bin/chromium, as the browser test).
screenshot: $(TEST_STAMP)
	$(BIN)/python scripts/screenshot.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache artifacts
