"""Scheduled events: ``record_event(delay=..., deliver_at=...)`` and the order among due events.

Per-aggregate order is order among due events: by due time (the schedule, or the time an
event was recorded), then by record order. A scheduled event that is not due yet holds
back nothing.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_uow import RetryAfter, UnitOfWork
from django_uow.db.clock import DatabaseNow
from django_uow.models import OutboxEvent
from django_uow.outbox.writing import write_events
from django_uow.relay import claims, relay_batch, relay_events, relay_pending
from tests.support.relay import CANCELLED, RecordingPublisher, select_claim, take_list
from tests.testapp import handlers
from tests.testapp.events import OrderCancelled, OrderPaid, Pinged
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db

NOW = timezone.now


@pytest.fixture(autouse=True, params=["one-statement", "portable"])
def claim_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test through the one-statement claim and the portable (MySQL...) claim."""
    return select_claim(str(request.param), monkeypatch)


@pytest.fixture(autouse=True)
def _reset_handlers() -> Iterator[None]:
    handlers.BEHAVIOUR.clear()
    handlers.SEEN.clear()
    yield
    handlers.BEHAVIOUR.clear()
    handlers.SEEN.clear()


def write_schedule(
    specs: Sequence[tuple[str, str, float, float | None]], *, now: datetime.datetime
) -> list[OutboxEvent]:
    """One outbox row per ``(aggregate_id, reason, recorded, due)`` (seconds from ``now``).

    ``due`` ``None``: an event due at commit. Rows are written as the unit of work writes
    them (``available_at`` = the due time), in ``specs`` order: that is the record order.
    """
    rows = []
    for aggregate_id, reason, recorded, due in specs:
        occurred = now + datetime.timedelta(seconds=recorded)
        deliver_at = None if due is None else now + datetime.timedelta(seconds=due)
        rows.append(
            OutboxEvent(
                event_id=uuid.uuid4(),
                event_type=CANCELLED,
                aggregate_type="testapp.order" if aggregate_id else "",
                aggregate_id=aggregate_id,
                payload={"order_id": int(aggregate_id or 0), "reason": reason},
                headers={"schema_version": 1},
                occurred_at=occurred,
                created_at=occurred,
                available_at=deliver_at or occurred,
                deliver_at=deliver_at,
            )
        )
    write_events(rows, "default")
    return list(OutboxEvent.objects.order_by("id"))


def reasons_by_aggregate(publisher: RecordingPublisher) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for envelope in publisher.published:
        seen.setdefault(envelope.aggregate_id, []).append(envelope.payload["reason"])
    return seen


# ----------------------------------------------------------------------- recording


def test_delay_and_deliver_at_store_the_due_time_in_one_insert(
    django_assert_num_queries: Any,
) -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    at = timezone.now() + datetime.timedelta(hours=2)
    # BEGIN, UPDATE order, INSERT outbox (scheduled and unscheduled events alike), COMMIT.
    with django_assert_num_queries(4), UnitOfWork() as uow:
        order.pay()
        order.record_event(OrderCancelled(order_id=order.pk, reason="later"), delay=90)
        order.record_event(
            OrderCancelled(order_id=order.pk, reason="td"), delay=datetime.timedelta(minutes=5)
        )
        order.record_event(OrderCancelled(order_id=order.pk, reason="at"), deliver_at=at)
        uow.record_event(Pinged(note="n", ref=uuid.uuid4()), delay=2.5)
        order.save()
    paid, later, td, at_row, ping = OutboxEvent.objects.order_by("id")
    # Written at the INSERT on the database's clock: an ordinary event is due then, and a
    # delay counts from then (its commit), not from when it was recorded.
    written = paid.created_at
    assert {r.created_at for r in (paid, later, td, at_row, ping)} == {written}
    assert abs(written - paid.occurred_at) < datetime.timedelta(seconds=5)
    assert paid.deliver_at is None and paid.available_at == written
    assert later.deliver_at == later.available_at == written + datetime.timedelta(seconds=90)
    assert td.deliver_at == td.available_at == written + datetime.timedelta(minutes=5)
    assert at_row.deliver_at == at_row.available_at == at
    assert ping.deliver_at == written + datetime.timedelta(seconds=2.5)
    assert {r.status for r in (paid, later, td, at_row, ping)} == {"pending"}


def test_zero_delay_and_past_deliver_at_are_due_now() -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    with UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="zero"), delay=0)
        order.record_event(
            OrderCancelled(order_id=order.pk, reason="past"),
            deliver_at=timezone.now() - datetime.timedelta(hours=1),
        )
        order.save()
    rows = list(OutboxEvent.objects.order_by("id"))
    # Recorded as ordinary events: due at commit, in record order.
    assert [(r.deliver_at, r.available_at) for r in rows] == [(None, r.created_at) for r in rows]
    publisher = RecordingPublisher()
    relay_batch(publishers=[publisher])
    assert publisher.reasons() == ["zero", "past"]


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"delay": -5}, ValueError, ["negative delay", "deliver_at"]),
        ({"delay": datetime.timedelta(seconds=-1)}, ValueError, ["negative delay"]),
        (
            {"deliver_at": datetime.datetime(2030, 1, 1, 12, 0)},
            ValueError,
            ["naive deliver_at", "aware"],
        ),
        (
            {"delay": 5, "deliver_at": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)},
            TypeError,
            ["both delay and deliver_at", "one of them"],
        ),
        ({"delay": "5"}, TypeError, ["timedelta or a number of seconds", "str"]),
        ({"delay": True}, TypeError, ["timedelta or a number of seconds", "bool"]),
        ({"delay": math.nan}, ValueError, ["finite"]),
        ({"delay": math.inf}, ValueError, ["finite"]),
        ({"delay": 1e300}, ValueError, ["shorter delay"]),
        ({"deliver_at": datetime.date(2030, 1, 1)}, TypeError, ["aware datetime", "date"]),
        ({"deliver_at": "2030-01-01T00:00:00Z"}, TypeError, ["aware datetime", "str"]),
    ],
)
def test_a_bad_schedule_fails_at_record_time_and_the_unit_keeps_its_other_events(
    kwargs: dict[str, Any], error: type[Exception], words: list[str]
) -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    with UnitOfWork() as uow:
        order.pay()
        with pytest.raises(error) as raised:
            order.record_event(OrderCancelled(order_id=order.pk, reason="bad"), **kwargs)
        with pytest.raises(error):
            uow.record_event(Pinged(note="bad", ref=uuid.uuid4()), **kwargs)
        assert [type(e).__name__ for e in order.pending_events] == ["OrderPaid"]
        order.record_event(OrderCancelled(order_id=order.pk, reason="after"))
        order.save()
    message = str(raised.value)
    assert all(word in message for word in words), message
    # The refused event was never staged; the others of the unit committed, in order.
    assert [
        (r.event_type, r.payload.get("reason")) for r in OutboxEvent.objects.order_by("id")
    ] == [
        ("testapp.OrderPaid", None),
        (CANCELLED, "after"),
    ]


def test_an_uncaught_bad_schedule_rolls_the_whole_unit_back() -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    with pytest.raises(ValueError, match="negative delay"), UnitOfWork():
        order.pay()
        order.save()
        order.record_event(OrderPaid(order_id=order.pk), delay=-5)
    assert not OutboxEvent.objects.exists()
    order.refresh_from_db()
    assert order.status == "new"


# ----------------------------------------------------------------------- due time


def test_a_scheduled_event_is_not_claimed_before_it_is_due() -> None:
    now = timezone.now()
    write_schedule([("1", "s", 0, 60)], now=now)
    early = claims.claim_batch(
        using="default", relay_id="r", limit=10, lease=30, ordered=True, now=now
    )
    almost = claims.claim_batch(
        using="default",
        relay_id="r",
        limit=10,
        lease=30,
        ordered=True,
        now=now + datetime.timedelta(seconds=59),
    )
    assert early == almost == []
    (row,) = claims.claim_batch(
        using="default",
        relay_id="r",
        limit=10,
        lease=30,
        ordered=True,
        now=now + datetime.timedelta(seconds=60),
    )
    assert row.payload["reason"] == "s"


def test_the_fast_path_leaves_a_scheduled_event_for_later() -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    with UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="later"), delay=3600)
        order.record_event(OrderCancelled(order_id=order.pk, reason="now"))
        order.save()
    publisher = RecordingPublisher()
    relay_events(OutboxEvent.objects.values_list("event_id", flat=True), publishers=[publisher])
    assert publisher.reasons() == ["now"]
    assert dict(OutboxEvent.objects.values_list("payload__reason", "status")) == {
        "later": "pending",
        "now": "dispatched",
    }


def test_a_commit_of_scheduled_events_only_claims_nothing_on_the_fast_path(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_ON_COMMIT": "inline"}
    order = Order.objects.create(total=Decimal("3.00"))
    with django_capture_on_commit_callbacks() as callbacks, UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="later"), delay=60)
        order.save()
    with CaptureQueriesContext(connection) as after_commit:
        for callback in callbacks:
            callback()
    assert after_commit.captured_queries == []  # no claim: nothing of it is due
    with django_capture_on_commit_callbacks(execute=True), UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="now"))
        order.save()
    assert dict(OutboxEvent.objects.values_list("payload__reason", "status")) == {
        "later": "pending",
        "now": "dispatched",
    }


def test_a_scheduled_event_holds_back_no_later_event_due_earlier() -> None:
    order = Order.objects.create(total=Decimal("3.00"))
    with UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="reminder"), delay=3600)
        order.save()
    with UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="shipped"))
        order.save()
    publisher = RecordingPublisher()
    summary = relay_pending(publishers=[publisher], batch_size=1)
    assert publisher.reasons() == ["shipped"]
    assert (summary.relayed, summary.left) == (1, 1)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_a_backlog_is_delivered_by_due_time_then_record_order(batch_size: int) -> None:
    """The relay was down while events were recorded; one drain delivers them in order."""
    now = timezone.now()
    write_schedule(
        [
            ("1", "a", -100, None),
            ("1", "b", -95, -60),  # due when "e" was recorded: before it, by record order
            ("1", "c", -90, None),
            ("1", "d", -85, -70),  # recorded after "c", due before "e"
            ("2", "x", -84, -20),  # another aggregate, interleaved
            ("1", "e", -60, None),
            ("1", "f", -55, 100),  # not due: delivered later, holds back nothing
            ("2", "y", -50, None),
            ("1", "g", -40, None),
            ("", "free", -30, 600),  # no aggregate, not due
        ],
        now=now,
    )
    publisher = RecordingPublisher()
    summary = relay_pending(publishers=[publisher], batch_size=batch_size)
    assert reasons_by_aggregate(publisher) == {"1": ["a", "c", "d", "b", "e", "g"], "2": ["y", "x"]}
    assert summary.left == 2
    assert set(
        OutboxEvent.objects.filter(status="pending").values_list("payload__reason", flat=True)
    ) == {"f", "free"}


def test_events_that_come_due_together_go_by_due_time_in_one_batch() -> None:
    now = timezone.now()
    write_schedule(
        [("1", "late", -10, 50), ("1", "early", -9, 20), ("1", "plain", -8, None)], now=now
    )
    rows = claims.claim_batch(
        using="default",
        relay_id="r",
        limit=10,
        lease=30,
        ordered=True,
        now=now + datetime.timedelta(seconds=60),
    )
    assert [r.payload["reason"] for r in rows] == ["plain", "early", "late"]


def test_a_retried_scheduled_head_still_blocks_what_is_due_after_it() -> None:
    now = timezone.now()
    write_schedule([("1", "s", -30, -10), ("1", "u", -5, None)], now=now)
    failing = RecordingPublisher(fail={"s": RetryAfter(3600)})
    relay_batch(publishers=[failing])
    assert dict(OutboxEvent.objects.values_list("payload__reason", "status")) == {
        "s": "pending",
        "u": "pending",
    }
    s = OutboxEvent.objects.get(payload__reason="s")
    assert s.attempts == 1 and s.available_at > timezone.now()
    assert s.deliver_at == now + datetime.timedelta(seconds=-10)  # the schedule stays
    publisher = RecordingPublisher()
    relay_pending(publishers=[publisher])
    assert publisher.reasons() == []  # "u" is due after "s": it waits for its retry
    OutboxEvent.objects.filter(pk=s.pk).update(available_at=DatabaseNow())  # the relay reads the database clock
    relay_pending(publishers=[publisher])
    assert publisher.reasons() == ["s", "u"]


def test_a_failed_earlier_event_blocks_a_scheduled_one_when_it_comes_due() -> None:
    now = timezone.now()
    write_schedule([("1", "u", -30, None), ("1", "s", -20, -1)], now=now)
    OutboxEvent.objects.filter(payload__reason="u").update(status="failed")
    publisher = RecordingPublisher()
    relay_pending(publishers=[publisher])
    assert publisher.reasons() == []


# ----------------------------------------------------------------------- concurrency


@pytest.mark.server_db
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_concurrent_relays_publish_scheduled_and_plain_events_once_in_order(
    redis_server: str,
) -> None:
    import random
    import threading
    import time

    from django.db import connections

    from tests.support.relay import RedisListPublisher

    now = timezone.now()
    rng = random.Random(14)
    specs: list[tuple[str, str, float, float | None]] = []
    for seq in range(40):  # 8 aggregates, interleaved, one event per aggregate per second
        for agg in range(1, 9):
            recorded = -400.0 + seq * 8 + agg / 10
            kind = rng.random()
            if kind < 0.3:  # scheduled, due by now
                due: float | None = min(recorded + rng.uniform(1, 120), -1.0)
            elif kind < 0.4:  # scheduled, not due for an hour
                due = 3600.0 + rng.uniform(0, 60)
            else:
                due = None
            specs.append((str(agg), str(len(specs)), recorded, due))
    rows = write_schedule(specs, now=now)
    due_of = {
        r.payload["reason"]: (r.deliver_at or r.occurred_at, r.id)
        for r in rows
        if r.deliver_at is None or r.deliver_at <= now
    }
    expected: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: (r.deliver_at or r.occurred_at, r.id)):
        if r.payload["reason"] in due_of:
            expected.setdefault(r.aggregate_id, []).append(r.payload["reason"])
    key = f"uowtest:scheduled:{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def due_left() -> bool:
        return OutboxEvent.objects.filter(status="pending", available_at__lte=now).exists()

    def relay() -> None:
        publisher = RedisListPublisher(redis_server, key)
        try:
            start.wait(timeout=10)
            for _ in range(400):
                summary = relay_pending(batch_size=7, publishers=[publisher])
                if not summary.relayed:
                    if not due_left():
                        break
                    time.sleep(0.01)  # the others hold the due events: let them finish
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()
            publisher.client.close()

    threads = [threading.Thread(target=relay) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    published = take_list(redis_server, key)
    assert not errors, errors
    event_ids = [item.rsplit(":", 1)[1] for item in published]
    assert len(event_ids) == len(set(event_ids)) == len(due_of)  # each due event once
    seen: dict[str, list[str]] = {}
    for item in published:
        aggregate_id, reason, _ = item.split(":")
        seen.setdefault(aggregate_id, []).append(reason)
    assert seen == expected
    not_due = OutboxEvent.objects.exclude(status="dispatched")
    assert not_due.count() == len(rows) - len(due_of) > 0
    assert all(r.deliver_at > now for r in not_due)
