"""Helpers shared by the relay tests: write outbox rows fast, publishers that record."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from django_uow.events.base import Envelope
from django_uow.exceptions import BlockedByEarlierFailure
from django_uow.models import OutboxEvent
from django_uow.outbox.writing import Schedule, write_events

CANCELLED = "orders.cancelled"


def make_rows(
    specs: Sequence[tuple[str, str]] | None = None,
    *,
    event_type: str = CANCELLED,
    using: str = "default",
) -> list[OutboxEvent]:
    """Write one event per ``(aggregate_id, reason)`` with ONE insert; return them in id order."""
    rows = []
    for aggregate_id, reason in specs or []:
        rows.append(
            OutboxEvent(
                event_id=uuid.uuid4(),
                event_type=event_type,
                aggregate_type="testapp.order" if aggregate_id else "",
                aggregate_id=aggregate_id,
                payload={"order_id": int(aggregate_id or 0), "reason": reason},
                headers={"schema_version": 1},
            )
        )
    # Due at the INSERT on the database's clock, as the unit of work writes them (a Python
    # time could be a fraction of a millisecond ahead of SQLite's clock, and not due yet).
    write_events(rows, using, schedules=[Schedule() for _ in rows])
    ids = [r.event_id for r in rows]
    stored = {r.event_id: r for r in OutboxEvent.objects.using(using).filter(event_id__in=ids)}
    return sorted(stored.values(), key=lambda r: r.id)


def interleaved(aggregates: int, per_aggregate: int) -> list[tuple[str, str]]:
    """``per_aggregate`` events for each of ``aggregates`` aggregates, interleaved round robin."""
    return [(str(agg + 1), str(seq)) for seq in range(per_aggregate) for agg in range(aggregates)]


class RecordingPublisher:
    """Keeps what it published in order; fails the events whose reason is in ``fail``."""

    def __init__(
        self, fail: Mapping[str, Exception] | None = None, *, well_behaved: bool = True
    ) -> None:
        self.published: list[Envelope] = []
        self.calls = 0
        self.fail = dict(fail or {})
        # A well-behaved publisher does not publish past a failure within an aggregate.
        self.well_behaved = well_behaved

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        self.calls += 1
        failures: dict[UUID, Exception] = {}
        blocked: set[str] = set()
        for envelope in envelopes:
            if self.well_behaved and envelope.aggregate_id in blocked:
                failures[envelope.event_id] = BlockedByEarlierFailure(envelope)
                continue
            exc = self.fail.get(envelope.payload.get("reason", ""))
            if exc is not None and envelope.aggregate_id:
                blocked.add(envelope.aggregate_id)
            if exc is not None:
                failures[envelope.event_id] = exc
            else:
                self.published.append(envelope)
        return failures or None

    def reasons(self) -> list[Any]:
        return [e.payload["reason"] for e in self.published]


class RaisingPublisher:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        self.calls += 1
        raise self.exc


class RedisListPublisher:
    """Appends ``aggregate:reason:event_id`` to a Redis list, one pipeline per batch."""

    def __init__(self, url: str, key: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.key = key

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        pipe = self.client.pipeline(transaction=False)
        for e in envelopes:
            pipe.rpush(self.key, f"{e.aggregate_id}:{e.payload['reason']}:{e.event_id}")
        pipe.execute()
        return None


def select_claim(mode: str, monkeypatch: Any) -> str:
    """Route the relay through ``mode``: "one-statement" (skipped where the database has
    none) or "portable" (the MySQL/MariaDB claim, on any database)."""
    import pytest
    from django.db import connection

    from django_uow.relay import claims as statements

    if mode == "one-statement" and not statements.one_statement(connection.alias):
        pytest.skip(f"no one-statement claim on {connection.vendor}: the portable run covers it")
    if mode == "portable":
        monkeypatch.setattr(statements, "PORTABLE_ONLY", True)
    return mode


def take_list(redis_url: str, key: str) -> list[str]:
    """Every item of a Redis list, in order, deleting the list."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return [item.decode() for item in client.lrange(key, 0, -1)]
    finally:
        client.delete(key)
        client.close()


class SlowListPublisher(RedisListPublisher):
    """A "fast" publisher (chosen for the direct mode) that takes ``UOW_PUBLISH_SLEEP``
    seconds per batch: long enough to stop its process while it holds the batch's row
    locks. Configured by dotted path in a child relay (``UOW_LIST_KEY``)."""

    direct_relay = True

    def __init__(self) -> None:
        import os

        from django.conf import settings

        super().__init__(settings.REDIS_URL, os.environ["UOW_LIST_KEY"])
        self.sleep = float(os.environ.get("UOW_PUBLISH_SLEEP", "1"))

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        import time

        time.sleep(self.sleep)
        return super().publish(envelopes)
