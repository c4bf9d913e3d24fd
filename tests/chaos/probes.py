"""What the trial reads while it runs: the tables' truth, the broker, and what the library
reports about them (``outbox_status --json``, the health view, the Prometheus collector).

The truth comes from the tables in one statement (one snapshot): the committed events
whose handler effects do not exist yet, the deliveries owed, blocked and failed. The
library's reports are read between two such reads, so a check can bracket them.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.management import call_command
from django.db import connections, transaction
from django.test import RequestFactory

from django_uow.models import OutboxEvent, ProcessedEvent

from .handlers import EXPECTED
from .models import Effect


@dataclass(frozen=True)
class Tables:
    """One snapshot of the tables (``db_now``: the database server's clock)."""

    at: float
    db_now: datetime
    #: Age of the oldest committed event with a handler effect missing (0.0: none).
    true_age: float
    missing: int
    owed: int
    blocked: int
    failed_deliveries: int
    pending: int
    failed_events: int

    @property
    def quiet(self) -> bool:
        """Nothing left to do: every effect exists and nothing is owed, blocked or failed."""
        return not (
            self.missing
            or self.owed
            or self.blocked
            or self.failed_deliveries
            or self.pending
            or self.failed_events
        )


def _truth_sql(using: str) -> tuple[str, list[Any]]:
    ops = connections[using].ops
    outbox = ops.quote_name(OutboxEvent._meta.db_table)
    inbox = ops.quote_name(ProcessedEvent._meta.db_table)
    effect = ops.quote_name(Effect._meta.db_table)
    pairs = [(t, h) for t, handlers in EXPECTED.items() for h in handlers]
    values = ", ".join(["(%s, %s)"] * len(pairs))
    sql = f"""
        WITH expected(event_type, handler) AS (VALUES {values}),
        missing AS (
            SELECT o.created_at FROM {outbox} o JOIN expected x ON x.event_type = o.event_type
            WHERE o.status <> 'discarded'
              AND NOT EXISTS (SELECT 1 FROM {effect} e
                              WHERE e.event_id = o.event_id AND e.handler = x.handler)
              AND NOT EXISTS (SELECT 1 FROM {inbox} p
                              WHERE p.event_id = o.event_id AND p.handler = x.handler
                                AND p.status IN ('failed', 'discarded'))
        )
        SELECT STATEMENT_TIMESTAMP(),
               (SELECT MIN(created_at) FROM missing),
               (SELECT COUNT(*) FROM missing),
               (SELECT COUNT(*) FROM {inbox} WHERE status IN ('published', 'retrying')),
               (SELECT COUNT(*) FROM {inbox} WHERE status = 'blocked'),
               (SELECT COUNT(*) FROM {inbox} WHERE status = 'failed'),
               (SELECT COUNT(*) FROM {outbox} WHERE status = 'pending'),
               (SELECT COUNT(*) FROM {outbox} WHERE status = 'failed')
    """
    return sql, [value for pair in pairs for value in pair]


def read_tables(using: str = "default") -> Tables:
    """The truth, in one statement. Dead letters (failed deliveries) are an operator's
    work, not consumer lag: their missing effects are left out of ``true_age``."""
    sql, params = _truth_sql(using)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        now, oldest, missing, owed, blocked, failed, pending, failed_events = cursor.fetchone()
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return Tables(
        at=time.time(),
        db_now=now,
        true_age=age,
        missing=int(missing),
        owed=int(owed),
        blocked=int(blocked),
        failed_deliveries=int(failed),
        pending=int(pending),
        failed_events=int(failed_events),
    )


def broker_depth(client: Any) -> tuple[int, int]:
    """Task messages in the broker: queued in Celery's lists, and held unacknowledged by
    workers (kombu's Redis transport keeps those in the ``unacked`` hash)."""
    keys = [k for k in client.scan_iter(match="celery*", count=100)]
    pipe = client.pipeline()
    for key in keys:
        pipe.type(key)
    kinds = pipe.execute()
    lists = [k for k, kind in zip(keys, kinds, strict=True) if kind in (b"list", "list")]
    pipe = client.pipeline()
    for key in lists:
        pipe.llen(key)
    pipe.hlen("unacked")
    *lengths, unacked = pipe.execute()
    return int(sum(lengths)), int(unacked)


def numbers(data: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every numeric leaf of a JSON document, with its dotted path."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from numbers(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, int | float) and not isinstance(data, bool):
        yield path, float(data)


def consumer_lag_in(data: Any) -> tuple[str, float] | None:
    """The consumer lag a JSON report gives, in seconds: the first numeric leaf whose path
    names a consumer lag and ends in seconds (``consumer_lag.age_seconds``,
    ``consumer_lag_seconds``...). None when the report has none."""
    for path, value in numbers(data):
        lowered = path.lower()
        if "consumer" in lowered and "lag" in lowered and lowered.endswith("seconds"):
            return path, value
    return None


@dataclass
class Reported:
    """What the library says, read between two reads of the tables."""

    before: Tables
    after: Tables
    status: dict[str, Any] = field(default_factory=dict)
    health_code: int = 0
    health: dict[str, Any] = field(default_factory=dict)
    #: Every sample of the collector: (name, labels other than ``database``, value).
    metrics: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    queued: int | None = None
    unacked: int | None = None
    phase: str = ""
    error: str = ""

    @property
    def t(self) -> float:
        return self.before.at

    def truth(self, name: str) -> tuple[float, float]:
        """``(low, high)`` of a Tables attribute over the two reads."""
        a, b = getattr(self.before, name), getattr(self.after, name)
        return (min(a, b), max(a, b))

    @property
    def status_lag(self) -> tuple[str, float] | None:
        return consumer_lag_in(self.status)

    @property
    def health_lag(self) -> tuple[str, float] | None:
        return consumer_lag_in(self.health)

    def gauge(self, name: str) -> float | None:
        """The value of an unlabelled gauge (``database`` aside), or None."""
        for found, labels, value in self.metrics:
            if found == name and not labels:
                return value
        return None

    @property
    def metrics_lag(self) -> tuple[str, float] | None:
        """The largest sample of a gauge named for a consumer lag in seconds."""
        found = [
            (name, value)
            for name, _, value in self.metrics
            if "consumer" in name and "lag" in name and name.endswith("seconds")
        ]
        return max(found, key=lambda item: item[1]) if found else None

    @property
    def metrics_failed(self) -> tuple[str, float] | None:
        """Failed handler deliveries by the collector: the sum of the samples of a gauge
        named for handler deliveries whose name or a label says failed."""
        found = [
            (name, value)
            for name, labels, value in self.metrics
            if ("deliver" in name or "handler" in name)
            and ("fail" in name or "failed" in labels.values())
        ]
        if not found:
            return None
        return found[0][0], sum(value for _, value in found)


def read_status(using: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("outbox_status", "--json", "--database", using, stdout=out)
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def read_health(using: str) -> tuple[int, dict[str, Any]]:
    from django_uow.views import health

    response = health(RequestFactory().get("/health/outbox/"), using=using)
    return response.status_code, json.loads(response.content)


def read_metrics(using: str) -> list[tuple[str, dict[str, str], float]]:
    """Every gauge sample of django-uow's collector (``OutboxCollector``), with its labels
    (``database`` aside). Read straight from the collector: installing it into a
    registry would also connect signal receivers for the rest of the process."""
    from django_uow.contrib.prometheus import OutboxCollector

    return [
        (
            sample.name,
            {k: v for k, v in sample.labels.items() if k != "database"},
            float(sample.value),
        )
        for family in OutboxCollector(using).collect()
        if family.type == "gauge"
        for sample in family.samples
    ]


def read_reported(using: str, broker: Any, phase: str) -> Reported:
    """Tables, then the broker and the three reports, then the tables again: on
    PostgreSQL all in one REPEATABLE READ snapshot, so a report is judged against the
    rows it saw (deliveries going failed and out of it between two reads of their own
    could make an honest count fall outside the two table reads)."""
    with transaction.atomic(using=using):
        if connections[using].vendor == "postgresql":
            with connections[using].cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        before = read_tables(using)
        report = Reported(before=before, after=before, phase=phase)
        try:
            report.queued, report.unacked = broker_depth(broker)
        except Exception as exc:  # the broker is restarting: no depth this time
            report.error = f"broker: {exc}"
        report.status = read_status(using)
        report.health_code, report.health = read_health(using)
        report.metrics = read_metrics(using)
        report.after = read_tables(using)
    return report
