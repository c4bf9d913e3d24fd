"""Handler outcomes per (event, handler): inline and Celery dead letters, redeliver,
the deadline sweep, consumer lag, and inbox retention."""

from __future__ import annotations

import datetime
import io
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from django_uow import UnitOfWork
from django_uow.db.clock import DatabaseNow
from django_uow.delivery.handlers import event_handler, registry
from django_uow.delivery.rows import (
    claim_redelivery,
    consumer_lag,
    failed_deliveries,
    record_published,
)
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.publishers import CeleryPublisher, InlinePublisher
from django_uow.relay import (
    prune_inbox,
    prune_outbox,
    redeliver,
    relay_batch,
    relay_pending,
    republish_overdue,
)
from tests.publishers.test_publishers import celery_worker, wait_for  # noqa: F401 - the worker fixture
from tests.support.relay import make_rows
from tests.testapp import handlers
from tests.testapp.events import Pinged
from tests.testapp.models import Effect, Order

INLINE = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}
CELERY = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}


@pytest.fixture(autouse=True)
def clean_behaviour() -> Iterator[None]:
    yield
    handlers.BEHAVIOUR.clear()


@pytest.fixture
def temp_handlers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


def place_order() -> Order:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("5"))
        order.place()
        order.save()
    return order


def uow_queue_name() -> str:
    from django_uow.conf import uow_settings

    return str(uow_settings.CELERY_QUEUE)


def due_again() -> None:
    OutboxEvent.objects.update(available_at=DatabaseNow())  # the relay reads the database clock


# ----------------------------------------------------------------------- inline


@pytest.mark.django_db
def test_inline_handler_failing_for_good_is_a_visible_dead_letter(settings: Any) -> None:
    settings.DJANGO_UOW = {**INLINE, "MAX_ATTEMPTS": 3, "BACKOFF": (30.0, 60.0)}
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "raise"
    relay_batch()
    delivery = ProcessedEvent.objects.get(handler="testapp.record_placed")
    assert (delivery.status, delivery.attempts) == ("retrying", 1)
    first_attempt = delivery.first_attempt_at
    for _ in range(2):
        due_again()
        relay_batch()
    delivery.refresh_from_db()
    event = OutboxEvent.objects.get()
    assert (event.status, event.attempts) == ("failed", 3)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert delivery.last_error == f"ValueError: handler refused order {order.pk}"
    assert delivery.traceback.startswith("Traceback (most recent call last)")
    assert "record_placed" in delivery.traceback  # the handler's own frame
    assert delivery.first_attempt_at == first_attempt
    assert delivery.last_attempt_at is not None and delivery.last_attempt_at > first_attempt
    assert delivery.processed_at is None and delivery.published_at is None
    assert (delivery.event_type, delivery.aggregate_type, delivery.aggregate_id) == (
        "testapp.OrderPlaced",
        "testapp.order",
        str(order.pk),
    )
    assert [d.event_id for d in failed_deliveries()] == [event.event_id]
    assert consumer_lag().failed == 1
    assert not Effect.objects.exists()


@pytest.mark.django_db
def test_a_permanent_failure_is_failed_at_once(settings: Any) -> None:
    settings.DJANGO_UOW = {**INLINE, "MAX_ATTEMPTS": 5}
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "permanent"
    relay_batch()
    delivery = ProcessedEvent.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "can never be handled" in delivery.last_error


@pytest.mark.django_db
def test_unstorable_error_text_and_huge_tracebacks_are_stored(
    settings: Any, temp_handlers: list[str]
) -> None:
    settings.DJANGO_UOW = {**INLINE, "MAX_ATTEMPTS": 1}

    @event_handler(Pinged, name="t.nasty")
    def nasty(event: Pinged) -> None:
        raise RuntimeError("bad \udcff text \x00 " + "x" * 50_000)

    temp_handlers.append("t.nasty")
    with UnitOfWork() as uow:
        uow.record_event(Pinged(note="n"))
    relay_batch()
    delivery = ProcessedEvent.objects.get(handler="t.nasty")
    assert delivery.status == "failed"
    assert delivery.last_error.startswith("RuntimeError: bad \ufffd text \ufffd ")
    assert len(delivery.last_error) <= 4000 and len(delivery.traceback) <= 16_000
    assert "\x00" not in delivery.traceback and "nasty" in delivery.traceback


@pytest.mark.django_db
def test_inline_success_after_failures_keeps_the_count(settings: Any) -> None:
    settings.DJANGO_UOW = {**INLINE, "BACKOFF": (30.0, 60.0)}
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "raise"
    relay_batch()
    handlers.BEHAVIOUR.clear()
    due_again()
    relay_batch()
    delivery = ProcessedEvent.objects.get()
    assert (delivery.status, delivery.attempts) == ("succeeded", 2)
    assert delivery.processed_at is not None
    assert Effect.objects.count() == 1


# ----------------------------------------------------------------------- redeliver


@pytest.mark.django_db
def test_redeliver_inline_reruns_a_dead_letter_and_skips_what_succeeded(settings: Any) -> None:
    settings.DJANGO_UOW = {**INLINE, "MAX_ATTEMPTS": 1}
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "raise"
    relay_batch()
    event = OutboxEvent.objects.get()
    assert ProcessedEvent.objects.get().status == "failed"

    again = redeliver(event.event_id, "testapp.record_placed")
    assert (again.outcome, again.error) == (
        "failed",
        f"ValueError: handler refused order {order.pk}",
    )
    assert ProcessedEvent.objects.get().attempts == 2

    handlers.BEHAVIOUR.clear()
    out = io.StringIO()
    call_command("redeliver", "--failed", stdout=out)
    assert out.getvalue().splitlines() == [
        f"{event.event_id} testapp.record_placed: succeeded",
        "redelivered 1: 1 succeeded",
    ]
    delivery = ProcessedEvent.objects.get()
    assert (delivery.status, delivery.attempts) == ("succeeded", 3)
    assert Effect.objects.count() == 1

    out = io.StringIO()
    call_command("redeliver", "--event", str(event.event_id), stdout=out)
    assert "testapp.record_placed: skipped" in out.getvalue()
    assert Effect.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize("outside", [False, True], ids=["handlers only", "a stream too"])
def test_an_inline_event_failed_by_its_handler_stops_holding_its_aggregate_once_redelivered(
    settings: Any, outside: bool
) -> None:
    publishers = INLINE["PUBLISHERS"] + (
        ["django_uow.publishers.RedisStreamPublisher"] if outside else []
    )
    settings.DJANGO_UOW = {**INLINE, "PUBLISHERS": publishers, "MAX_ATTEMPTS": 1}
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "raise"
    relay_batch(publishers=[InlinePublisher()])
    placed = OutboxEvent.objects.get()
    assert (placed.status, ProcessedEvent.objects.get().status) == ("failed", "failed")
    with UnitOfWork():
        order.refresh_from_db()
        order.cancel("changed my mind")
        order.save()
    relay_batch(publishers=[InlinePublisher()])
    cancelled = OutboxEvent.objects.exclude(pk=placed.pk).get()
    assert cancelled.status == "pending"  # held back behind the failed event

    handlers.BEHAVIOUR.clear()
    call_command("redeliver", "--failed", stdout=io.StringIO())
    placed.refresh_from_db()
    relay_batch(publishers=[InlinePublisher()])
    cancelled.refresh_from_db()
    if outside:
        # The stream's consumers never had it: the operator's Retry now still has to send it.
        assert (placed.status, cancelled.status) == ("failed", "pending")
    else:
        assert (placed.status, placed.last_error, cancelled.status) == (
            "dispatched",
            "",
            "dispatched",
        )
        assert placed.dispatched_at is not None
    assert sorted(Effect.objects.values_list("handler", flat=True)) == (
        ["placed"] if outside else ["cancelled", "placed"]
    )


@pytest.mark.django_db
def test_redeliver_command_errors() -> None:
    with pytest.raises(CommandError, match="--event-type and/or --since, or pass --failed"):
        call_command("redeliver")
    with pytest.raises(CommandError, match="is not an ISO 8601 date-time"):
        call_command("redeliver", "--since", "yesterday")
    with pytest.raises(CommandError, match="is not an ISO 8601 date-time"):
        call_command("redeliver", "--since", "2026-02-30T00:00")
    with pytest.raises(CommandError, match="is not in the outbox"):
        call_command("redeliver", "--event", str(uuid.uuid4()))
    with pytest.raises(CommandError, match="badly formed"):
        call_command("redeliver", "--event", "nope")
    rows = make_rows([("1", "a")])
    with pytest.raises(CommandError, match="No event handler is registered under the name"):
        call_command("redeliver", "--event", str(rows[0].event_id), "--handler", "nobody")


@pytest.mark.django_db
def test_redeliver_backfills_a_new_handler_over_retained_events(
    settings: Any, temp_handlers: list[str]
) -> None:
    from tests.testapp.events import OrderCancelled

    settings.DJANGO_UOW = {**INLINE}
    rows = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    make_rows([("4", "d")], event_type="testapp.Pinged")
    OutboxEvent.objects.update(status="dispatched", dispatched_at=timezone.now())
    OutboxEvent.objects.filter(id=rows[0].id).update(
        created_at=timezone.now() - datetime.timedelta(days=2)
    )
    seen: list[str] = []

    @event_handler(OrderCancelled, name="t.backfill")
    def backfill(event: OrderCancelled) -> None:
        seen.append(event.reason)

    temp_handlers.append("t.backfill")
    since = (timezone.now() - datetime.timedelta(days=1)).isoformat()
    out = io.StringIO()
    call_command(
        "redeliver",
        "--event-type",
        "orders.cancelled",
        "--since",
        since,
        "--handler",
        "t.backfill",
        stdout=out,
    )
    assert out.getvalue().splitlines()[-1] == "redelivered 2: 2 succeeded"
    assert sorted(seen) == ["b", "c"]
    out = io.StringIO()
    call_command(
        "redeliver", "--event-type", "orders.cancelled", "--handler", "t.backfill", stdout=out
    )
    assert out.getvalue().splitlines()[-1] == "redelivered 3: 2 skipped, 1 succeeded"
    assert sorted(seen) == ["a", "b", "c"]
    assert ProcessedEvent.objects.filter(handler="t.backfill", status="succeeded").count() == 3

    # --handler alone: every retained event of its type (never the Pinged one).
    seen.clear()
    ProcessedEvent.objects.filter(handler="t.backfill").delete()
    out, err = io.StringIO(), io.StringIO()
    call_command("redeliver", "--handler", "t.backfill", stdout=out, stderr=err)
    assert out.getvalue().splitlines()[-1] == "redelivered 3: 3 succeeded"
    assert err.getvalue().splitlines() == ["progress: 3/3 (100%)"]
    assert sorted(seen) == ["a", "b", "c"]
    with pytest.raises(CommandError, match="handles 'orders.cancelled' events, not"):
        call_command("redeliver", "--handler", "t.backfill", "--event-type", "testapp.Pinged")


# ----------------------------------------------------------------------- publishing


@pytest.fixture
def unconsumed_queue(redis_server: str, settings: Any) -> Iterator[Any]:
    """A real broker queue that no worker consumes: what was sent stays there."""
    from tests.celery_app import app

    queue = f"uow_outcomes_{uuid.uuid4().hex[:8]}"
    settings.DJANGO_UOW = {**INLINE, "CELERY_QUEUE": queue}
    yield app
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete(queue)


@pytest.mark.celery
@pytest.mark.django_db
def test_publishing_a_celery_batch_adds_one_statement_for_its_deliveries(
    unconsumed_queue: Any, django_assert_num_queries: Any
) -> None:
    rows = make_rows([(str(i), "x") for i in range(1, 31)])
    envelopes = [row.to_envelope() for row in rows]
    with django_assert_num_queries(1):
        assert CeleryPublisher(unconsumed_queue).publish(envelopes) is None
    published = ProcessedEvent.objects.filter(status="published")
    assert published.count() == 30
    assert set(published.values_list("handler", flat=True)) == {"testapp.record_cancelled"}
    assert all(p.published_at and p.due_at == p.published_at for p in published)
    with unconsumed_queue.connection_for_write() as conn:
        queued = conn.default_channel.client.llen(uow_queue_name())
    assert queued == 30


@pytest.mark.django_db
def test_publishing_again_never_undoes_an_outcome() -> None:
    rows = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    envelopes = [row.to_envelope() for row in rows]
    pairs = [(e, "h") for e in envelopes]
    record_published(pairs, using="default")
    ProcessedEvent.objects.filter(event_id=rows[0].event_id).update(status="succeeded")
    ProcessedEvent.objects.filter(event_id=rows[1].event_id).update(status="failed")
    record_published(pairs, using="default")
    assert dict(ProcessedEvent.objects.values_list("event_id", "status")) == {
        rows[0].event_id: "succeeded",
        rows[1].event_id: "failed",
        rows[2].event_id: "published",
    }
    # Only an operator's re-run takes a settled delivery back, from the status it read.
    claim = claim_redelivery(envelopes[1], "h", using="default", allowed=("failed",), publish=True)
    assert claim.taken and claim.previous == "failed"
    assert ProcessedEvent.objects.get(event_id=rows[1].event_id).status == "published"
    refused = claim_redelivery(
        envelopes[0], "h", using="default", allowed=("failed",), publish=True
    )
    assert not refused.taken and refused.previous == "succeeded"
    assert ProcessedEvent.objects.get(event_id=rows[0].event_id).status == "succeeded"


@pytest.mark.django_db
def test_consumer_lag_counts_owed_deliveries_and_the_oldest_age() -> None:
    assert consumer_lag().as_dict() == {
        "owed": 0,
        "oldest_published_at": None,
        "age_seconds": 0.0,
        "failed": 0,
        "blocked": 0,
    }
    rows = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    record_published([(r.to_envelope(), "h") for r in rows], using="default")
    old = timezone.now() - datetime.timedelta(minutes=5)
    ProcessedEvent.objects.filter(event_id=rows[0].event_id).update(published_at=old)
    ProcessedEvent.objects.filter(event_id=rows[1].event_id).update(status="retrying")
    ProcessedEvent.objects.filter(event_id=rows[2].event_id).update(status="failed")
    lag = consumer_lag()
    assert (lag.owed, lag.failed, lag.oldest_published_at) == (2, 1, old)
    assert 299 < lag.age_seconds < 400


# ----------------------------------------------------------------------- celery


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_celery_handler_failing_for_good_is_visible_and_redeliverable(
    celery_worker: Any,  # noqa: F811
) -> None:
    publisher = CeleryPublisher(celery_worker)
    with override_settings(DJANGO_UOW={**CELERY, "MAX_ATTEMPTS": 3, "BACKOFF": (0.01, 0.05)}):
        order = place_order()
        handlers.BEHAVIOUR[order.pk] = "raise"
        assert relay_pending(publishers=[publisher]).relayed == 1
        event = OutboxEvent.objects.get()
        assert event.status == "dispatched"  # handed to the broker: the relay's part is done
        assert wait_for(lambda: failed_deliveries().exists())
        [delivery] = failed_deliveries()
        assert (delivery.event_id, delivery.handler) == (event.event_id, "testapp.record_placed")
        assert delivery.attempts == 3
        assert delivery.last_error == f"ValueError: handler refused order {order.pk}"
        assert "record_placed" in delivery.traceback
        assert delivery.published_at is not None
        assert consumer_lag().failed == 1 and consumer_lag().owed == 0

        # Fix the handler's behaviour, then re-run only that delivery through Celery.
        handlers.BEHAVIOUR.clear()
        again = redeliver(event.event_id, "testapp.record_placed", publishers=[publisher])
        assert again.outcome == "published"
        assert wait_for(
            lambda: ProcessedEvent.objects.filter(
                event_id=event.event_id, status="succeeded"
            ).exists()
        )
        assert Effect.objects.filter(event_id=event.event_id).count() == 1
        delivery.refresh_from_db()
        assert (delivery.status, delivery.attempts) == ("succeeded", 4)
        assert consumer_lag().failed == 0
        # Idempotent: asking again is skipped.
        assert redeliver(
            event.event_id, "testapp.record_placed", publishers=[publisher]
        ).outcome == ("skipped")


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_sweep_publishes_again_what_the_broker_lost(celery_worker: Any) -> None:  # noqa: F811
    publisher = CeleryPublisher(celery_worker)
    with override_settings(DJANGO_UOW={**CELERY, "HANDLER_DEADLINE": 60}):
        rows = make_rows([("1", "a"), ("2", "b")])
        # Published, says the inbox; but the broker never got (or lost) the messages.
        record_published(
            [(r.to_envelope(), "testapp.record_cancelled") for r in rows], using="default"
        )
        OutboxEvent.objects.update(status="dispatched", dispatched_at=timezone.now())
        assert republish_overdue(publishers=[publisher]) == 0  # not overdue yet
        ProcessedEvent.objects.filter(event_id=rows[0].event_id).update(
            due_at=timezone.now() - datetime.timedelta(seconds=61)
        )
        assert republish_overdue(publishers=[publisher]) == 1
        assert wait_for(lambda: Effect.objects.filter(event_id=rows[0].event_id).exists())
        assert wait_for(
            lambda: ProcessedEvent.objects.get(event_id=rows[0].event_id).status == "succeeded"
        )
        assert ProcessedEvent.objects.get(event_id=rows[1].event_id).status == "published"
        assert not Effect.objects.filter(event_id=rows[1].event_id).exists()
        # A delivery whose event is gone cannot be published again: a visible dead letter.
        ProcessedEvent.objects.filter(event_id=rows[1].event_id).update(
            due_at=timezone.now() - datetime.timedelta(seconds=61)
        )
        OutboxEvent.objects.filter(event_id=rows[1].event_id).delete()
        assert republish_overdue(publishers=[publisher]) == 0
        gone = ProcessedEvent.objects.get(event_id=rows[1].event_id)
        assert gone.status == "failed" and "outbox event is gone" in gone.last_error


@pytest.mark.django_db
def test_the_sweep_does_nothing_without_celery() -> None:
    rows = make_rows([("1", "a")])
    record_published([(rows[0].to_envelope(), "testapp.record_cancelled")], using="default")
    ProcessedEvent.objects.update(due_at=timezone.now() - datetime.timedelta(days=1))
    assert republish_overdue() == 0  # InlinePublisher: nothing to publish to
    assert ProcessedEvent.objects.get().status == "published"


# ----------------------------------------------------------------------- retention


@pytest.mark.django_db
def test_inbox_is_pruned_after_inbox_retention_keeping_recent_and_owed_rows(
    settings: Any,
) -> None:
    settings.DJANGO_UOW = {**INLINE, "INBOX_RETENTION": datetime.timedelta(days=30)}
    now = timezone.now()
    old = now - datetime.timedelta(days=31)
    recent = now - datetime.timedelta(days=29)

    def delivery(status: str, at: datetime.datetime, name: str) -> ProcessedEvent:
        return ProcessedEvent.objects.create(
            event_id=uuid.uuid4(),
            handler=name,
            status=status,
            processed_at=at if status == "succeeded" else None,
            published_at=at,
            last_attempt_at=at,
        )

    for i in range(5):
        delivery("succeeded", old, f"old{i}")
    delivery("succeeded", recent, "recent")
    for status in ("published", "retrying", "failed"):
        delivery(status, old, status)
    with override_settings(DEBUG=True):
        from django.db import reset_queries

        reset_queries()
        assert prune_inbox(batch_size=2) == 5
        deletes = [q for q in connection.queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # bounded batches: 2 + 2 + 1
    assert sorted(ProcessedEvent.objects.values_list("handler", flat=True)) == [
        "failed",
        "published",
        "recent",
        "retrying",
    ]
    assert prune_inbox() == 0
    out = io.StringIO()
    call_command("prune_outbox", "--inbox-older-than", str(28 * 86400), stdout=out)
    assert out.getvalue().strip() == "pruned 0 event(s), 1 inbox row(s)"
    assert "recent" not in ProcessedEvent.objects.values_list("handler", flat=True)


@pytest.mark.django_db
def test_the_outbox_keeps_events_whose_deliveries_are_owed_or_failed() -> None:
    rows = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    OutboxEvent.objects.update(
        status="dispatched", dispatched_at=timezone.now() - datetime.timedelta(days=30)
    )
    ProcessedEvent.objects.create(event_id=rows[0].event_id, handler="h", status="failed")
    ProcessedEvent.objects.create(event_id=rows[1].event_id, handler="h", status="published")
    ProcessedEvent.objects.create(event_id=rows[2].event_id, handler="h", status="succeeded")
    assert prune_outbox() == 1
    assert set(OutboxEvent.objects.values_list("event_id", flat=True)) == {
        rows[0].event_id,
        rows[1].event_id,
    }


@pytest.mark.django_db
def test_the_relay_prunes_the_inbox_with_the_outbox(settings: Any) -> None:
    settings.DJANGO_UOW = {**INLINE}
    ProcessedEvent.objects.create(
        event_id=uuid.uuid4(),
        handler="h",
        processed_at=timezone.now() - datetime.timedelta(days=31),
    )
    out = io.StringIO()
    call_command("relay_outbox", "--once", "--prune", stdout=out)
    assert not ProcessedEvent.objects.exists()


@pytest.mark.celery
@pytest.mark.django_db
def test_every_sweep_runs_the_deadline_step(unconsumed_queue: Any, settings: Any) -> None:
    """The beat task and ``relay_outbox --once`` publish overdue deliveries again, once
    their previous copies are no longer queued; never a second copy of a queued one."""
    from django_uow.tasks import run_relay

    unconsumed_queue.set_current()
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, **CELERY, "HANDLER_DEADLINE": 60}
    rows = make_rows([("1", "a"), ("2", "b")])
    OutboxEvent.objects.update(status="dispatched", dispatched_at=timezone.now())
    record_published([(r.to_envelope(), "testapp.record_cancelled") for r in rows], using="default")
    long_ago = timezone.now() - datetime.timedelta(minutes=5)
    ProcessedEvent.objects.update(due_at=long_ago, published_at=long_ago)

    # Nothing in the queue (the broker lost them): published again.
    assert run_relay()["republished"] == 2
    assert run_relay()["republished"] == 0  # published again just now: not overdue
    ProcessedEvent.objects.update(due_at=long_ago)
    # Overdue again, but their copies still wait in the queue: no second copy.
    call_command("relay_outbox", "--once", stdout=io.StringIO())
    with unconsumed_queue.connection_for_write() as conn:
        assert conn.default_channel.client.llen(uow_queue_name()) == 2
        conn.default_channel.client.delete(uow_queue_name())  # lost, as in a restart
    call_command("relay_outbox", "--once", stdout=io.StringIO())
    assert not ProcessedEvent.objects.filter(
        due_at__lt=timezone.now() - datetime.timedelta(minutes=1)
    ).exists()
    with unconsumed_queue.connection_for_write() as conn:
        assert conn.default_channel.client.llen(uow_queue_name()) == 2
    assert set(ProcessedEvent.objects.values_list("status", flat=True)) == {"published"}
    assert set(ProcessedEvent.objects.values_list("publishes", flat=True)) == {3}
    # Consumer lag counts from the first publish: republishing does not reset it.
    assert all(p.published_at == long_ago for p in ProcessedEvent.objects.all())
