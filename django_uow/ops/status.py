"""Outbox health at a glance: counts per status, relay lag, and what blocks delivery.

Owed rows (pending, failed) are counted exactly: the partial indexes on owed rows keep
that cheap however many dispatched rows the table holds. Dispatched and discarded rows
are counted only up to ``dispatched_cap`` (a ``LIMIT`` inside the count), because an
exact count would read the whole table on every admin page view and every monitoring
scrape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connections, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from ..db.features import features
from ..delivery.rows import consumer_lag, failed_deliveries
from ..models import OutboxEvent
from .holds import blocked_summary, wait_reasons

#: Dispatched rows are counted up to this many; ``dispatched_capped`` says when the cap hit.
DISPATCHED_COUNT_CAP = 10_000
#: The oldest pending event is looked for among this many earliest-due pending events.
PENDING_SCAN_CAP = 100_000


@dataclass(frozen=True)
class Scalar:
    """One number of a status snapshot: a scalar subquery and its parameters."""

    sql: str
    params: Sequence[Any] = ()


def read_scalars(using: str, scalars: Mapping[str, Scalar]) -> dict[str, Any]:
    """Evaluate every scalar subquery in ONE ``SELECT``: one statement sees one snapshot.

    Separate queries see separate snapshots under READ COMMITTED (PostgreSQL's default,
    and inside a caller's ``atomic``): a relay acknowledging between them once gave
    "2 pending, lag 0.0". One statement agrees with itself on every database.
    """
    sql = "SELECT " + ", ".join(f"({scalar.sql})" for scalar in scalars.values())
    params = [param for scalar in scalars.values() for param in scalar.params]
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return dict(zip(scalars, row, strict=True))


def outbox_scalars(using: str, *, dispatched_cap: int | None) -> dict[str, Scalar]:
    """The numbers behind ``outbox_status``, as scalars for ``read_scalars``.

    To report more in the same snapshot, add scalars here (or merge a dict of your own
    into this one) and read them from the result of ``read_scalars``.
    """
    connection = connections[using]
    now = timezone.now()
    meta = OutboxEvent._meta
    table = connection.ops.quote_name(meta.db_table)
    status, created, available, pk, deliver = (
        connection.ops.quote_name(str(getattr(meta.get_field(name), "column", name)))
        for name in ("status", "created_at", "available_at", "id", "deliver_at")
    )
    Status = OutboxEvent.Status
    count = f"SELECT COUNT(*) FROM {table} WHERE {status} = %s"

    def settled(value: str) -> Scalar:
        if dispatched_cap is None:
            return Scalar(count, [value])
        # COUNT over a LIMITed subquery: stops after dispatched_cap + 1 rows.
        return Scalar(
            f"SELECT COUNT(*) FROM (SELECT 1 AS one FROM {table} WHERE {status} = %s "
            f"LIMIT {int(dispatched_cap) + 1}) capped",
            [value],
        )

    return {
        "pending": Scalar(count, [Status.PENDING.value]),
        # Pending events recorded with a delay and not due yet (part of "pending"); the
        # pending-rows index serves the range on available_at, never before deliver_at.
        "scheduled": Scalar(
            f"{count} AND {available} > %s AND {deliver} > %s",
            [Status.PENDING.value, *[connection.ops.adapt_datetimefield_value(now)] * 2],
        ),
        "failed": Scalar(count, [Status.FAILED.value]),
        "dispatched": settled(Status.DISPATCHED.value),
        "discarded": settled(Status.DISCARDED.value),
        # MIN over the pending rows in due order: the partial index on pending rows serves
        # the inner query, whatever the number of dispatched rows. A scheduled event is
        # owed from its due time, not from when it was recorded.
        "oldest_pending": Scalar(
            f"SELECT MIN(due.owed_since) FROM (SELECT COALESCE({deliver}, {created}) AS "
            f"owed_since FROM {table} "
            f"WHERE {status} = %s ORDER BY {available}, {pk} LIMIT {PENDING_SCAN_CAP}) due",
            [Status.PENDING.value],
        ),
    }


def as_datetime(value: Any, using: str) -> datetime | None:
    """A raw ``created_at`` from ``read_scalars`` as an aware datetime, on every backend."""
    if value is None:
        return None
    connection = connections[using]
    field = OutboxEvent._meta.get_field("created_at")
    column = field.get_col(OutboxEvent._meta.db_table)
    for converter in connection.ops.get_db_converters(column) + field.get_db_converters(connection):
        value = converter(value, column, connection)
    if isinstance(value, str):  # a backend without a converter for raw text
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    aware: datetime | None = value
    return aware


def outbox_status(
    using: str = "default", *, dispatched_cap: int | None = DISPATCHED_COUNT_CAP
) -> dict[str, Any]:
    """Return counts per status and the relay lag of the outbox on database ``using``.

    Keys: ``database``, ``counts`` (``pending``, ``dispatched``, ``failed``,
    ``discarded``), ``dispatched_capped`` (the dispatched count stopped at
    ``dispatched_cap``; pass ``None`` for an exact count; the discarded count stops
    there too, with ``discarded_capped``), ``oldest_pending_created_at`` (ISO 8601 or ``None``)
    and ``lag_seconds``: the age of the oldest event still owed (pending), measured
    from its ``created_at`` (a scheduled event's from its due time, ``deliver_at``, so
    one not due yet adds no lag); ``0.0`` when nothing is pending. With more than
    ``PENDING_SCAN_CAP`` pending events the oldest is sought among the earliest due.

    Everything is read with one statement (``read_scalars``), so the counts and the
    oldest pending event come from one snapshot: pending > 0 always has its lag.
    ``scheduled`` counts the pending events recorded with a delay that are not due yet.
    """
    values = read_scalars(using, outbox_scalars(using, dispatched_cap=dispatched_cap))
    Status = OutboxEvent.Status
    counts = {status: 0 for status in Status.values}
    counts[Status.PENDING] = int(values["pending"])
    counts[Status.FAILED] = int(values["failed"])
    counts[Status.DISPATCHED] = int(values["dispatched"])
    counts[Status.DISCARDED] = int(values["discarded"])
    capped = discarded_capped = False
    if dispatched_cap is not None and counts[Status.DISPATCHED] > dispatched_cap:
        capped, counts[Status.DISPATCHED] = True, dispatched_cap
    if dispatched_cap is not None and counts[Status.DISCARDED] > dispatched_cap:
        discarded_capped, counts[Status.DISCARDED] = True, dispatched_cap
    oldest = as_datetime(values["oldest_pending"], using)
    lag = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
    return {
        "database": using,
        "counts": counts,
        "dispatched_capped": capped,
        "discarded_capped": discarded_capped,
        "oldest_pending_created_at": oldest.isoformat() if oldest is not None else None,
        "lag_seconds": lag,
        "scheduled": int(values["scheduled"]),
    }


#: Blocking heads listed by ``outbox_report`` (the full list is the admin's blocked view).
TOP_BLOCKING_HEADS = 5
#: Most recent failed handler deliveries listed by ``outbox_report``.
RECENT_HANDLER_FAILURES = 5
#: Characters of a stored error in ``outbox_report``.
REPORT_ERROR_CHARS = 500


@contextmanager
def snapshot(using: str) -> Iterator[None]:
    """Run the enclosed reads in one transaction, so their numbers agree.

    On PostgreSQL and MySQL/MariaDB a new transaction is ``REPEATABLE READ, READ ONLY``
    (Django runs MySQL sessions at ``READ COMMITTED``, where each statement would see
    its own snapshot). Inside an already open transaction (a test case, a caller's
    ``atomic``) the reads join it, with no savepoint (they only read), and see what its
    isolation level gives them.
    """
    connection = connections[using]
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using, savepoint=False):
        if outermost and features(connection).snapshot_transactions:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def outbox_report(
    using: str = "default",
    *,
    dispatched_cap: int | None = DISPATCHED_COUNT_CAP,
    top: int = TOP_BLOCKING_HEADS,
) -> dict[str, Any]:
    """``outbox_status()`` plus what an operator needs to act, read in one snapshot.

    Adds ``oldest_pending`` (the event behind the relay lag and ``waiting_reason``, why
    it waits), ``blocked_aggregates`` (aggregates whose first owed event is failed or
    backing off after a failed attempt), ``blocking_heads`` (the ``top`` of those
    events, most events waiting first), ``consumer_lag`` (handler deliveries owed,
    blocked and failed, and the age of the oldest one not handled yet: the numbers of
    ``django_uow.health.outbox_health``) and ``handler_failures`` (how many handler
    deliveries failed for good, and the ``top`` most recent).
    """
    with snapshot(using):
        now = timezone.now()
        report = outbox_status(using, dispatched_cap=dispatched_cap)
        report["oldest_pending"] = _oldest_pending(using, report, now)
        report.update(blocked_summary(using, top=top, now=now, error_chars=REPORT_ERROR_CHARS))
        # The health view's delivery subqueries, on the database's clock, so both agree.
        lag = consumer_lag(using)
        report["consumer_lag"] = lag.as_dict()
        report["handler_failures"] = {
            "count": lag.failed,
            "recent": _recent_failures(using, top) if lag.failed else [],
        }
    return report


def _recent_failures(using: str, top: int) -> list[dict[str, Any]]:
    rows = failed_deliveries(using).only(
        "event_id", "event_type", "handler", "attempts", "last_error", "last_attempt_at"
    )[:top]
    return [
        {
            "event_id": str(row.event_id),
            "event_type": row.event_type,
            "handler": row.handler,
            "attempts": row.attempts,
            "last_attempt_at": row.last_attempt_at.isoformat() if row.last_attempt_at else None,
            "last_error": _cap(row.last_error, REPORT_ERROR_CHARS),
        }
        for row in rows
    ]


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _oldest_pending(using: str, status: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The pending event whose age is the relay lag, and why it waits."""
    if not status["counts"][OutboxEvent.Status.PENDING]:
        return None
    event = (
        OutboxEvent.objects.using(using)
        .filter(
            status=OutboxEvent.Status.PENDING,
            created_at=datetime.fromisoformat(status["oldest_pending_created_at"]),
        )
        .defer("payload", "headers", "last_error")
        .order_by("id")
        .first()
    )
    if event is None:
        return None
    reason = wait_reasons([event], using, now=now)[event.pk]
    return {
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "attempts": event.attempts,
        "waiting_reason": reason.as_dict(),
    }
