"""Outbox health at a glance: counts per status, relay lag, and what blocks delivery.

Owed rows (pending, failed) are counted exactly: the partial indexes on owed rows keep
that cheap however many dispatched rows the table holds. Dispatched rows are counted
only up to ``dispatched_cap`` (a ``LIMIT`` inside the count), because an exact count
would read the whole table on every admin page view and every monitoring scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import Count, Min
from django.utils import timezone

from .deliveries import consumer_lag, failed_deliveries
from .models import OutboxEvent
from .waiting import blocked_summary, wait_reasons

#: Dispatched rows are counted up to this many; ``dispatched_capped`` says when the cap hit.
DISPATCHED_COUNT_CAP = 10_000
#: The oldest pending event is looked for among this many earliest-due pending events.
PENDING_SCAN_CAP = 100_000


def outbox_status(
    using: str = "default", *, dispatched_cap: int | None = DISPATCHED_COUNT_CAP
) -> dict[str, Any]:
    """Return counts per status and the relay lag of the outbox on database ``using``.

    Keys: ``database``, ``counts`` (``pending``, ``dispatched``, ``failed``),
    ``dispatched_capped`` (the dispatched count stopped at ``dispatched_cap``; pass
    ``None`` for an exact count), ``oldest_pending_created_at`` (ISO 8601 or ``None``)
    and ``lag_seconds``: the age of the oldest event still owed (pending), measured
    from its ``created_at``; ``0.0`` when nothing is pending. With more than
    ``PENDING_SCAN_CAP`` pending events the oldest is sought among the earliest due.
    """
    Status = OutboxEvent.Status
    events = OutboxEvent.objects.using(using)
    counts = {status: 0 for status in Status.values}
    owed = (
        events.filter(status__in=[Status.PENDING, Status.FAILED])
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for status, n in owed:
        counts[status] = n

    dispatched = events.filter(status=Status.DISPATCHED).order_by()
    if dispatched_cap is None:
        counts[Status.DISPATCHED] = dispatched.count()
        capped = False
    else:
        counts[Status.DISPATCHED] = dispatched[: dispatched_cap + 1].count()
        capped = counts[Status.DISPATCHED] > dispatched_cap
        if capped:
            counts[Status.DISPATCHED] = dispatched_cap

    oldest: datetime | None = None
    if counts[Status.PENDING]:
        # MIN over the pending rows in due order: the partial index on pending rows serves
        # the inner query. A plain MIN(created_at) lets PostgreSQL walk the created_at
        # index from the oldest row, through every dispatched row, to the newest pending.
        due = (
            events.filter(status=Status.PENDING)
            .order_by("available_at", "id")
            .values("created_at")[:PENDING_SCAN_CAP]
        )
        oldest = due.aggregate(oldest=Min("created_at"))["oldest"]
    lag = max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
    return {
        "database": using,
        "counts": counts,
        "dispatched_capped": capped,
        "oldest_pending_created_at": oldest.isoformat() if oldest is not None else None,
        "lag_seconds": lag,
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

    On PostgreSQL a new transaction is ``REPEATABLE READ READ ONLY``: every statement
    sees the same snapshot. Inside an already open transaction (a test case, a caller's
    ``atomic``) the reads join it and see what its isolation level gives them.
    """
    connection = connections[using]
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=using):
        if outermost and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
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
    events, most events waiting first), ``consumer_lag`` (handler deliveries published
    and not handled yet, and the oldest one's age) and ``handler_failures`` (how many
    handler deliveries failed for good, and the ``top`` most recent).
    """
    with snapshot(using):
        now = timezone.now()
        report = outbox_status(using, dispatched_cap=dispatched_cap)
        report["oldest_pending"] = _oldest_pending(using, report, now)
        report.update(blocked_summary(using, top=top, now=now, error_chars=REPORT_ERROR_CHARS))
        lag = consumer_lag(using, now=now)
        report["consumer_lag"] = {
            "owed": lag.owed,
            "oldest_published_at": lag.as_dict()["oldest_published_at"],
            "age_seconds": lag.age_seconds,
        }
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
