# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG_HOST ?= 127.0.0.1
PG_PORT ?= 5432

.PHONY: install test test-django42 test-sqlite test-postgres lint demo docs docs-serve bench bench-quick browser-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## The whole suite: lint, then SQLite, then PostgreSQL, then the oldest supported Django.
test: install browser-deps lint test-sqlite test-postgres test-django42

test-sqlite: install
	UOW_DB=sqlite $(BIN)/pytest $(PYTEST_ARGS)

# PostgreSQL is required under CI=true; elsewhere an unreachable server skips this pass.
test-postgres: install
	@if $(BIN)/python -c "import socket; socket.create_connection(('$(PG_HOST)', $(PG_PORT)), 1)" 2>/dev/null; then \
		UOW_DB=postgres $(BIN)/pytest $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "PostgreSQL is not reachable on $(PG_HOST):$(PG_PORT) and CI=true" >&2; exit 1; \
	else \
		echo "SKIPPED the PostgreSQL pass: no server on $(PG_HOST):$(PG_PORT)"; \
	fi

# Django 4.2 LTS: the core, locking and relay tests on SQLite, in a venv of its own.
VENV42 := .venv-django42
$(VENV42)/.installed-stamp: pyproject.toml
	test -x $(VENV42)/bin/python || $(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q --upgrade pip
	$(VENV42)/bin/python -m pip install -q -e '.[dev]' 'Django>=4.2,<5.0'
	touch $@

test-django42: $(VENV42)/.installed-stamp
	UOW_DB=sqlite $(VENV42)/bin/pytest -q -m "not browser" $(DJANGO42_TESTS)

# Headless Chromium for the admin browser test (Debian's package; never a downloaded browser).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "Installing Debian's chromium for the admin browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

demo: install
	$(BIN)/python manage.py demo

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The peer libraries compared by `make bench` live in their own environment, never in .venv.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp

$(BENCH_STAMP): pyproject.toml benchmarks/requirements-peers.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -e '.[dev,bench]' -r benchmarks/requirements-peers.txt
	touch $(BENCH_STAMP)

bench-env: $(BENCH_STAMP)

bench: install bench-env
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks

# A hard timeout: SIGTERM unwinds the run (its subprocesses are stopped), SIGKILL 30 s later.
BENCH_QUICK_TIMEOUT ?= 900
bench-quick: install
	timeout --kill-after=30 $(BENCH_QUICK_TIMEOUT) $(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
