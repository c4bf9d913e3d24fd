"""End-to-end delivery: a Celery worker SIGKILLed while holding prefetched handler tasks.

Its unacknowledged messages stay in Redis until the broker's visibility timeout (an hour
by default). The deadline sweep publishes the deliveries still owed again after
``HANDLER_DEADLINE``, so every handler effect happens within the deadline plus one
sweep, exactly once for idempotent handlers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from django_uow.delivery.rows import consumer_lag
from django_uow.models import ProcessedEvent
from django_uow.publishers import CeleryPublisher
from django_uow.relay import relay_pending, republish_overdue
from tests.conftest import require_server
from tests.support.relay import make_rows
from tests.testapp.models import Effect

DEADLINE = 4.0
EVENTS = 16
CELERY = {
    "RELAY_ON_COMMIT": False,
    "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
    "HANDLER_DEADLINE": DEADLINE,
}


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def start_worker(handler_sleep: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_subprocess",
            connection.settings_dict["NAME"],
            "--pool=prefork",
            "--concurrency=2",
            "--prefetch-multiplier=4",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        env={**os.environ, "UOW_HANDLER_SLEEP": str(handler_sleep)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: SIGKILL reaches the pool children
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def app() -> Iterator[Any]:
    require_server("Redis", "127.0.0.1", 6379)
    from tests.celery_app import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()  # UOW_REDIS_DB is this run's own database
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()


def effects_per_event() -> Counter[str]:
    return Counter(str(e) for e in Effect.objects.values_list("event_id", flat=True))


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_with_prefetched_tasks_costs_the_deadline_not_the_events(
    app: Any,
) -> None:
    rows = make_rows([(str(i), "x") for i in range(1, EVENTS + 1)])
    first = start_worker(handler_sleep=0.5)
    second: subprocess.Popen[bytes] | None = None
    try:
        with override_settings(DJANGO_UOW=CELERY):
            publisher = CeleryPublisher(app)
            assert relay_pending(publishers=[publisher]).relayed == EVENTS
            assert consumer_lag().owed == EVENTS
            # Let the slow worker take its prefetched share and handle a few, then kill it.
            assert wait_for(lambda: Effect.objects.count() >= 2, timeout=60)
            kill(first)
            killed_at = time.monotonic()
            handled_before = Effect.objects.count()
            assert handled_before < EVENTS, "the worker handled everything before the kill"

            second = start_worker(handler_sleep=0.0)
            # The messages the dead worker held are not redelivered by the broker (its
            # visibility timeout is an hour): the new worker does not get them.
            # It handles what was still queued; what the dead worker held stays owed.
            time.sleep(max(0.0, DEADLINE + 0.5 - (time.monotonic() - killed_at)))
            stuck = consumer_lag().owed
            assert stuck > 0, "the killed worker held no prefetched task"
            assert stuck == EVENTS - Effect.objects.count()

            # One sweep after the deadline publishes the owed deliveries again.
            assert republish_overdue(publishers=[publisher]) == stuck
            assert wait_for(lambda: Effect.objects.count() >= EVENTS, timeout=60)
            handled_at = time.monotonic() - killed_at
    finally:
        kill(first)
        if second is not None:
            kill(second)
    # Every handler effect, exactly once (idempotent handler), within deadline + one sweep.
    per_event = effects_per_event()
    assert set(per_event) == {str(r.event_id) for r in rows}
    assert set(per_event.values()) == {1}
    assert handled_at < DEADLINE + 60
    statuses = Counter(ProcessedEvent.objects.values_list("status", flat=True))
    assert statuses == {"succeeded": EVENTS}
    assert consumer_lag().owed == 0
