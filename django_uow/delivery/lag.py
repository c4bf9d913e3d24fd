"""Handler-delivery numbers for monitoring: owed, failed and blocked deliveries, and the
consumer lag, as scalar subqueries that one statement can carry.

Under ``CeleryPublisher`` the outbox row of an event is ``dispatched`` once the broker
has it; whatever its handlers do next lives only in the inbox. Each subquery here filters
on the predicate of a partial index of the inbox (owed, failed or blocked rows), so its
cost follows the deliveries still owed or dead, never the succeeded rows the table keeps.
The health view carries them in its own statement beside the outbox numbers;
``read_consumer_lag`` reads them alone. Ages count from the database server's clock, read
in the same statement, so every process reports the same lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from ..db.clock import as_aware, now_sql
from ..models import DeliveryStatus, ProcessedEvent

__all__ = ["ConsumerLag", "DeliverySubqueries", "consumer_lag_of", "read_consumer_lag"]

PUBLISHED, RETRYING = DeliveryStatus.PUBLISHED.value, DeliveryStatus.RETRYING.value
FAILED, BLOCKED = DeliveryStatus.FAILED.value, DeliveryStatus.BLOCKED.value


@dataclass(frozen=True)
class ConsumerLag:
    """Deliveries handed to consumers and not handled yet, and the dead letters.

    ``owed`` counts deliveries published or retrying, ``blocked`` those of ordered
    handlers waiting for an earlier event, ``failed`` the dead letters.
    ``oldest_published_at`` is the first publish of the oldest delivery not handled yet
    (owed or blocked; its first attempt when it was never published: inline mode), and
    ``age_seconds`` its age on the database's clock (``0.0`` when none is waiting).
    """

    owed: int
    oldest_published_at: datetime | None
    age_seconds: float
    failed: int
    blocked: int = 0

    def as_dict(self) -> dict[str, Any]:
        oldest = self.oldest_published_at
        return {
            "owed": self.owed,
            "oldest_published_at": oldest.isoformat() if oldest is not None else None,
            "age_seconds": self.age_seconds,
            "failed": self.failed,
            "blocked": self.blocked,
        }


@dataclass(frozen=True)
class DeliverySubqueries:
    """Five scalar subqueries without parameters; ``consumer_lag_of`` reads their values.

    Status values are written inline, in the same form as the partial indexes'
    predicates, so the planner matches them whatever the driver's parameter binding.
    """

    sql: tuple[str, ...]

    @classmethod
    def of(cls, connection: BaseDatabaseWrapper) -> DeliverySubqueries:
        quote = connection.ops.quote_name
        table = quote(ProcessedEvent._meta.db_table)
        status = quote("status")
        since = f"COALESCE({quote('published_at')}, {quote('first_attempt_at')})"
        owed = f"{status} IN ('{PUBLISHED}', '{RETRYING}')"
        failed = f"{status} = '{FAILED}'"
        blocked = f"{status} = '{BLOCKED}'"
        return cls(
            sql=(
                f"SELECT COUNT(*) FROM {table} WHERE {owed}",
                f"SELECT COUNT(*) FROM {table} WHERE {failed}",
                f"SELECT COUNT(*) FROM {table} WHERE {blocked}",
                # Two minima, one per partial index, rather than one over both statuses,
                # which no index's predicate would cover.
                f"SELECT MIN({since}) FROM {table} WHERE {owed}",
                f"SELECT MIN({since}) FROM {table} WHERE {blocked}",
            )
        )


def consumer_lag_of(values: tuple[Any, ...], now: datetime) -> ConsumerLag:
    """The ``ConsumerLag`` of the values of ``DeliverySubqueries``, aged from ``now``."""
    owed, failed, blocked, oldest_owed, oldest_blocked = values
    times = [as_aware(value) for value in (oldest_owed, oldest_blocked) if value is not None]
    oldest = min(times, default=None)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return ConsumerLag(
        owed=int(owed),
        oldest_published_at=oldest,
        age_seconds=age,
        failed=int(failed),
        blocked=int(blocked),
    )


def clock_sql(connection: BaseDatabaseWrapper, now: datetime | None) -> tuple[str, list[Any]]:
    """SQL for "now" in a monitoring statement: the server's clock, or ``now`` when given."""
    if now is None:
        return now_sql(connection.vendor), []
    return "%s", [connection.ops.adapt_datetimefield_value(now)]


def read_consumer_lag(using: str = "default", *, now: datetime | None = None) -> ConsumerLag:
    """Owed, failed and blocked deliveries and the consumer lag, in one statement.

    ``now`` measures the age from that time instead of the database server's clock.
    """
    connection = connections[using]
    clock, params = clock_sql(connection, now)
    subqueries = DeliverySubqueries.of(connection).sql
    sql = "SELECT " + ", ".join(f"({s})" for s in subqueries) + f", {clock}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        *values, measured_at = cursor.fetchone()
    return consumer_lag_of(tuple(values), as_aware(measured_at))
