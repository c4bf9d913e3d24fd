"""Health numbers of the outbox and of the handler deliveries in ONE cheap statement, for
probes and metrics scrapes.

Each number is a scalar subquery that a partial index serves (pending, failed and
discarded events; owed, failed and blocked deliveries each have one), so the cost does
not grow with the dispatched events and succeeded deliveries the tables hold. One
statement is one snapshot, so the numbers agree with each other; it also reads the
database server's clock, so every age is measured on one clock whichever process asks.

The delivery numbers matter as much as the outbox's: under ``CeleryPublisher`` an event
is ``dispatched`` once the broker has it, and a handler that then fails for good, or
workers that fall behind, show only in the inbox.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db import connections

from ..db.clock import as_aware
from ..delivery.lag import ConsumerLag, DeliverySubqueries, clock_sql, consumer_lag_of
from ..models import OutboxEvent, OutboxStatus


@dataclass(frozen=True)
class OutboxHealth:
    """Counts and ages of owed work; ``lag_seconds`` is the age of the oldest pending event.

    The ``deliveries_*`` numbers and ``consumer_lag_seconds`` are the handler deliveries'
    (``django_uow.delivery_health.ConsumerLag``): owed (published or retrying), failed
    for good, blocked (ordered handlers waiting for an earlier event), and the age of the
    oldest delivery not handled yet, from its first publish.
    """

    pending: int
    failed: int
    scheduled: int
    oldest_pending_created_at: datetime | None
    lag_seconds: float
    #: How long the oldest DUE pending event has been due: how late the relay is.
    due_lag_seconds: float
    #: Dead letters an operator discarded (kept for audit until retention prunes them).
    discarded: int = 0
    deliveries_owed: int = 0
    deliveries_failed: int = 0
    deliveries_blocked: int = 0
    consumer_lag_seconds: float = 0.0
    #: First publish (or first attempt, inline) of the oldest delivery not handled yet.
    oldest_unhandled_published_at: datetime | None = None

    @property
    def dead_letters(self) -> int:
        """Failed outbox events plus failed handler deliveries: what ``MAX_FAILED`` counts."""
        return self.failed + self.deliveries_failed

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("oldest_pending_created_at", "oldest_unhandled_published_at"):
            value = data[key]
            data[key] = value.isoformat() if value is not None else None
        return data


def outbox_health(using: str = "default", *, now: datetime | None = None) -> OutboxHealth:
    """Read the outbox and handler-delivery numbers and their ages with one statement.

    ``scheduled`` counts pending events not due yet (backing off, or delivered later).
    The lag of a scheduled event (``record_event(delay=...)``) counts from its due time.
    Ages are measured on the database server's clock, read in the same statement;
    ``now`` measures them from that time instead.
    """
    connection = connections[using]
    clock, clock_params = clock_sql(connection, now)
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    status = connection.ops.quote_name("status")
    available = connection.ops.quote_name("available_at")
    created = connection.ops.quote_name("created_at")
    deliver = connection.ops.quote_name("deliver_at")
    pending, failed = OutboxStatus.PENDING.value, OutboxStatus.FAILED.value
    outbox: list[tuple[str, list[Any]]] = [
        (f"SELECT COUNT(*) FROM {table} WHERE {status} = %s", [pending]),
        (f"SELECT COUNT(*) FROM {table} WHERE {status} = %s", [failed]),
        (
            f"SELECT COUNT(*) FROM {table} WHERE {status} = %s AND {available} > {clock}",
            [pending, *clock_params],
        ),
        (
            f"SELECT MIN(COALESCE({deliver}, {created})) FROM {table} WHERE {status} = %s",
            [pending],
        ),
        (
            f"SELECT MIN({available}) FROM {table} WHERE {status} = %s AND {available} <= {clock}",
            [pending, *clock_params],
        ),
        (
            f"SELECT COUNT(*) FROM {table} WHERE {status} = %s",
            [OutboxStatus.DISCARDED.value],
        ),
    ]
    deliveries = DeliverySubqueries.of(connection).sql
    sql = (
        "SELECT "
        + ", ".join(f"({subquery})" for subquery, _ in outbox)
        + ", "
        + ", ".join(f"({subquery})" for subquery in deliveries)
        + f", {clock}"
    )
    params = [param for _, subquery_params in outbox for param in subquery_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *clock_params])
        row = cursor.fetchone()
    n_pending, n_failed, n_scheduled, oldest_raw, due_raw, n_discarded = row[: len(outbox)]
    measured_at = as_aware(row[-1])
    lag = consumer_lag_of(tuple(row[len(outbox) : -1]), measured_at)
    oldest, due = _as_datetime(oldest_raw), _as_datetime(due_raw)
    return OutboxHealth(
        pending=int(n_pending),
        failed=int(n_failed),
        scheduled=int(n_scheduled),
        oldest_pending_created_at=oldest,
        lag_seconds=_age(measured_at, oldest),
        due_lag_seconds=_age(measured_at, due),
        discarded=int(n_discarded),
        **_delivery_fields(lag),
    )


def _delivery_fields(lag: ConsumerLag) -> dict[str, Any]:
    return {
        "deliveries_owed": lag.owed,
        "deliveries_failed": lag.failed,
        "deliveries_blocked": lag.blocked,
        "consumer_lag_seconds": lag.age_seconds,
        "oldest_unhandled_published_at": lag.oldest_published_at,
    }


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


def _as_datetime(value: Any) -> datetime | None:
    """A raw ``MIN(created_at)`` as an aware datetime (SQLite returns text, MySQL naive UTC)."""
    return None if value is None else as_aware(value)
