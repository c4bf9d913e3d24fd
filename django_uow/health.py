"""Health numbers of the outbox in ONE cheap statement, for probes and metrics scrapes.

Each number is a scalar subquery that a partial index serves (pending, failed and
discarded rows each have one), so the cost does not grow with the dispatched rows the
table holds; one statement is one snapshot, so the numbers agree with each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .models import OutboxEvent, OutboxStatus


@dataclass(frozen=True)
class OutboxHealth:
    """Counts and ages of owed work; ``lag_seconds`` is the age of the oldest pending event."""

    pending: int
    failed: int
    scheduled: int
    oldest_pending_created_at: datetime | None
    lag_seconds: float
    #: How long the oldest DUE pending event has been due: how late the relay is.
    due_lag_seconds: float
    #: Dead letters an operator discarded (kept for audit until retention prunes them).
    discarded: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        oldest = self.oldest_pending_created_at
        data["oldest_pending_created_at"] = oldest.isoformat() if oldest is not None else None
        return data


def outbox_health(using: str = "default", *, now: datetime | None = None) -> OutboxHealth:
    """Read pending, failed, scheduled and discarded counts and the relay lag with one
    statement.

    ``scheduled`` counts pending events not due yet (backing off, or delivered later).
    The lag of a scheduled event (``record_event(delay=...)``) counts from its due time.
    """
    now = now or timezone.now()
    connection = connections[using]
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    status = connection.ops.quote_name("status")
    available = connection.ops.quote_name("available_at")
    created = connection.ops.quote_name("created_at")
    deliver = connection.ops.quote_name("deliver_at")
    sql = (
        f"SELECT (SELECT COUNT(*) FROM {table} WHERE {status} = %s), "
        f"(SELECT COUNT(*) FROM {table} WHERE {status} = %s), "
        f"(SELECT COUNT(*) FROM {table} WHERE {status} = %s AND {available} > %s), "
        f"(SELECT MIN(COALESCE({deliver}, {created})) FROM {table} WHERE {status} = %s), "
        f"(SELECT MIN({available}) FROM {table} WHERE {status} = %s AND {available} <= %s), "
        f"(SELECT COUNT(*) FROM {table} WHERE {status} = %s)"
    )
    pending, failed = OutboxStatus.PENDING.value, OutboxStatus.FAILED.value
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        params = [pending, failed, pending, at, pending, pending, at, OutboxStatus.DISCARDED.value]
        cursor.execute(sql, params)
        n_pending, n_failed, n_scheduled, oldest_raw, due_raw, n_discarded = cursor.fetchone()
    oldest, due = _as_datetime(oldest_raw), _as_datetime(due_raw)
    lag = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return OutboxHealth(
        pending=int(n_pending),
        failed=int(n_failed),
        scheduled=int(n_scheduled),
        oldest_pending_created_at=oldest,
        lag_seconds=lag,
        due_lag_seconds=max(0.0, (now - due).total_seconds()) if due is not None else 0.0,
        discarded=int(n_discarded),
    )


def _as_datetime(value: Any) -> datetime | None:
    """A raw ``MIN(created_at)`` as an aware datetime (SQLite returns text, MySQL naive UTC)."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    aware: datetime | None = value
    return aware
