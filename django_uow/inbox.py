"""Running a handler for a delivered event, with its inbox row.

An idempotent handler (the default) runs inside a unit of work that first inserts
``(event_id, handler)`` into ``ProcessedEvent``; a redelivered event finds the row and
is skipped, so its effect happens once.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from .events import Envelope, event_context
from .handlers import Handler
from .models import ProcessedEvent
from .tracing import span
from .unit_of_work import UnitOfWork

logger = logging.getLogger("django_uow.handlers")


def _claim_processed(handler: Handler, envelope: Envelope, using: str) -> bool:
    """Insert the inbox row; False when this (event, handler) already had its effect."""
    connection = connections[using]
    # INSERT ... ON CONFLICT DO NOTHING RETURNING: PostgreSQL, SQLite 3.35+.
    if connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert
    ):
        table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
        field = ProcessedEvent._meta.get_field("event_id")
        processed_at = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (event_id, handler, processed_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (event_id, handler) DO NOTHING RETURNING id",
                [
                    field.get_db_prep_value(envelope.event_id, connection),
                    handler.name,
                    processed_at,
                ],
            )
            return cursor.fetchone() is not None
    try:
        with transaction.atomic(using=using):
            ProcessedEvent.objects.using(using).create(
                event_id=envelope.event_id, handler=handler.name
            )
    except IntegrityError:
        return False
    return True


def run_handler(handler: Handler, envelope: Envelope, *, using: str | None = None) -> bool:
    """Call ``handler`` for ``envelope``; return False when skipped as already processed.

    Runs inside ``event_context`` so events the handler records point back to this one.
    An idempotent handler runs inside a ``UnitOfWork`` that also holds its inbox row:
    if it raises, neither its effect nor the row is kept and a redelivery runs it again.
    """
    event = envelope.to_event()
    kwargs = {"envelope": envelope} if handler.wants_envelope else {}
    context = event_context(
        correlation_id=envelope.correlation_id or str(envelope.event_id),
        causation_id=str(envelope.event_id),
    )
    trace = span(
        f"handle {envelope.event_type}",
        envelope.headers,
        kind="consumer",
        handler=handler.name,
        event_id=str(envelope.event_id),
        aggregate_type=envelope.aggregate_type or None,
        aggregate_id=envelope.aggregate_id or None,
    )
    with context, trace:
        if not handler.idempotent:
            handler.func(event, **kwargs)
            return True
        db = using or router.db_for_write(ProcessedEvent)
        with UnitOfWork(using=db):
            if not _claim_processed(handler, envelope, db):
                logger.info(
                    "Skipped event %s (%s) of %s %s for handler %s: already processed",
                    envelope.event_id,
                    envelope.event_type,
                    envelope.aggregate_type,
                    envelope.aggregate_id,
                    handler.name,
                )
                return False
            handler.func(event, **kwargs)
    return True
