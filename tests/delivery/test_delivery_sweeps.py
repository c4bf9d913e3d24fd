"""The sweeps and the operators, racing what they repair.

- The ``HANDLER_DEADLINE`` sweep republishes a delivery only once its previous copy can
  no longer be queued: a backlog behind slow workers is never copied again (it tripled
  the queue, and reset the reported lag at each copy).
- A blocked delivery whose predecessor is done is woken by the sweep when the
  predecessor's own wake-up was lost, and the wake-up takes the true next delivery.
- ``redeliver`` changes a delivery only from the status it read under the row's lock.
"""

from __future__ import annotations

import io
import random
import time
import uuid
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from django_uow.db.clock import later
from django_uow.delivery.handlers import registry
from django_uow.delivery.rows import consumer_lag, record_published, record_success
from django_uow.delivery.running import run_handler
from django_uow.models import ProcessedEvent
from django_uow.publishers import CeleryPublisher
from django_uow.relay import redeliver, relay_pending, republish_overdue
from tests.support.delivery import (
    CELERY,
    SEQUENCE_HANDLER,
    delivery,
    effects,
    outbox_rows,
    queued,
    sequenced_rows,
)

pytestmark = pytest.mark.django_db(transaction=True)

CANCELLED = "testapp.record_cancelled"


def cancelled_rows(count: int, status: str = "pending") -> list[Any]:
    return outbox_rows(
        "orders.cancelled",
        [{"order_id": i, "reason": "r"} for i in range(count)],
        aggregate_id="",
        status=status,
    )


@pytest.mark.celery
def test_the_deadline_sweep_never_copies_a_backlog_and_keeps_its_first_publish(
    celery_app: Any,
) -> None:
    queue = f"uow_backlog_{uuid.uuid4().hex[:8]}"
    policy = {**CELERY, "HANDLER_DEADLINE": 1.0, "CELERY_QUEUE": queue}
    cancelled_rows(100)
    with override_settings(DJANGO_UOW=policy):
        publisher = CeleryPublisher(celery_app)
        assert relay_pending(publishers=[publisher]).relayed == 100
        assert queued(celery_app, queue) == 100
        first = consumer_lag().oldest_published_at
        for _ in range(3):  # three deadlines pass with no worker: the copies are queued
            time.sleep(1.3)
            assert republish_overdue(publishers=[publisher]) == 0
            assert queued(celery_app, queue) == 100
        lag = consumer_lag()
        assert lag.owed == 100 and lag.oldest_published_at == first
        assert lag.age_seconds >= 3.9  # measured from the first publish, never reset
        # The broker loses them (a restart without persistence): each is sent again, once.
        with celery_app.connection_for_write() as conn:
            conn.default_channel.client.delete(queue)
        assert republish_overdue(publishers=[publisher]) == 100
        assert queued(celery_app, queue) == 100
        assert republish_overdue(publishers=[publisher]) == 0  # published again just now
    assert set(ProcessedEvent.objects.values_list("publishes", flat=True)) == {2}
    assert consumer_lag().oldest_published_at == first


@pytest.mark.celery
def test_an_overdue_delivery_overtaken_in_its_queue_is_published_again(celery_app: Any) -> None:
    """Workers took a delivery published after it, so its copy is not queued any more
    (a worker died holding it); a later one, not overtaken, waits its turn."""
    queue = f"uow_overtaken_{uuid.uuid4().hex[:8]}"
    policy = {**CELERY, "HANDLER_DEADLINE": 1.0, "CELERY_QUEUE": queue}
    lost, waiting, done = cancelled_rows(3, status="dispatched")
    record_published([(r.to_envelope(), CANCELLED) for r in (lost, waiting, done)], using="default")
    for row, ago in ((lost, 20), (waiting, 5), (done, 10)):
        ProcessedEvent.objects.filter(event_id=row.event_id).update(due_at=later(-ago))
    record_success(CANCELLED, done.to_envelope(), using="default")
    with override_settings(DJANGO_UOW=policy):
        publisher = CeleryPublisher(celery_app)
        publisher.send_deliveries([(waiting.to_envelope(), registry.get(CANCELLED))], record=False)
        assert republish_overdue(publishers=[publisher]) == 1
    assert queued(celery_app, queue) == 2
    assert delivery(lost, CANCELLED).publishes == 2  # type: ignore[union-attr]
    assert delivery(waiting, CANCELLED).publishes == 1  # type: ignore[union-attr]


@pytest.mark.celery
def test_redeliver_refuses_a_non_idempotent_delivery_in_flight_and_queues_an_idempotent_one(
    celery_app: Any,
) -> None:
    queue = f"uow_inflight_{uuid.uuid4().hex[:8]}"
    (paid,) = outbox_rows("testapp.OrderPaid", [{"order_id": 3}], status="dispatched")
    (cancelled,) = cancelled_rows(1, status="dispatched")
    record_published([(paid.to_envelope(), "testapp.record_paid")], using="default")
    record_published([(cancelled.to_envelope(), CANCELLED)], using="default")
    with override_settings(DJANGO_UOW={**CELERY, "CELERY_QUEUE": queue}):
        publishers = [CeleryPublisher(celery_app)]
        refused = redeliver(paid.event_id, "testapp.record_paid", publishers=publishers)
        assert refused.outcome == "in-flight" and "not idempotent" in refused.error
        assert queued(celery_app, queue) == 0
        queued_behind = redeliver(cancelled.event_id, CANCELLED, publishers=publishers)
        assert queued_behind.outcome == "queued"
        assert queued(celery_app, queue) == 1
    assert delivery(paid, "testapp.record_paid").publishes == 1  # type: ignore[union-attr]
    assert delivery(cancelled, CANCELLED).publishes == 2  # type: ignore[union-attr]


def test_the_sweep_runs_a_blocked_delivery_whose_wake_up_was_lost_inline(settings: Any) -> None:
    settings.DJANGO_UOW = {
        "RELAY_ON_COMMIT": False,
        "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
    }
    first, second = sequenced_rows([1, 2], status="dispatched")
    handler = registry.get(SEQUENCE_HANDLER)
    assert run_handler(handler, second.to_envelope()) is False  # its predecessor is owed
    assert delivery(second, SEQUENCE_HANDLER).status == "blocked"  # type: ignore[union-attr]
    record_success(SEQUENCE_HANDLER, first.to_envelope(), using="default")  # woke nobody
    call_command("relay_outbox", "--once", stdout=io.StringIO())
    assert effects("sequenced") == [second.event_id]
    assert delivery(second, SEQUENCE_HANDLER).status == "succeeded"  # type: ignore[union-attr]


def test_the_wake_up_takes_the_true_next_delivery_among_many_blocked() -> None:
    """Sixty blocked followers written in a shuffled order: the one right after the
    predecessor is woken, never another from a sample."""
    versions = list(range(2, 62))
    random.Random(21).shuffle(versions)
    versions.remove(2)
    versions.append(2)  # the true next one is written last
    first = sequenced_rows([1], status="dispatched")[0]
    followers = sequenced_rows(versions, status="dispatched")
    handler = registry.get(SEQUENCE_HANDLER)
    for row in followers:
        assert run_handler(handler, row.to_envelope()) is False
    assert ProcessedEvent.objects.filter(status="blocked").count() == 60
    woken: list[uuid.UUID] = []
    assert run_handler(handler, first.to_envelope(), wake=lambda h, e: woken.append(e.event_id))
    assert woken == [followers[-1].event_id]
    assert ProcessedEvent.objects.filter(status="blocked").count() == 59


@pytest.mark.celery
def test_the_admin_says_what_a_rerun_of_a_delivery_in_flight_did(
    celery_app: Any, admin_client: Any
) -> None:
    from django.urls import reverse

    queue = f"uow_rerun_{uuid.uuid4().hex[:8]}"
    (paid,) = outbox_rows("testapp.OrderPaid", [{"order_id": 4}], status="dispatched")
    (cancelled,) = cancelled_rows(1, status="dispatched")
    record_published([(paid.to_envelope(), "testapp.record_paid")], using="default")
    record_published([(cancelled.to_envelope(), CANCELLED)], using="default")
    rows = [delivery(paid, "testapp.record_paid"), delivery(cancelled, CANCELLED)]
    with override_settings(DJANGO_UOW={**CELERY, "CELERY_QUEUE": queue}):
        celery_app.set_current()
        page = admin_client.post(
            reverse("admin:django_uow_processedevent_changelist"),
            {"action": "rerun", "_selected_action": [r.pk for r in rows if r]},
            follow=True,
        ).content.decode()
    assert "1 delivery was not re-run: a worker has it or will take it" in page
    assert "1 delivery was in flight: another copy is queued behind it" in page
    assert queued(celery_app, queue) == 1


@pytest.mark.celery
def test_a_queue_overtaken_by_another_handlers_message_republishes_the_lost_one(
    celery_app: Any,
) -> None:
    """Two handlers share a queue. The ordered handler's delivery was lost and its
    aggregate waits behind it, so that handler finishes nothing; the queue is not empty.
    A message of the other handler sent later was taken: the lost one is published again;
    the overdue ones sent after that message still wait their turn."""
    queue = f"uow_shared_{uuid.uuid4().hex[:8]}"
    policy = {**CELERY, "HANDLER_DEADLINE": 1.0, "CELERY_QUEUE": queue}
    (lost,) = sequenced_rows([1], status="dispatched")
    waiting = cancelled_rows(12, status="dispatched")
    (taken,) = cancelled_rows(1, status="dispatched")
    record_published([(lost.to_envelope(), SEQUENCE_HANDLER)], using="default")
    record_published([(r.to_envelope(), CANCELLED) for r in (*waiting, taken)], using="default")
    ProcessedEvent.objects.filter(event_id=lost.event_id).update(due_at=later(-20))
    ProcessedEvent.objects.filter(event_id__in=[r.event_id for r in waiting]).update(
        due_at=later(-4)
    )
    ProcessedEvent.objects.filter(event_id=taken.event_id).update(due_at=later(-10))
    record_success(CANCELLED, taken.to_envelope(), using="default")
    with override_settings(DJANGO_UOW=policy):
        publisher = CeleryPublisher(celery_app)
        handler = registry.get(CANCELLED)
        publisher.send_deliveries([(r.to_envelope(), handler) for r in waiting], record=False)
        assert republish_overdue(publishers=[publisher], batch_size=1) == 1
    assert delivery(lost, SEQUENCE_HANDLER).publishes == 2  # type: ignore[union-attr]
    assert {delivery(r, CANCELLED).publishes for r in waiting} == {1}  # type: ignore[union-attr]
    assert queued(celery_app, queue) == 13


@pytest.mark.celery
def test_an_ordered_delivery_waiting_for_its_predecessor_is_not_copied_by_the_sweep(
    celery_app: Any,
) -> None:
    """A worker holds a waiting delivery (its re-queues are countdowns, not queued): the
    first wait makes it due again, so the sweep does not take it for lost meanwhile."""
    from types import SimpleNamespace

    from django_uow.tasks import run_handler_task

    class Requeued(Exception):
        pass

    task = SimpleNamespace(request=SimpleNamespace(retries=0), app=celery_app)
    task.retry = lambda **options: Requeued()  # type: ignore[attr-defined]
    queue = f"uow_waiting_{uuid.uuid4().hex[:8]}"
    policy = {**CELERY, "HANDLER_DEADLINE": 1.0, "CELERY_QUEUE": queue}
    first, second = sequenced_rows([1, 2], status="dispatched")
    record_published(
        [(r.to_envelope(), SEQUENCE_HANDLER) for r in (first, second)], using="default"
    )
    ProcessedEvent.objects.update(due_at=later(-20))
    with override_settings(DJANGO_UOW=policy):
        with pytest.raises(Requeued):
            run_handler_task(task, second.to_envelope().to_message(), SEQUENCE_HANDLER)
        # Only the predecessor (lost, its queue empty) is sent again; the waiting one is not.
        assert republish_overdue(publishers=[CeleryPublisher(celery_app)]) == 1
    assert delivery(first, SEQUENCE_HANDLER).publishes == 2  # type: ignore[union-attr]
    assert delivery(second, SEQUENCE_HANDLER).publishes == 1  # type: ignore[union-attr]
