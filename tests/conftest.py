"""Shared fixtures. Servers that a test needs are probed once; unreachable ones skip the
test with a reason, except under CI=true, where they fail it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# The fixtures django-uow ships for its users (uow_events, uow_drain), tested here too.
pytest_plugins = ["django_uow.testing"]


def server_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if server_reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if CI:
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _fast_path_breaker_closed() -> Iterator[None]:
    """Each test starts with the fast path's breaker closed (a broker failure in one test
    would otherwise make the next tests skip the fast path for the cool-down)."""
    from django_uow.relay.breaker import breaker

    breaker.reset()
    yield
    breaker.reset()


@pytest.fixture
def redis_server() -> str:
    from django.conf import settings

    require_server("Redis", "127.0.0.1", 6379)
    return str(settings.REDIS_URL)


@pytest.fixture
def celery_app() -> Iterator[Any]:
    """The suite's Celery app on this run's own Redis database, emptied before and after."""
    require_server("Redis", "127.0.0.1", 6379)
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()


@pytest.fixture
def require_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with UOW_DB=postgres")


@pytest.fixture
def require_server_db() -> None:
    # Django's own flag: False where the test database is private to one connection
    # (in-memory SQLite), so threads, workers and child processes cannot share it.
    if not connection.features.test_db_allows_multiple_connections:
        pytest.skip(
            "needs a database that several connections share: "
            "run with UOW_DB=postgres or UOW_DB=mariadb"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("postgres"):
            item.fixturenames.insert(0, "require_postgres")
        if item.get_closest_marker("server_db"):
            item.fixturenames.insert(0, "require_server_db")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("UOW_DB") == "postgres":
        from django.conf import settings

        db = settings.DATABASES["default"]
        require = pytest.fail if CI else pytest.exit
        if not server_reachable(db["HOST"], int(db["PORT"])):
            require(f"PostgreSQL is not reachable on {db['HOST']}:{db['PORT']} (UOW_DB=postgres)")
