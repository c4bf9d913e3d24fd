"""HANDLER_BATCH: one Celery task runs a handler for several events, each its own delivery.

The publisher's grouping is read back from the real Redis queue; a real worker runs the
batched tasks; a delivery of a batch that fails continues as a ``handle_event`` task of
its own, found on the real queue with its countdown.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from django.test import override_settings

from django_uow.delivery.handlers import handlers_for
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.outbox.writing import write_events
from django_uow.publishers import CeleryPublisher, handler_task_id
from django_uow.publishers.celery_messages import HANDLE_BATCH_TASK, HANDLE_TASK
from django_uow.relay import relay_pending
from django_uow.tasks import run_handler_batch, run_handler_task
from tests.publishers.test_celery_batch import (
    REDIS,
    UOW,
    assert_each_ran_once,
    expected_tasks,
    redis_messages,
    start_worker,
    stop,
    wait_for_deliveries,
    write,
)
from tests.testapp import handlers as testapp_handlers
from tests.testapp.models import Effect

pytest_plugins = ["tests.publishers.test_celery_batch"]  # its queue and redis_app fixtures


def tasks_by_handler(messages: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    """Per handler, the event ids each queued task carries, in queue order."""
    found: dict[str, list[list[str]]] = {}
    for message in messages:
        args = message["decoded"][0]
        task = message["headers"]["task"]
        events = args[0] if task == HANDLE_BATCH_TASK else [args[0]]
        found.setdefault(args[1], []).append([e["event_id"] for e in events])
    return found


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_each_handlers_deliveries_go_in_tasks_of_up_to_handler_batch(
    redis_app: Any, queue: str
) -> None:
    rows = write(42)
    expected = expected_tasks(rows)
    with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue, "HANDLER_BATCH": 4}):
        assert CeleryPublisher(redis_app).publish([r.to_envelope() for r in rows]) is None
    messages = redis_messages(redis_app, queue)
    grouped = tasks_by_handler(messages)
    per_handler = Counter(h for _, h in expected)
    for handler, tasks in grouped.items():
        # ceil(n / 4) tasks, full ones first, each handler's events in record order.
        assert len(tasks) == math.ceil(per_handler[handler] / 4)
        assert all(len(t) == 4 for t in tasks[:-1]) and 1 <= len(tasks[-1]) <= 4
        ids = [e for t in tasks for e in t]
        order = [str(r.event_id) for r in rows]
        assert ids == sorted(ids, key=order.index)
    assert {(e, h) for h, tasks in grouped.items() for t in tasks for e in t} == expected
    assert sum(len(t) for tasks in grouped.values() for t in tasks) == len(expected)
    for message in messages:  # a task of one delivery is the usual one, its id kept
        args = message["decoded"][0]
        if message["headers"]["task"] == HANDLE_TASK:
            assert message["headers"]["id"] == handler_task_id(args[0]["event_id"], args[1])
    # Everything sent is recorded as published, one inbox row per (event, handler).
    assert ProcessedEvent.objects.filter(status="published").count() == len(expected)


@pytest.mark.celery
@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_every_delivery_of_batched_tasks_once(
    redis_app: Any, queue: str
) -> None:
    rows = write(200)
    expected = expected_tasks(rows)
    per_handler = Counter(h for _, h in expected)
    with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue, "HANDLER_BATCH": 25}):
        summary = relay_pending(publishers=[CeleryPublisher(redis_app)], batch_size=100)
    assert summary.relayed == 200
    queued = redis_messages(redis_app, queue)
    assert len(queued) == sum(math.ceil(n / 25) for n in per_handler.values()) < len(expected)
    worker = start_worker(REDIS, queue)
    try:
        wait_for_deliveries(expected)
    finally:
        stop(worker)
    assert_each_ran_once(rows, expected)


def placed(order_ids: list[int]) -> list[dict[str, Any]]:
    """Messages of OrderPlaced events, as a batch task carries them."""
    rows = [
        OutboxEvent(
            event_id=uuid.uuid4(),
            event_type="testapp.OrderPlaced",
            aggregate_type="testapp.order",
            aggregate_id=str(i),
            payload={"order_id": i, "total": "1.00"},
        )
        for i in order_ids
    ]
    write_events(rows, "default")
    return [r.to_envelope().to_message() for r in OutboxEvent.objects.order_by("id")]


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_failing_delivery_of_a_batch_continues_as_a_task_of_its_own(
    redis_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = placed([1, 2, 3, 4, 5])
    monkeypatch.setitem(testapp_handlers.BEHAVIOUR, 3, "raise")
    monkeypatch.setitem(testapp_handlers.BEHAVIOUR, 5, "permanent")
    task = SimpleNamespace(app=redis_app, request=SimpleNamespace(retries=0))
    with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
        ran = run_handler_batch(task, messages, "testapp.record_placed")

    assert ran == 3  # 1, 2 and 4; 3 failed, 5 failed for good
    rows = {r.aggregate_id: r for r in ProcessedEvent.objects.all()}
    assert {k: r.status for k, r in rows.items()} == {
        "1": "succeeded",
        "2": "succeeded",
        "3": "retrying",
        "4": "succeeded",
        "5": "failed",
    }
    assert rows["3"].attempts == 1 and "handler refused order 3" in rows["3"].last_error
    assert sorted(Effect.objects.values_list("aggregate_id", flat=True)) == ["1", "2", "4"]
    # Only the retryable failure was sent again, to the queue the batch came from
    # (CELERY_QUEUE here): a handle_event task, with a countdown.
    (again,) = redis_messages(redis_app, queue)
    assert again["headers"]["task"] == HANDLE_TASK
    assert again["headers"]["eta"] is not None
    assert again["decoded"][0] == [messages[2], "testapp.record_placed"]
    assert again["headers"]["id"] == handler_task_id(
        messages[2]["event_id"], "testapp.record_placed"
    )

    # Run as that task, once the handler accepts the order: the delivery succeeds.
    monkeypatch.delitem(testapp_handlers.BEHAVIOUR, 3)
    assert run_handler_task(task, *again["decoded"][0], **again["decoded"][1]) is True
    assert ProcessedEvent.objects.get(aggregate_id="3").status == "succeeded"
    assert sorted(Effect.objects.values_list("aggregate_id", flat=True)) == ["1", "2", "3", "4"]


@pytest.mark.django_db(transaction=True)
def test_a_batch_runs_past_a_message_it_cannot_read() -> None:
    (good,) = placed([7])
    task = SimpleNamespace(app=None, request=SimpleNamespace(retries=0))
    bad = {"event_id": "not-a-uuid", "event_type": "testapp.OrderPlaced"}
    assert run_handler_batch(task, [bad, good], "testapp.record_placed") == 1
    assert ProcessedEvent.objects.get().status == "succeeded"
    assert handlers_for("testapp.OrderPlaced")  # the handler the batch ran
