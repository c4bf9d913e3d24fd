"""A looping relay reopens its LISTEN connection after losing it, and wakes on NOTIFY again.

The shared PostgreSQL server is never restarted: the test terminates the listener's own
backend with ``pg_terminate_backend``, which is what a server restart does to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.test import override_settings

from django_uow import unit_of_work
from django_uow.models import OutboxEvent
from django_uow.publishers import InlinePublisher
from django_uow.relay import RelayLoop
from tests.testapp.models import Order

#: Long enough that a relay which only polls could not pass: wake-ups must come from NOTIFY.
INTERVAL = 30.0
#: Generous bound on a NOTIFY wake-up (about 0.1 s when idle).
WAKES_WITHIN = 5.0

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def listener_pids() -> set[int]:
    """Backends of this test database that LISTEN (other than this connection)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
        )
        return {row[0] for row in cursor.fetchall()}


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(predicate())  # type: ignore[operator]


@unit_of_work
def place_order() -> Order:
    order = Order.objects.create(total=Decimal("5"))
    order.place()
    order.save()
    return order


def seconds_to_dispatch() -> float:
    """Commit one event (its NOTIFY included) and time until the relay dispatched it."""
    started = time.monotonic()
    place_order()
    event = OutboxEvent.objects.order_by("-id").first()
    assert event is not None
    dispatched = wait_until(
        lambda: OutboxEvent.objects.filter(pk=event.pk, status="dispatched").exists(),
        timeout=INTERVAL + 5,
    )
    assert dispatched
    return time.monotonic() - started


@pytest.fixture
def looping_relay() -> Iterator[RelayLoop]:
    uow = {
        "RELAY_ON_COMMIT": False,  # only the looping relay delivers
        "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
        "NOTIFY": True,
    }
    with override_settings(DJANGO_UOW=uow):
        loop = RelayLoop(interval=INTERVAL, listen=True, publishers=[InlinePublisher()])
        errors: list[BaseException] = []

        def run() -> None:
            try:
                loop.run()
            except BaseException as exc:
                errors.append(exc)
            finally:
                connections.close_all()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            assert wait_until(lambda: bool(listener_pids()), timeout=10), "LISTEN never opened"
            yield loop
        finally:
            loop.stop()
            thread.join(timeout=15)
        assert not thread.is_alive()
        assert not errors, errors


def test_listen_is_reopened_after_its_backend_is_terminated_and_wakes_the_relay_again(
    looping_relay: RelayLoop, caplog: pytest.LogCaptureFixture
) -> None:
    assert seconds_to_dispatch() < WAKES_WITHIN  # LISTEN works before the loss
    with caplog.at_level(logging.INFO, logger="django_uow.relay"):
        (killed,) = listener_pids()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [killed])
        # A new LISTEN backend appears: the relay reopened it (backoff starts at 0.5 s).
        assert wait_until(lambda: bool(listener_pids() - {killed}), timeout=10), (
            "LISTEN was not reopened"
        )
        assert killed not in listener_pids()
        for _ in range(2):  # and it wakes the relay, again and again, within the bound
            assert seconds_to_dispatch() < WAKES_WITHIN
    messages = [r.getMessage() for r in caplog.records if r.name == "django_uow.relay"]
    assert sum("LISTEN connection lost" in m for m in messages) == 1, messages
    assert sum("reopened" in m for m in messages) == 1, messages
    assert not OutboxEvent.objects.exclude(status="dispatched").exists()


def test_reopening_backs_off_doubling_to_a_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from django_uow.relay import loop as relay_loop

    def refused(using: str) -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(relay_loop, "Listener", refused)
    loop = RelayLoop(interval=INTERVAL, listen=True)
    loop._schedule_reopen(first=True)
    delays = [loop._listen_delay]
    for _ in range(8):
        assert loop._reopen() is False
        delays.append(loop._listen_delay)
    start, cap = relay_loop.LISTEN_BACKOFF
    assert delays == [min(cap, start * 2**n) for n in range(9)]
    assert delays[-1] == cap


def test_the_listen_connection_has_tcp_keepalives(looping_relay: RelayLoop) -> None:
    """A peer gone without a word fails the idle connection, so it is reopened."""
    listener = looping_relay._listener_conn
    assert listener is not None
    params = listener.conn.info.get_parameters()
    assert (params["keepalives"], params["keepalives_idle"]) == ("1", "30")
