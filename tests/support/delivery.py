"""Rows and brokers for the delivery-promise tests."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.outbox.writing import Schedule, write_events
from tests.testapp.models import Effect

SEQUENCED = "orders.sequenced"
SEQUENCE_HANDLER = "testapp.sequence"
CELERY = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}


def outbox_rows(
    event_type: str,
    payloads: Sequence[dict[str, Any]],
    *,
    aggregate_id: str = "1",
    versions: Sequence[int | None] | None = None,
    status: str = "pending",
) -> list[OutboxEvent]:
    """Write one event per payload with one INSERT, times from the database's clock."""
    rows = [
        OutboxEvent(
            event_id=uuid.uuid4(),
            event_type=event_type,
            aggregate_type="testapp.order" if aggregate_id else "",
            aggregate_id=aggregate_id,
            aggregate_version=versions[i] if versions is not None else None,
            payload=payload,
            headers={"schema_version": 1},
            status=status,
        )
        for i, payload in enumerate(payloads)
    ]
    write_events(rows, "default", schedules=[Schedule()] * len(rows))
    stored = {
        r.event_id: r for r in OutboxEvent.objects.filter(event_id__in=[r.event_id for r in rows])
    }
    return [stored[r.event_id] for r in rows]


def sequenced_rows(
    versions: Sequence[int], *, aggregate_id: str = "1", status: str = "pending"
) -> list[OutboxEvent]:
    """``orders.sequenced`` events (the ordered handler's) of one aggregate, in this order."""
    return outbox_rows(
        SEQUENCED,
        [{"order_id": int(aggregate_id), "seq": v} for v in versions],
        aggregate_id=aggregate_id,
        versions=versions,
        status=status,
    )


def effects(handler: str) -> list[uuid.UUID]:
    """The event ids of ``handler``'s Effect rows, in the order they were written."""
    return list(
        Effect.objects.filter(handler=handler).order_by("id").values_list("event_id", flat=True)
    )


def delivery(row: OutboxEvent, handler: str) -> ProcessedEvent | None:
    return ProcessedEvent.objects.filter(event_id=row.event_id, handler=handler).first()


def handler_running(row: OutboxEvent, handler: str) -> bool:
    """True while a worker runs ``handler`` for ``row``: its unit holds the delivery row's
    lock (PostgreSQL, MariaDB)."""
    from django.db import DatabaseError, transaction

    try:
        with transaction.atomic():
            list(
                ProcessedEvent.objects.select_for_update(nowait=True)
                .filter(event_id=row.event_id, handler=handler)
                .values_list("pk", flat=True)
            )
    except DatabaseError:
        return True
    return False


def queued(app: Any, queue: str = "celery") -> int:
    """Messages waiting in a Celery queue of the suite's Redis broker."""
    with app.connection_for_write() as conn:
        return int(conn.default_channel.client.llen(queue))
