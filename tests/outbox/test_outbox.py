"""Staging: every event of a commit lands in the outbox in one INSERT, in record order."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from django_uow import UnitOfWork
from django_uow.models import OutboxEvent
from tests.support.helpers import capture_statements
from tests.testapp.events import OrderPaid, OrderPlaced, Pinged
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


def test_one_insert_for_many_events_beyond_bulk_create_batch_limits() -> None:
    # 500 rows x 14 columns exceeds SQLite's 999-parameter batches of bulk_create.
    order = Order.objects.create(total=Decimal("1.00"))
    with capture_statements() as statements, UnitOfWork():
        for i in range(500):
            order.record_event(OrderPlaced(order_id=order.pk, total=Decimal(i)))
        order.save()

    assert statements == ["UPDATE testapp_order", "INSERT django_uow_outboxevent"]
    totals = list(OutboxEvent.objects.order_by("id").values_list("payload", flat=True))
    assert [Decimal(p["total"]) for p in totals] == [Decimal(i) for i in range(500)]


def test_one_insert_and_one_update_counted_with_django_assert_num_queries(
    django_assert_num_queries,
) -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    # BEGIN, UPDATE order, INSERT outbox (10 events), COMMIT.
    with django_assert_num_queries(4), UnitOfWork():
        for _ in range(10):
            order.pay()
        order.save()
    assert OutboxEvent.objects.count() == 10


def test_commit_without_events_adds_no_query() -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    with CaptureQueriesContext(connection) as plain, transaction.atomic():
        order.note = "plain"
        order.save()
    with CaptureQueriesContext(connection) as with_uow, UnitOfWork():
        order.note = "no event"
        order.save()
    # The same statements as a plain atomic block: BEGIN, UPDATE, COMMIT.
    assert len(with_uow.captured_queries) == len(plain.captured_queries) == 3
    with CaptureQueriesContext(connection) as empty_atomic, transaction.atomic():
        pass
    with CaptureQueriesContext(connection) as empty_uow, UnitOfWork():
        pass
    assert len(empty_uow.captured_queries) == len(empty_atomic.captured_queries)
    assert OutboxEvent.objects.count() == 0


def test_envelope_columns_are_filled() -> None:
    ref = uuid.uuid4()
    with UnitOfWork() as uow:
        order = Order.objects.create(total=Decimal("9.50"))
        order.place()
        order.save()
        uow.record_event(Pinged(note="hello", ref=ref))

    placed, pinged = OutboxEvent.objects.order_by("id")
    assert placed.event_type == "testapp.OrderPlaced"
    assert placed.aggregate_type == "testapp.order"
    assert placed.aggregate_id == str(order.pk)
    assert placed.aggregate_version == order.version == 2
    assert placed.payload == {"order_id": order.pk, "total": "9.50"}
    assert placed.status == OutboxEvent.Status.PENDING
    assert placed.attempts == 0
    assert placed.headers["schema_version"] == 1
    assert placed.headers["correlation_id"]
    # Due when written, on the database's clock (millisecond resolution on SQLite).
    assert placed.available_at == placed.created_at
    assert abs(placed.created_at - placed.occurred_at).total_seconds() < 1
    assert placed.dispatched_at is None
    assert isinstance(placed.event_id, uuid.UUID)

    assert pinged.event_type == "testapp.Pinged"
    assert (pinged.aggregate_type, pinged.aggregate_id, pinged.aggregate_version) == ("", "", None)
    assert pinged.payload == {"note": "hello", "ref": str(ref), "extra": {}}
    # One business transaction: one correlation id for all its events.
    assert pinged.headers["correlation_id"] == placed.headers["correlation_id"]

    event = pinged.to_envelope().to_event()
    assert event == Pinged(note="hello", ref=ref)


def test_events_of_several_aggregates_keep_record_order() -> None:
    a = Order.objects.create(total=1)
    b = Order.objects.create(total=2)
    with UnitOfWork():
        a.pay()
        b.pay()
        a.cancel("changed mind")
        b.record_event(OrderPaid(order_id=b.pk))
        a.save()
        b.save()
    rows = list(OutboxEvent.objects.order_by("id").values_list("event_type", "aggregate_id"))
    assert rows == [
        ("testapp.OrderPaid", str(a.pk)),
        ("testapp.OrderPaid", str(b.pk)),
        ("orders.cancelled", str(a.pk)),
        ("testapp.OrderPaid", str(b.pk)),
    ]


#: Text that a JSON document of rows must carry unchanged (the one-statement path of a
#: commit of several events): quotes, backslashes, escapes that only look like escapes,
#: characters outside the BMP, and a 1 MB value.
HOSTILE_NOTES = [
    'quote " and backslash \\ and \\u0000 (six characters)',
    "naïve café \U0001f600 \u2028 line separator",
    '],["payload": {} }]',
    "x" * 1_000_000,
]


def _columns(row: OutboxEvent) -> tuple[object, ...]:
    return (
        row.event_type,
        row.aggregate_type,
        row.aggregate_id,
        row.payload,
        {k: v for k, v in row.headers.items() if k != "correlation_id"},
        row.status,
        row.attempts,
        row.last_error,
        row.claimed_by,
        row.dispatched_at,
        row.claimed_until,
    )


def test_a_commit_of_many_events_stores_exactly_what_a_commit_of_one_does() -> None:
    # One event goes through INSERT ... VALUES; eight are past psycopg's cached parameter
    # count, so PostgreSQL gets them as one JSON document. Both must store the same row.
    order = Order.objects.create(total=Decimal("1.00"))
    singles = []
    for note in HOSTILE_NOTES:
        with UnitOfWork() as uow:
            uow.record_event(Pinged(note=note, extra={"k": [1, None, "two"]}))
        singles.append(OutboxEvent.objects.latest("id"))
    with capture_statements() as statements, UnitOfWork() as uow:
        for note in HOSTILE_NOTES:
            uow.record_event(Pinged(note=note, extra={"k": [1, None, "two"]}))
        for i in range(4):
            order.record_event(OrderPlaced(order_id=order.pk, total=Decimal(f"{i}.25")))
        order.save()
    assert statements == ["UPDATE testapp_order", "INSERT django_uow_outboxevent"]

    many = list(OutboxEvent.objects.order_by("id"))[len(singles) :]
    assert [_columns(row) for row in many[: len(singles)]] == [_columns(r) for r in singles]
    assert [row.payload["note"] for row in many[: len(singles)]] == HOSTILE_NOTES
    placed = many[len(singles) :]
    assert [row.payload["total"] for row in placed] == ["0.25", "1.25", "2.25", "3.25"]
    assert [row.aggregate_version for row in placed] == [2, 2, 2, 2]
    assert {row.aggregate_id for row in placed} == {str(order.pk)}
    # Written at the INSERT on the database's clock: due then. Datetimes keep their
    # microseconds (not cut to milliseconds), ids are distinct.
    assert all(row.available_at == row.created_at for row in many)
    assert len({row.created_at for row in many}) == 1  # one statement, one time
    assert any(row.occurred_at.microsecond % 1000 for row in many)
    assert len({row.event_id for row in many}) == len(many)
