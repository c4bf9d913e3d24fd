"""RETENTION per event type: exact names, "<app>.*" patterns, "*", and None = forever."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from django_uow.models import OutboxEvent
from django_uow.outbox.writing import write_events
from django_uow.relay import prune_outbox
from tests.project.test_checks import ids, run

pytestmark = pytest.mark.django_db

DAYS = datetime.timedelta(days=1)


def dispatched(event_type: str, age_days: float) -> None:
    row = OutboxEvent(
        event_id=uuid.uuid4(),
        event_type=event_type,
        aggregate_type="x.y",
        aggregate_id="1",
        payload={},
        headers={},
    )
    write_events([row], "default")
    OutboxEvent.objects.filter(event_id=row.event_id).update(
        status="dispatched", dispatched_at=timezone.now() - age_days * DAYS
    )


def left() -> list[tuple[str, int]]:
    now = timezone.now()
    return sorted(
        (t, round((now - d).total_seconds() / 86400))
        for t, d in OutboxEvent.objects.values_list("event_type", "dispatched_at")
    )


def test_an_audit_type_is_kept_forever_and_the_rest_pruned() -> None:
    for event_type in ("payments.PaymentTaken", "orders.OrderPlaced"):
        dispatched(event_type, 30)
        dispatched(event_type, 1)
    policy = {"*": 7 * DAYS, "payments.PaymentTaken": None}
    with override_settings(DJANGO_UOW={"RETENTION": policy}):
        assert prune_outbox() == 1
    assert left() == [
        ("orders.OrderPlaced", 1),
        ("payments.PaymentTaken", 1),
        ("payments.PaymentTaken", 30),
    ]


def test_exact_names_beat_app_patterns_which_beat_the_star() -> None:
    for event_type in ("orders.OrderPlaced", "orders.OrderCancelled", "shop.Other", "orderstats.X"):
        dispatched(event_type, 10)
    policy: dict[str, Any] = {
        "orders.*": None,  # keep the orders app's events...
        "orders.OrderCancelled": 2 * 86400,  # ...except cancellations, 2 days (seconds work)
        "*": 5 * DAYS,
    }
    with override_settings(DJANGO_UOW={"RETENTION": policy}):
        assert prune_outbox(batch_size=1) == 3  # bounded batches of one row
    assert left() == [("orders.OrderPlaced", 10)]  # "orderstats.X" is not in "orders.*"


def test_a_mapping_without_a_star_keeps_the_default_for_the_rest() -> None:
    dispatched("orders.OrderPlaced", 8)
    dispatched("orders.OrderPlaced", 6)
    with override_settings(DJANGO_UOW={"RETENTION": {"payments.PaymentTaken": None}}):
        assert prune_outbox() == 1  # the 7-day default
    assert left() == [("orders.OrderPlaced", 6)]


def test_owed_rows_are_never_pruned_whatever_the_rule() -> None:
    dispatched("orders.OrderPlaced", 30)
    OutboxEvent.objects.update(status="failed")
    with override_settings(DJANGO_UOW={"RETENTION": {"*": 1}}):
        assert prune_outbox() == 0
    assert OutboxEvent.objects.count() == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"*": 7 * DAYS, "testapp.OrderPlaced": None, "testapp.*": 86400}, []),
        ({"testapp.OrderPlacd": None}, ["django_uow.E033"]),
        ({"nope.*": None}, ["django_uow.E033"]),
        ({"*": -DAYS}, ["django_uow.E010"]),
        ({"*": "7 days"}, ["django_uow.E010"]),
    ],
)
def test_the_check_validates_the_names_and_ages(policy: Any, expected: list[str]) -> None:
    messages = run(RETENTION=policy)
    assert [i for i in ids(messages) if i in {"django_uow.E010", "django_uow.E033"}] == expected
    if expected == ["django_uow.E033"] and "OrderPlacd" in str(policy):
        assert "did you mean 'testapp.OrderPlaced'?" in messages[0].msg
