"""What one handler delivery costs the database, counted statement by statement.

The handler task's body (``run_handler_task``) runs an idempotent handler that makes one
``create()``: the inbox row and the effect commit in one transaction, and the inbox row
is one upsert (no read first, no savepoint) where the database has one. These tests run
outside the test transaction, so ``BEGIN`` and ``COMMIT`` are counted as a worker sends
them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_uow import Envelope
from django_uow.delivery.handlers import event_handler, registry
from django_uow.models import ProcessedEvent
from django_uow.tasks import run_handler_task
from tests.testapp.events import Pinged
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

HANDLER = "tests.delivery_cost.effect"

#: Statements of one successful delivery, per vendor: BEGIN, the inbox upsert, the
#: effect's INSERT, COMMIT. MySQL/MariaDB cannot tell from its upsert whether the row
#: was already succeeded: BEGIN, a locked read, then the INSERT in a savepoint (for a
#: racing duplicate), the effect, COMMIT.
DELIVERY_STATEMENTS = {"postgresql": 4, "sqlite": 4, "mysql": 7}


class StandInTask:
    """The parts of a bound Celery task that ``run_handler_task`` uses."""

    def __init__(self) -> None:
        self.request = SimpleNamespace(retries=0)
        self.app = None


@pytest.fixture
def effect_handler() -> Iterator[None]:
    @event_handler(Pinged, name=HANDLER)
    def write_effect(event: Pinged, envelope: Envelope) -> None:
        Effect.objects.create(event_id=envelope.event_id, handler=HANDLER)

    yield
    registry.unregister(HANDLER)


def message() -> dict[str, Any]:
    return Envelope(
        event_id=uuid.uuid4(),
        event_type=Pinged.event_type,
        aggregate_type="",
        aggregate_id="",
        aggregate_version=None,
        occurred_at=timezone.now(),
        payload=Pinged(note="x").to_payload(),
        headers={"schema_version": 1},
    ).to_message()


def test_one_delivery_is_the_inbox_upsert_and_the_effect_in_one_transaction(
    effect_handler: None, django_assert_num_queries: Any
) -> None:
    sent = message()
    expected = DELIVERY_STATEMENTS[connection.vendor]
    with django_assert_num_queries(expected) as captured:
        assert run_handler_task(StandInTask(), sent, HANDLER) is True
    statements = [q["sql"] for q in captured.captured_queries]
    inbox = ProcessedEvent._meta.db_table
    assert statements[0].upper() == "BEGIN"
    assert statements[-1].upper() == "COMMIT"
    if connection.vendor != "mysql":
        # The inbox row is written without being read first.
        assert not any(s.upper().startswith("SELECT") for s in statements)
        assert sum(inbox in s for s in statements) == 1
    row = ProcessedEvent.objects.get(event_id=sent["event_id"], handler=HANDLER)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert row.processed_at is not None and row.first_attempt_at == row.processed_at
    assert Effect.objects.filter(event_id=sent["event_id"]).count() == 1


def test_a_redelivery_is_skipped_in_the_same_statements_without_the_effect(
    effect_handler: None, django_assert_num_queries: Any
) -> None:
    sent = message()
    assert run_handler_task(StandInTask(), sent, HANDLER) is True
    # The upsert changes nothing and returns no row: the handler does not run, its
    # transaction ends with nothing written.
    expected = DELIVERY_STATEMENTS[connection.vendor] - 1
    if connection.vendor == "mysql":
        expected = 3  # the locked read finds the row succeeded: no INSERT, no savepoint
    with django_assert_num_queries(expected):
        assert run_handler_task(StandInTask(), sent, HANDLER) is False
    row = ProcessedEvent.objects.get(event_id=sent["event_id"], handler=HANDLER)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert Effect.objects.filter(event_id=sent["event_id"]).count() == 1
