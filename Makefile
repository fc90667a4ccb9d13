# The few targets people use. Every install is the exact environment of requirements.lock
# (hashes checked); `make lock` regenerates it against the newest releases and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
UV_VERSION := 0.13.9
# uv does not read pip's configuration: hand it pip's find-links (where the CPU torch wheel lies).
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell pip config get global.find-links 2>/dev/null))
UV_FIND := $(if $(FIND_LINKS),--find-links $(FIND_LINKS),)
UV := $(BIN)/uv
# The lock is for this Python on Linux x86-64 (the CPU torch wheel is built for that).
COMPILE := $(UV) pip compile pyproject.toml --extra dev -c constraints.txt $(UV_FIND) \
	--generate-hashes --python-version 3.11 --quiet -o $(LOCK)
# e.g. make demo DEMO_FLAGS=--quick, or DEMO_FLAGS=/path/to/new/folder
DEMO_FLAGS ?=

.PHONY: install test-deps system-deps lock test test-fast lint format typecheck demo clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)

$(BIN)/lineage: $(LOCK) pyproject.toml | $(UV)
	$(UV) pip sync --python $(BIN)/python --require-hashes --compile-bytecode $(UV_FIND) $(LOCK)
	$(UV) pip install --python $(BIN)/python --no-deps --no-build-isolation -e .
	@touch $@

install: $(BIN)/lineage

# The tests run the registry on a real PostgreSQL that they start themselves (tests/pgcluster.py):
# the server binaries must be here. Debian's postgresql is installed when they are not (as root;
# otherwise the command to run is printed).
test-deps:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
		exit 0; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	else \
		echo "PostgreSQL server binaries missing: sudo apt-get install postgresql" >&2; exit 1; \
	fi

# Debian/Ubuntu programs lineage calls: Graphviz's dot draws the lineage picture, headless
# Chromium takes the MLflow UI screenshots (scripts/ui_screenshots.py and its test). Installs
# only what is missing (root, or sudo).
SYSTEM_PACKAGES := graphviz:dot chromium:chromium
system-deps:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do command -v $${p#*:} >/dev/null || echo $${p%%:*}; done)"; \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) \
			apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Newest releases within pyproject.toml's ranges (torch stays pinned by constraints.txt),
# then the whole suite: a lock that fails its tests must not be committed.
lock: | $(UV)
	$(COMPILE) --upgrade
	$(MAKE) test

test: install test-deps
	$(BIN)/pytest -n 2 -q

test-fast: install test-deps
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
