"""The health view and the one-statement health numbers, on a real database."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from django.test import Client, RequestFactory, override_settings
from django.utils import timezone

from django_uow.models import OutboxEvent
from django_uow.ops.health import outbox_health
from django_uow.ops.status import outbox_status
from django_uow.views import health
from tests.support.relay import interleaved, make_rows

db = pytest.mark.django_db


@pytest.fixture
def outbox() -> list[OutboxEvent]:
    rows = make_rows(interleaved(2, 3))  # six pending events, due a second ago
    OutboxEvent.objects.update(available_at=timezone.now() - datetime.timedelta(seconds=1))
    OutboxEvent.objects.filter(pk=rows[0].pk).update(
        created_at=timezone.now() - datetime.timedelta(seconds=120)
    )
    OutboxEvent.objects.filter(pk=rows[1].pk).update(status="failed")
    OutboxEvent.objects.filter(pk=rows[2].pk).update(
        status="dispatched", dispatched_at=timezone.now()
    )
    OutboxEvent.objects.filter(pk=rows[3].pk).update(
        available_at=timezone.now() + datetime.timedelta(minutes=5)
    )
    return rows


@db
def test_the_numbers_come_from_one_statement(
    outbox: list[OutboxEvent], django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        numbers = outbox_health()
    assert (numbers.pending, numbers.failed, numbers.scheduled) == (4, 1, 1)
    assert numbers.lag_seconds == pytest.approx(120, abs=1)
    assert numbers.oldest_pending_created_at is not None
    # The oldest pending event is due (available since it was written), so the relay is late:
    assert numbers.due_lag_seconds == pytest.approx(1, abs=1)
    status = outbox_status()
    assert status["counts"]["pending"] == numbers.pending
    assert status["counts"]["failed"] == numbers.failed


@db
def test_a_scheduled_event_adds_no_lag_before_it_is_due() -> None:
    now = timezone.now()
    (row,) = make_rows([("1", "reminder")])
    later = now + datetime.timedelta(days=7)
    OutboxEvent.objects.filter(pk=row.pk).update(
        created_at=now - datetime.timedelta(hours=1), deliver_at=later, available_at=later
    )
    numbers = outbox_health(now=now)
    assert (numbers.pending, numbers.scheduled, numbers.lag_seconds) == (1, 1, 0.0)
    due = now - datetime.timedelta(seconds=30)
    OutboxEvent.objects.filter(pk=row.pk).update(deliver_at=due, available_at=due)
    numbers = outbox_health(now=now)
    assert numbers.scheduled == 0
    assert numbers.lag_seconds == pytest.approx(30, abs=1)  # from its due time, not 1 h


@db
def test_an_empty_outbox_is_healthy(client: Client) -> None:
    response = client.get("/health/outbox/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["problems"] == []
    assert (body["pending"], body["failed"], body["lag_seconds"]) == (0, 0, 0.0)
    assert "no-cache" in response["Cache-Control"]


@db
def test_thresholds_turn_the_answer_into_503(client: Client, outbox: list[OutboxEvent]) -> None:
    assert client.get("/health/outbox/").status_code == 200  # no thresholds by default
    with override_settings(DJANGO_UOW={"HEALTH": {"MAX_LAG": 60}}):
        response = client.get("/health/outbox/")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["problems"][0].startswith("relay lag 12")
    assert "MAX_LAG 60s" in body["problems"][0]
    with override_settings(DJANGO_UOW={"HEALTH": {"MAX_LAG": 600, "MAX_FAILED": 0}}):
        response = client.get("/health/outbox/")
    assert response.status_code == 503
    assert response.json()["problems"] == [
        "1 dead letter(s) (1 failed event(s), 0 failed handler delivery(ies)) is over MAX_FAILED 0"
    ]
    with override_settings(DJANGO_UOW={"HEALTH": {"MAX_LAG": 600, "MAX_FAILED": 1}}):
        assert client.get("/health/outbox/").status_code == 200


def test_a_database_that_is_down_is_a_503_with_a_json_error(django_db_blocker: Any) -> None:
    request = RequestFactory().get("/health/outbox/")
    with django_db_blocker.unblock():  # a real connection attempt to a closed port
        response = health(request, using="down")
    assert response.status_code == 503
    body = json.loads(response.content)
    assert body["status"] == "unavailable" and body["database"] == "down"
    assert body["error"].startswith("cannot read the outbox: OperationalError")


@db
def test_only_safe_methods(client: Client) -> None:
    assert client.post("/health/outbox/").status_code == 405
