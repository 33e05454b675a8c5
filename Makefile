# Cohort — the two commands are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: setup system demo test lint typecheck pytest bench bench-quick clean

setup: $(STAMP) system

# Machine packages the tests need: PostgreSQL's binaries (the portal's tests start their own server)
# and Debian's chromium (Playwright's browser download does not work here). Each is installed only
# when missing, so this costs two lookups on a ready machine; installing needs root, as in CI.
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
system:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ echo "installing postgresql"; apt-get update -qq && $(APT_INSTALL) --no-install-recommends postgresql >/dev/null; }
	@command -v initdb >/dev/null || ln -sf /usr/lib/postgresql/*/bin/{initdb,pg_ctl,postgres} /usr/local/bin/
	@test -x /usr/bin/chromium || \
		{ echo "installing chromium"; apt-get update -qq && $(APT_INSTALL) chromium >/dev/null; }

# torch==2.13.0 goes first: it resolves to the CPU wheel on local disk, whereas letting opacus pull
# torch in would download a CUDA build of several GB (STACK-NOTES).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $@

demo: setup
	$(BIN)/cohort-demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy crypto hospitals platform bench

pytest: setup
	$(BIN)/pytest

test: lint typecheck pytest

# Benchmarks: one table per comparison, var/bench/results.json and var/bench/report.md (plots).
bench: setup
	$(BIN)/python -m bench.run --out var/bench

# The same suites at small sizes, in about a minute (CI runs it through tests/bench to prove they work).
bench-quick: setup
	$(BIN)/python -m bench.run --quick --out var/bench

clean:
	rm -rf var .mypy_cache .pytest_cache .ruff_cache
