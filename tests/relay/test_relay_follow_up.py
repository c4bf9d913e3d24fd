"""A relay never strands: whoever acknowledges an event delivers what waited behind it.

Each commit's fast path relays only its own events, and skips them while an earlier
event of the aggregate is in flight on another relay. The relay holding that earlier
event goes on to them after its acknowledgement (``relay.batch.follow_up``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import django
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_uow import UnitOfWork
from django_uow.models import OutboxEvent
from django_uow.relay import claims, relay_events, relay_pending
from django_uow.relay.batch import follow_up
from tests.publishers.test_publishers import celery_worker  # noqa: F401 - a real worker for this module
from tests.support.hot_aggregate import write_concurrently
from tests.support.relay import RecordingPublisher, make_rows, select_claim
from tests.testapp import handlers
from tests.testapp.events import OrderFlagged
from tests.testapp.models import Effect, Order

ROOT = Path(__file__).resolve().parents[2]
P, D = "pending", "dispatched"
INLINE = {
    "RELAY_ON_COMMIT": "inline",
    "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
}


@pytest.fixture(params=["one-statement", "portable"])
def claim_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one-statement claim and the portable (MySQL...) claim."""
    return select_claim(str(request.param), monkeypatch)


@pytest.fixture(autouse=True)
def _reset_handlers() -> Iterator[None]:
    handlers.BUMPED.clear()
    yield
    handlers.BUMPED.clear()


def statuses() -> dict[str, tuple[str, int]]:
    return {r.payload["reason"]: (r.status, r.attempts) for r in OutboxEvent.objects.order_by("id")}


# ----------------------------------------------------------------------- the claim


@pytest.mark.django_db
def test_the_claim_can_be_restricted_to_aggregates(claim_mode: str) -> None:
    make_rows([("1", "a1"), ("2", "b1"), ("1", "a2"), ("3", "c1"), ("", "x")])
    rows = claims.claim_batch(
        using="default",
        relay_id="r1",
        limit=10,
        lease=60,
        ordered=True,
        aggregates=[("testapp.order", "1"), ("testapp.order", "3"), ("", "")],
    )
    assert [r.payload["reason"] for r in rows] == ["a1", "a2", "c1"]
    assert (
        claims.claim_batch(
            using="default", relay_id="r1", limit=10, lease=60, ordered=True, aggregates=[]
        )
        == []
    )


@pytest.mark.django_db
def test_a_restricted_claim_keeps_aggregate_order(claim_mode: str) -> None:
    make_rows([("1", "a1")])
    claims.claim_batch(using="default", relay_id="r1", limit=1, lease=60, ordered=True)
    make_rows([("1", "a2"), ("1", "a3")])
    key = [("testapp.order", "1")]
    # a1 is leased to r1: nothing of its aggregate may overtake it.
    assert (
        claims.claim_batch(
            using="default", relay_id="r2", limit=10, lease=60, ordered=True, aggregates=key
        )
        == []
    )
    (a1,) = OutboxEvent.objects.filter(payload__reason="a1")
    claims.acknowledge(using="default", relay_id="r1", ids=[a1.id])
    rows = claims.claim_batch(
        using="default", relay_id="r2", limit=1, lease=60, ordered=True, aggregates=key
    )
    assert [r.payload["reason"] for r in rows] == ["a2"]


# ----------------------------------------------------------------------- relay_events


@pytest.mark.django_db
def test_the_relay_that_acknowledges_delivers_what_waited_behind(claim_mode: str) -> None:
    (a1,) = make_rows([("1", "a1")])
    publisher = RecordingPublisher()

    class CommitsWhilePublishing(RecordingPublisher):
        """Another commit lands while a1 is in flight: its fast path skips it."""

        def publish(self, envelopes: Any) -> Any:
            if not self.calls:
                make_rows([("1", "a2"), ("2", "b1")])
                (a2,) = OutboxEvent.objects.filter(payload__reason="a2")
                assert relay_events([a2.event_id], publishers=[publisher]).claimed == 0
            return super().publish(envelopes)

    relayer = CommitsWhilePublishing()
    result = relay_events([a1.event_id], publishers=[relayer])
    assert relayer.reasons() == ["a1", "a2"]
    assert (result.dispatched, result.batches) == (2, 2)
    # b1 belongs to another aggregate and had nothing in flight: its own fast path's job.
    assert statuses() == {"a1": (D, 1), "a2": (D, 1), "b1": (P, 0)}
    assert publisher.published == []


@pytest.mark.django_db
def test_follow_up_costs_one_claim_when_nothing_waited(claim_mode: str) -> None:
    rows = make_rows([("1", "a"), ("2", "b")])
    with CaptureQueriesContext(connection) as ctx:
        result = relay_events([r.event_id for r in rows], publishers=[RecordingPublisher()])
    assert result.dispatched == 2
    sql = [q["sql"] for q in ctx.captured_queries]
    # Claim, acknowledgement, then one claim restricted to the two aggregates (portable:
    # an empty claim is a savepoint, one SELECT and its release). MySQL/MariaDB always
    # claim the portable way.
    portable = claim_mode == "portable" or not claims.one_statement("default")
    assert len(sql) == (10 if portable else 3), sql
    assert sql[-1 if not portable else -2].count("aggregate_id") >= 2


@pytest.mark.django_db
def test_follow_up_is_bounded_and_in_order(claim_mode: str) -> None:
    make_rows([("1", f"a{i}") for i in range(7)])
    publisher = RecordingPublisher()
    result = follow_up([("testapp.order", "1")], publishers=[publisher], limit=5)
    assert publisher.reasons() == ["a0", "a1", "a2", "a3", "a4"]
    assert result.dispatched == 5
    assert follow_up([("testapp.order", "1")], publishers=[publisher]).dispatched == 2
    assert publisher.reasons() == [f"a{i}" for i in range(7)]


@pytest.mark.django_db
def test_follow_up_stops_at_a_failure(claim_mode: str) -> None:
    make_rows([("1", "a1"), ("1", "a2")])
    publisher = RecordingPublisher(fail={"a1": ValueError("no")})
    result = follow_up([("testapp.order", "1")], publishers=[publisher])
    assert (result.retried, result.dispatched) == (1, 0)
    assert statuses() == {"a1": (P, 1), "a2": (P, 0)}


# ----------------------------------------------------------------------- follow-up events


@pytest.mark.django_db(transaction=True)
def test_an_event_recorded_by_a_handler_on_its_aggregate_is_delivered(
    settings: Any, claim_mode: str
) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, **INLINE}
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("1"))
        order.record_event(OrderFlagged(order_id=order.pk))
        order.save()
    # No sweep ran: the relay that acknowledged OrderFlagged delivered the follow-up.
    rows = list(OutboxEvent.objects.order_by("id").values_list("event_type", "status"))
    assert rows == [("orders.flagged", D), ("orders.bumped", D)]
    assert [(str(order.pk), order.version + 1)] == handlers.BUMPED
    assert set(Effect.objects.values_list("handler", flat=True)) == {"flagged", "bumped"}
    assert relay_pending().claimed == 0


# ----------------------------------------------------------------------- hot aggregates


def _assert_all_delivered_in_order(versions: list[int | None], stored: list[Any]) -> None:
    assert len(versions) == len(stored) == 200
    assert versions == sorted(stored)  # every event once, in aggregate-version order


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claim_mode", ["one-statement", "portable"], indirect=True)
def test_eight_writers_on_one_aggregate_inline_no_sweep(settings: Any, claim_mode: str) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, **INLINE}
    order = Order.objects.create()
    errors = write_concurrently(order.pk, writers=8, per_writer=25)
    assert not errors, errors
    left = list(
        OutboxEvent.objects.exclude(status=D).values_list(
            "id", "status", "attempts", "claimed_by", "last_error"
        )
    )
    assert left == []
    stored = list(OutboxEvent.objects.values_list("aggregate_version", flat=True))
    _assert_all_delivered_in_order([v for _, v in handlers.BUMPED], stored)
    assert Effect.objects.filter(handler="bumped").count() == 200


@pytest.mark.skipif(
    django.VERSION < (5, 1), reason="SQLite transaction_mode/init_command need Django 5.1"
)
def test_eight_writers_on_one_aggregate_inline_no_sweep_on_sqlite(tmp_path: Path) -> None:
    # A file-based database: the in-memory test database locks whole tables between
    # threads, which no real deployment does.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.hot_aggregate",
            str(tmp_path / "hot.sqlite3"),
            "8",
            "25",
        ],
        cwd=ROOT,
        env={**os.environ, "UOW_DB": "sqlite"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["errors"] == []
    assert summary["statuses"] == [D] * 200
    _assert_all_delivered_in_order(summary["versions"], summary["stored_versions"])


# ----------------------------------------------------------------------- celery


@pytest.mark.celery
@pytest.mark.postgres  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("celery_worker")
def test_celery_relay_task_delivers_what_waited(settings: Any) -> None:
    settings.DJANGO_UOW = {
        **settings.DJANGO_UOW,
        "RELAY_ON_COMMIT": "celery",
        "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
    }
    order = Order.objects.create()
    errors = write_concurrently(order.pk, writers=4, per_writer=25)
    assert not errors, errors
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        Effect.objects.filter(handler="bumped").count() < 100
        or OutboxEvent.objects.exclude(status=D).exists()
    ):
        time.sleep(0.1)
    # No beat, no sweep: only the relay tasks sent by the commits ran.
    assert list(OutboxEvent.objects.exclude(status=D).values_list("id", "status")) == []
    assert Effect.objects.filter(handler="bumped").count() == 100


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claim_mode", ["one-statement", "portable"], indirect=True)
def test_follow_up_waits_for_a_claim_that_locked_the_row_without_leasing_it(
    claim_mode: str,
) -> None:
    # A commit's own claim locks its event as a candidate, finds an earlier event of the
    # aggregate owed outside its batch, and leases nothing. If the relay acknowledging that
    # earlier event skipped the locked row, nobody would deliver it: it must wait instead.
    import threading

    from django.db import connections, transaction

    a1, a2 = make_rows([("1", "a1"), ("1", "a2")])
    claims.claim_batch(
        using="default", relay_id="r1", limit=1, lease=60, ordered=True, event_ids=[a1.event_id]
    )
    claims.acknowledge(using="default", relay_id="r1", ids=[a1.id])
    locked, release = threading.Event(), threading.Event()

    def other_claim() -> None:
        try:
            with transaction.atomic():
                list(OutboxEvent.objects.select_for_update().filter(id=a2.id))
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_claim)
    thread.start()
    assert locked.wait(10)
    threading.Timer(0.3, release.set).start()
    publisher = RecordingPublisher()
    result = follow_up([("testapp.order", "1")], publishers=[publisher], relay_id="r1")
    thread.join(10)
    assert publisher.reasons() == ["a2"]
    assert result.dispatched == 1
