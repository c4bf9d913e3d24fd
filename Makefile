# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PG_HOST ?= 127.0.0.1
PG_PORT ?= 5432
MARIADB_HOST ?= 127.0.0.1
MARIADB_PORT ?= 3306
# Branch coverage of the library, reported (no threshold) by the SQLite pass (the PostgreSQL
# pass runs the same code plus its server-only tests; measuring twice costs CI minutes).
COV_ARGS := --cov=django_uow --cov-branch --cov-report=term:skip-covered
# What the older supported Django releases run: the suite on SQLite without the browser and
# Celery-worker tests, which keeps `make test` (and CI) within its time budget.
OLD_DJANGO_MARKERS ?= not browser and not celery

.PHONY: install test test-django42 test-django51 test-sqlite test-postgres test-mariadb test-wheel \
	lint demo docs docs-serve bench bench-quick browser-deps mariadb-deps clean

$(STAMP): pyproject.toml | mariadb-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: mariadb-deps $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

## The whole suite: lint, then SQLite, PostgreSQL and MariaDB, then the older supported Djangos,
## then the built wheel.
test: install browser-deps lint test-sqlite test-postgres test-mariadb test-django42 test-django51 \
	test-wheel

test-sqlite: install
	UOW_DB=sqlite $(BIN)/pytest $(COV_ARGS) $(PYTEST_ARGS)

# PostgreSQL is required under CI=true; elsewhere an unreachable server skips this pass.
test-postgres: install
	@if $(BIN)/python -c "import socket; socket.create_connection(('$(PG_HOST)', $(PG_PORT)), 1)" 2>/dev/null; then \
		UOW_DB=postgres $(BIN)/pytest $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "PostgreSQL is not reachable on $(PG_HOST):$(PG_PORT) and CI=true" >&2; exit 1; \
	else \
		echo "SKIPPED the PostgreSQL pass: no server on $(PG_HOST):$(PG_PORT)"; \
	fi

# MariaDB, like PostgreSQL: required under CI=true, skipped elsewhere when unreachable.
test-mariadb: install
	@if $(BIN)/python -c "import socket; socket.create_connection(('$(MARIADB_HOST)', $(MARIADB_PORT)), 1)" 2>/dev/null; then \
		UOW_DB=mariadb UOW_MARIADB_HOST=$(MARIADB_HOST) UOW_MARIADB_PORT=$(MARIADB_PORT) \
			$(BIN)/pytest -m "not browser" $(PYTEST_ARGS); \
	elif [ "$$CI" = "true" ]; then \
		echo "MariaDB is not reachable on $(MARIADB_HOST):$(MARIADB_PORT) and CI=true" >&2; exit 1; \
	else \
		echo "SKIPPED the MariaDB pass: no server on $(MARIADB_HOST):$(MARIADB_PORT)"; \
	fi

# The older supported Django releases, each on SQLite in a venv of its own.
VENV42 := .venv-django42
$(VENV42)/.installed-stamp: pyproject.toml | mariadb-deps
	test -x $(VENV42)/bin/python || $(PYTHON) -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q --upgrade pip
	$(VENV42)/bin/python -m pip install -q -e '.[dev]' 'Django>=4.2,<5.0'
	touch $@

test-django42: $(VENV42)/.installed-stamp
	UOW_DB=sqlite $(VENV42)/bin/pytest -q -m "$(OLD_DJANGO_MARKERS)" $(PYTEST_ARGS)

VENV51 := .venv-django51
$(VENV51)/.installed-stamp: pyproject.toml | mariadb-deps
	test -x $(VENV51)/bin/python || $(PYTHON) -m venv $(VENV51)
	$(VENV51)/bin/python -m pip install -q --upgrade pip
	$(VENV51)/bin/python -m pip install -q -e '.[dev]' 'Django>=5.1,<5.2'
	touch $@

test-django51: $(VENV51)/.installed-stamp
	UOW_DB=sqlite $(VENV51)/bin/pytest -q -m "$(OLD_DJANGO_MARKERS)" $(PYTEST_ARGS)

# The built wheel, installed in a fresh venv, tested from a folder that holds tests/ and the
# pytest settings (pyproject.toml) but no package source, so `pythonpath = ["."]` cannot reach
# the checkout; test_package fails unless django_uow comes from site-packages. The tests that
# need the checkout itself (docs, demo, manage.py subprocesses) stay out.
WHEEL_VENV := .venv-wheel
WHEEL_TESTS := tests/project/test_package.py tests/uow/test_unit_of_work.py tests/outbox/test_outbox.py \
	tests/events/test_events.py tests/delivery/test_handlers.py tests/relay/test_relay.py tests/uow/test_repository.py \
	tests/locking/test_locking.py tests/uow/test_retries.py tests/project/test_checks.py tests/admin/test_admin.py \
	tests/admin/test_versioned_admin.py tests/locking/test_http.py tests/ops/test_status.py tests/project/test_testing_kit.py
test-wheel: install
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(BIN)/python -m pip wheel -q --no-deps -w "$$tmp/dist" . ; \
	rm -rf $(WHEEL_VENV); $(PYTHON) -m venv $(WHEEL_VENV); \
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(ls "$$tmp"/dist/django_uow-*.whl)[dev]"; \
	cp -r tests pyproject.toml "$$tmp/"; \
	cd "$$tmp" && UOW_DB=sqlite UOW_EXPECT_INSTALLED=1 $(CURDIR)/$(WHEEL_VENV)/bin/pytest \
		-q -p no:cacheprovider -m "not browser" $(WHEEL_TESTS) $(PYTEST_ARGS)

# mysqlclient, the MariaDB pass's driver, builds against Debian's libmariadb-dev via pkg-config.
mariadb-deps:
	@if ! dpkg -s libmariadb-dev >/dev/null 2>&1 || ! pkg-config --exists libmariadb 2>/dev/null; then \
		echo "Installing Debian's libmariadb-dev and pkg-config for mysqlclient"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmariadb-dev pkg-config >/dev/null; \
	fi

# Headless Chromium for the admin browser test (Debian's package; never a downloaded browser).
browser-deps:
	@if [ ! -x /usr/bin/chromium ]; then \
		echo "Installing Debian's chromium for the admin browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# The demo needs only the library and Celery (for DEMO_SERVICES=1), not the dev extras,
# nor the system packages the MariaDB test pass builds against.
DEMO_STAMP := $(VENV)/.demo-stamp
$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[celery]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
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
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .coverage
