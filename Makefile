# The few targets people use. Every install goes through constraints.txt (torch==2.13.0).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv does not read pip's configuration: hand it pip's find-links (where the CPU torch wheel lies).
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell pip config get global.find-links 2>/dev/null))
UV_FLAGS := -c constraints.txt $(if $(FIND_LINKS),--find-links $(FIND_LINKS),)
# e.g. make demo DEMO_FLAGS=--quick, or DEMO_FLAGS=/path/to/new/folder
DEMO_FLAGS ?=

.PHONY: install test test-fast lint format typecheck demo clean

$(BIN)/lineage: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt uv
	$(BIN)/uv pip install --compile-bytecode --python $(BIN)/python $(UV_FLAGS) -e '.[dev]'
	@touch $@

install: $(BIN)/lineage

test: install
	$(BIN)/pytest -n 2 -q

test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy lineage

demo: install
	$(BIN)/lineage demo $(DEMO_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
