"""Handler tasks keep their worker's database connection (``delivery.connections``).

Celery's Django fix-up closes every connection before and after every task. django-uow's
handler tasks instead keep it as Django keeps one between requests (``CONN_MAX_AGE``),
and replace a connection that died in between (a server restart, ``pg_terminate_backend``)
before the next delivery, without failing that delivery.

A real prefork worker runs against a PostgreSQL cluster of the test's own, which the
test restarts; the Pinged handler writes its session's backend pid as its effect.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone

from django_uow.delivery.handlers import registry
from django_uow.events.base import Envelope
from django_uow.models import ProcessedEvent
from django_uow.publishers import CeleryPublisher
from tests.conftest import CI
from tests.support.postgres_server import OwnPostgres, own_postgres, postgres_bin_dir
from tests.support.processes import WORKER_OPTIONS, running, wait_for
from tests.testapp.models import Effect

pytestmark = [pytest.mark.celery, pytest.mark.postgres]

DATABASE = "uow_worker_connections"
PING = "testapp.on_ping"


@pytest.fixture(scope="module")
def server() -> Iterator[OwnPostgres]:
    if postgres_bin_dir() is None:
        message = "needs PostgreSQL's server binaries (initdb, pg_ctl) for a cluster of its own"
        if CI:
            pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
        pytest.skip(message)
    with own_postgres() as own:
        own.create_database(DATABASE)
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            env=_env(own),
            check=True,
            capture_output=True,
            timeout=180,
        )
        yield own


def _env(own: OwnPostgres, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "UOW_DB": "postgres",
        "UOW_PG_PORT": str(own.port),
        "UOW_PG_NAME": DATABASE,
        **extra,
    }


def _worker(own: OwnPostgres, conn_max_age: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_subprocess",
            DATABASE,
            "--pool=prefork",
            "--concurrency=1",
            *WORKER_OPTIONS,
        ],
        env=_env(own, UOW_CONN_MAX_AGE=str(conn_max_age), UOW_PING_RECORDS_BACKEND="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _ping(app: Any, own: OwnPostgres) -> tuple[str, int, str]:
    """Send one Pinged delivery; return its effect's backend pid, the delivery's attempts
    and status once it is handled."""
    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type="testapp.Pinged",
        aggregate_type="",
        aggregate_id="",
        aggregate_version=None,
        occurred_at=timezone.now(),
        payload={"note": "are you there", "ref": None, "extra": {}},
    )
    CeleryPublisher(app).send_deliveries([(envelope, registry.get(PING))], record=False)
    effects, inbox = Effect._meta.db_table, ProcessedEvent._meta.db_table
    found: list[Any] = []

    def handled() -> bool:
        try:
            with own.connect(DATABASE) as conn:
                effect = conn.execute(
                    f"SELECT aggregate_id FROM {effects} WHERE event_id = %s",
                    [envelope.event_id],
                ).fetchall()
                row = conn.execute(
                    f"SELECT attempts, status FROM {inbox} WHERE event_id = %s AND handler = %s",
                    [envelope.event_id, PING],
                ).fetchone()
        except Exception:
            return False
        if effect and row and row[1] == "succeeded":
            found[:] = [effect, row]
            return True
        return False

    assert wait_for(handled, timeout=60), f"ping {envelope.event_id} was not handled"
    (effect,), (attempts, status) = found[0], found[1]
    return str(effect[0]), int(attempts), str(status)


def test_handler_tasks_keep_one_connection_and_replace_it_when_it_dies(
    celery_app: Any, server: OwnPostgres
) -> None:
    with running(_worker(server, conn_max_age=600)):
        backends = [_ping(celery_app, server)[0] for _ in range(4)]
        # Celery's fix-up alone opens a new session for every task.
        assert len(set(backends)) == 1, backends
        (kept,) = set(backends)

        with server.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [int(kept)])
        after_kill, attempts, status = _ping(celery_app, server)
        assert (attempts, status) == (1, "succeeded")
        assert after_kill != kept

        server.restart()
        after_restart, attempts, status = _ping(celery_app, server)
        assert (attempts, status) == (1, "succeeded")
        assert after_restart != after_kill
        assert _ping(celery_app, server)[0] == after_restart


def test_without_conn_max_age_every_handler_task_has_a_session_of_its_own(
    celery_app: Any, server: OwnPostgres
) -> None:
    with running(_worker(server, conn_max_age=0)):
        backends = [_ping(celery_app, server)[0] for _ in range(3)]
    assert len(set(backends)) == 3, backends


def test_other_tasks_keep_celerys_behaviour(celery_app: Any, server: OwnPostgres) -> None:
    with running(_worker(server, conn_max_age=600)):
        handler_backend = _ping(celery_app, server)[0]
        plain = []
        for _ in range(2):
            event_id = str(uuid.uuid4())
            celery_app.send_task("tests.celery_app.record_backend", args=(event_id,))
            assert wait_for(lambda key=event_id: _effect(server, key) is not None, timeout=60)
            plain.append(_effect(server, event_id))
    # Celery's fix-up closed the connection before and after each plain task.
    assert len({handler_backend, *plain}) == 3, (handler_backend, plain)


def _effect(own: OwnPostgres, event_id: str) -> str | None:
    with own.connect(DATABASE) as conn:
        row = conn.execute(
            f"SELECT aggregate_id FROM {Effect._meta.db_table} WHERE event_id = %s", [event_id]
        ).fetchone()
    return None if row is None else str(row[0])
