"""Delivery promises on a real Celery worker, past Celery's own limits.

Celery's ``task.retry(max_retries=None)`` means "the task's default", which is 3: a
handler with ``MAX_ATTEMPTS = 6`` stopped at 4 attempts, never dead-lettered, and an
ordered follower stopped waiting for its predecessor after its fourth re-queue without
being marked blocked. Every test here runs a worker process past those limits.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse

from django_uow.delivery.handlers import registry
from django_uow.delivery.rows import record_success
from django_uow.models import ProcessedEvent
from django_uow.publishers import CeleryPublisher
from django_uow.relay import relay_pending
from tests.support.delivery import (
    CELERY,
    SEQUENCE_HANDLER,
    delivery,
    effects,
    handler_running,
    outbox_rows,
    queued,
    sequenced_rows,
)
from tests.support.processes import running, start_worker, wait_for

pytestmark = [pytest.mark.celery, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_failing_handler_runs_exactly_max_attempts_on_a_worker_then_dead_letters(
    celery_app: Any,
) -> None:
    policy = {**CELERY, "MAX_ATTEMPTS": 6, "BACKOFF": [0.01, 0.05]}
    (row,) = outbox_rows("testapp.OrderPlaced", [{"order_id": 7, "total": "1.00"}])
    worker = start_worker(extra=policy, UOW_HANDLER_BEHAVIOUR="raise")
    with running(worker), override_settings(DJANGO_UOW=policy):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 1

        def dead() -> bool:
            found = delivery(row, "testapp.record_placed")
            return found is not None and found.status == "failed"

        assert wait_for(dead, timeout=60), delivery(row, "testapp.record_placed").__dict__  # type: ignore[union-attr]
        time.sleep(1.5)  # a seventh attempt would show here
    found = delivery(row, "testapp.record_placed")
    assert found is not None
    assert (found.status, found.attempts) == ("failed", 6)
    assert "handler refused order 7" in found.last_error
    assert effects("placed") == []


def test_forty_events_of_one_aggregate_reach_an_ordered_handler_in_order_with_defaults(
    celery_app: Any,
) -> None:
    rows = sequenced_rows(list(range(1, 41)))
    worker = start_worker("--pool=threads", "--concurrency=4", "--prefetch-multiplier=4")
    with running(worker), override_settings(DJANGO_UOW=CELERY):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 40
        assert wait_for(lambda: len(effects("sequenced")) >= 40, timeout=120), (
            f"{len(effects('sequenced'))} of 40 handled; "
            f"{Counter(ProcessedEvent.objects.values_list('status', flat=True))}"
        )
        time.sleep(1.0)  # a duplicate run would show here
    assert effects("sequenced") == [r.event_id for r in rows]  # each once, in version order
    statuses = ProcessedEvent.objects.filter(handler=SEQUENCE_HANDLER)
    assert Counter(statuses.values_list("status", "attempts")) == {("succeeded", 1): 40}


def test_an_ordered_wait_that_runs_out_is_blocked_then_woken_by_its_predecessor(
    celery_app: Any,
) -> None:
    policy = {**CELERY, "ORDERED_WAIT": 0.5}
    first, second, third = sequenced_rows([1, 2, 3], status="dispatched")
    handler = registry.get(SEQUENCE_HANDLER)
    worker = start_worker(extra=policy)
    with running(worker), override_settings(DJANGO_UOW=policy):
        publisher = CeleryPublisher(celery_app)
        publisher.send_deliveries([(second.to_envelope(), handler), (third.to_envelope(), handler)])

        def blocked() -> bool:
            return all(
                getattr(delivery(r, SEQUENCE_HANDLER), "status", "") == "blocked"
                for r in (second, third)
            )

        assert wait_for(blocked, timeout=30)
        assert effects("sequenced") == []
        publisher.send_deliveries([(first.to_envelope(), handler)])
        assert wait_for(lambda: len(effects("sequenced")) >= 3, timeout=30)
    assert effects("sequenced") == [first.event_id, second.event_id, third.event_id]
    for row in (first, second, third):
        assert delivery(row, SEQUENCE_HANDLER).status == "succeeded"  # type: ignore[union-attr]


def test_redeliver_and_rerun_while_the_handler_runs_have_its_effect_once(
    celery_app: Any, admin_client: Client
) -> None:
    """The command and the admin's Re-run wait for the running handler's row lock, then
    find it succeeded: they change nothing and send nothing."""
    by_command, by_admin = outbox_rows(
        "orders.cancelled", [{"order_id": 1, "reason": "a"}, {"order_id": 2, "reason": "b"}]
    )
    worker = start_worker(UOW_HANDLER_SLEEP="4")
    with running(worker), override_settings(DJANGO_UOW=CELERY):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 2
        handler = "testapp.record_cancelled"
        assert wait_for(
            lambda: handler_running(by_command, handler) and handler_running(by_admin, handler),
            timeout=30,
        )
        out = io.StringIO()
        call_command(
            "redeliver",
            "--event",
            str(by_command.event_id),
            "--handler",
            "testapp.record_cancelled",
            stdout=out,
        )
        assert "skipped" in out.getvalue()
        row = delivery(by_admin, "testapp.record_cancelled")
        assert row is not None
        page = admin_client.post(
            reverse("admin:django_uow_processedevent_changelist"),
            {"action": "rerun", "_selected_action": [row.pk]},
            follow=True,
        )
        assert "skipped: its handler already succeeded" in page.content.decode()
        assert queued(celery_app) == 0
        time.sleep(5)  # a second copy would have run by now
    assert Counter(effects("cancelled")) == {by_command.event_id: 1, by_admin.event_id: 1}
    for row_ in (by_command, by_admin):
        found = delivery(row_, "testapp.record_cancelled")
        assert found is not None and (found.status, found.attempts) == ("succeeded", 1)


def test_a_lost_wake_up_is_repaired_by_the_sweep(celery_app: Any) -> None:
    """The predecessor's success committed, then its worker died before it woke the
    follower: the next sweep publishes the blocked follower, once."""
    from django_uow.tasks import run_relay

    first, second = sequenced_rows([1, 2], status="dispatched")
    ProcessedEvent.objects.create(
        event_id=second.event_id,
        handler=SEQUENCE_HANDLER,
        status="blocked",
        event_type=second.event_type,
        aggregate_type=second.aggregate_type,
        aggregate_id=second.aggregate_id,
    )
    record_success(SEQUENCE_HANDLER, first.to_envelope(), using="default")  # no wake-up
    with override_settings(DJANGO_UOW=CELERY):
        assert run_relay()["woken"] == 1
        assert run_relay()["woken"] == 0
    assert queued(celery_app) == 1
    assert delivery(second, SEQUENCE_HANDLER).status == "published"  # type: ignore[union-attr]
