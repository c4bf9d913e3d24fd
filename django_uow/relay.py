"""The relay: claim due outbox events, publish them, acknowledge them.

One batch is: one claim statement that leases the events (``claim.claim``), one
publish per configured publisher (a pipeline / one producer for the whole batch),
and one acknowledgement UPDATE fenced by the lease. Publishing happens outside any
transaction, so no row lock is held while talking to a broker. The fast path, the
Celery tasks and ``manage.py relay_outbox`` all call the functions of this module.

Delivery is at least once: a relay that dies after publishing and before the
acknowledgement leaves leased rows behind; when the lease (``LEASE``) expires another
relay claims and publishes them again. Consumers make the effect happen once
(``@event_handler(idempotent=True)``).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connections
from django.utils import timezone

from . import claim as claims
from . import signals
from .conf import uow_settings
from .events import Envelope
from .exceptions import PermanentFailure, RelayError, RetryAfter, UnknownEventType
from .models import OutboxEvent, OutboxStatus
from .tracing import span

logger = logging.getLogger("django_uow.relay")


class BlockedByEarlierFailure(Exception):
    """Reported for an event not published because an earlier event of its aggregate failed.

    The relay hands such events back untouched: their attempt is not spent.
    """

    def __init__(self, envelope: Envelope) -> None:
        super().__init__(
            f"not published: an earlier event of {envelope.aggregate_type} "
            f"{envelope.aggregate_id!r} failed in the same batch"
        )


@dataclass
class BatchResult:
    """What one batch did. ``claimed == 0`` means nothing was due."""

    claimed: int = 0
    dispatched: int = 0
    retried: int = 0
    failed: int = 0
    handed_back: int = 0
    lost_lease: int = 0
    dispatched_ids: list[UUID] = field(default_factory=list)

    @property
    def progressed(self) -> bool:
        return self.dispatched + self.retried + self.failed > 0


@dataclass
class RelaySummary:
    """Totals of ``relay_pending``: ``left`` counts events still pending afterwards."""

    relayed: int = 0
    failed: int = 0
    retried: int = 0
    left: int = 0
    batches: int = 0

    def add(self, batch: BatchResult) -> None:
        self.relayed += batch.dispatched
        self.failed += batch.failed
        self.retried += batch.retried
        self.batches += 1

    def __str__(self) -> str:
        return f"relayed {self.relayed}, failed {self.failed}, left {self.left}"


def default_relay_id() -> str:
    """A relay identity unique per process and thread: host, pid, thread, random suffix."""
    host = socket.gethostname()[:24]
    return f"{host}:{os.getpid()}:{threading.get_ident() % 100000}:{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------- errors


def is_connection_error(exc: BaseException) -> bool:
    """True for "the broker is unreachable" errors: pause without spending attempts."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    return bool(
        names
        & {
            "kombu.exceptions.OperationalError",
            "redis.exceptions.ConnectionError",
            "redis.exceptions.TimeoutError",
            "redis.exceptions.BusyLoadingError",
        }
    )


def describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"[:4000]


def backoff_delay(attempts: int) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempts-1)))."""
    base, cap = uow_settings.BACKOFF
    ceiling = min(cap, base * (2 ** max(0, min(attempts - 1, 62))))
    return random.uniform(0, ceiling)


# ----------------------------------------------------------------------- batches


def _publish(publishers: Sequence[Any], envelopes: Sequence[Envelope]) -> dict[UUID, BaseException]:
    """Run every publisher over the batch; return the per-event failures.

    A publisher that raises fails the whole batch, except a broker outage, which
    propagates so the caller can give the claim back.
    """
    failures: dict[UUID, BaseException] = {}
    for publisher in publishers:
        todo = [e for e in envelopes if e.event_id not in failures]
        if not todo:
            break
        try:
            result = publisher.publish(todo)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            logger.warning(
                "Publisher %s failed a batch of %d event(s): %s",
                type(publisher).__name__,
                len(todo),
                describe(exc),
            )
            for env in todo:
                failures.setdefault(env.event_id, exc)
            continue
        for event_id, error in (result or {}).items():
            failures.setdefault(event_id, error)
    return failures


def _failure_for(row: OutboxEvent, exc: BaseException, max_attempts: int) -> claims.Failure:
    now = timezone.now()
    dead = isinstance(exc, PermanentFailure | UnknownEventType) or row.attempts >= max_attempts
    if dead:
        return claims.Failure(error=describe(exc), dead=True)
    delay = exc.seconds if isinstance(exc, RetryAfter) else backoff_delay(row.attempts)
    return claims.Failure(error=describe(exc), dead=False, retry_at=now + timedelta(seconds=delay))


def _log_extra(row: OutboxEvent) -> dict[str, Any]:
    return {
        "event_id": str(row.event_id),
        "event_type": row.event_type,
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
    }


def _process(
    rows: list[OutboxEvent],
    *,
    using: str,
    relay_id: str,
    publishers: Sequence[Any],
    result: BatchResult,
) -> None:
    max_attempts = uow_settings.MAX_ATTEMPTS
    envelopes: dict[int, Envelope] = {}
    failures: dict[int, claims.Failure] = {}
    errors: dict[int, BaseException] = {}
    to_publish: list[OutboxEvent] = []
    for row in rows:
        envelopes[row.id] = row.to_envelope()
        if row.attempts > max_attempts:
            # Claimed again after leases expired MAX_ATTEMPTS times: the relays holding it
            # died while publishing it. Dead-letter it instead of crashing again.
            exc: BaseException = RelayError(
                f"Event {row.event_id} was claimed {row.attempts} times without being "
                "acknowledged (the relay holding it stopped); dead-lettered."
            )
            errors[row.id] = exc
            failures[row.id] = claims.Failure(error=describe(exc), dead=True)
        else:
            to_publish.append(row)

    try:
        by_event = _publish(publishers, [envelopes[r.id] for r in to_publish])
    except Exception as exc:
        # Broker unreachable: nothing is marked, no attempt is spent.
        claims.record_failures(using=using, relay_id=relay_id, failures=failures)
        result.failed += len(failures)
        result.handed_back += claims.give_back(
            using=using, relay_id=relay_id, ids=[r.id for r in to_publish]
        )
        raise RelayError(
            f"Could not reach the broker ({describe(exc)}); {len(to_publish)} claimed event(s) "
            "were handed back without spending an attempt. Check the broker and retry."
        ) from exc

    ordered = uow_settings.ORDERING == "aggregate"
    blocked: set[tuple[str, str]] = set()
    dispatched: list[OutboxEvent] = []
    handed_back: list[int] = []
    outage: BaseException | None = None
    for row in to_publish:
        key = (row.aggregate_type, row.aggregate_id)
        exc_for = by_event.get(row.event_id)
        if ordered and row.aggregate_id and key in blocked:
            # An earlier event of this aggregate failed: even if this one went out, it
            # must not be marked, so it is relayed again after the earlier one.
            handed_back.append(row.id)
            continue
        if exc_for is None:
            dispatched.append(row)
            continue
        if row.aggregate_id:
            blocked.add(key)
        if isinstance(exc_for, BlockedByEarlierFailure) or is_connection_error(exc_for):
            outage = outage or (exc_for if is_connection_error(exc_for) else None)
            handed_back.append(row.id)
            continue
        errors[row.id] = exc_for
        failures[row.id] = _failure_for(row, exc_for, max_attempts)

    ids = [r.id for r in dispatched]
    marked = claims.acknowledge(using=using, relay_id=relay_id, ids=ids)
    if marked != len(ids):
        result.lost_lease += len(ids) - marked
        logger.warning(
            "Relay %s lost the lease on %d of %d published event(s); another relay will "
            "publish them again (at-least-once delivery).",
            relay_id,
            len(ids) - marked,
            len(ids),
        )
    claims.record_failures(using=using, relay_id=relay_id, failures=failures)
    result.handed_back += claims.give_back(using=using, relay_id=relay_id, ids=handed_back)

    for row in dispatched:
        result.dispatched += 1
        result.dispatched_ids.append(row.event_id)
        logger.debug(
            "Dispatched event %s (%s) of %s %s",
            row.event_id,
            row.event_type,
            row.aggregate_type,
            row.aggregate_id,
            extra=_log_extra(row),
        )
        signals.event_dispatched.send(sender=OutboxEvent, envelope=envelopes[row.id])
    by_id = {r.id: r for r in rows}
    for row_id, failure in failures.items():
        row = by_id[row_id]
        if failure.dead:
            result.failed += 1
            logger.error(
                "Event %s (%s) of %s %s failed for good after %d attempt(s): %s",
                row.event_id,
                row.event_type,
                row.aggregate_type,
                row.aggregate_id,
                row.attempts,
                failure.error,
                extra=_log_extra(row),
            )
        else:
            result.retried += 1
            logger.warning(
                "Event %s (%s) of %s %s failed (attempt %d of %d), retrying at %s: %s",
                row.event_id,
                row.event_type,
                row.aggregate_type,
                row.aggregate_id,
                row.attempts,
                max_attempts,
                failure.retry_at.isoformat() if failure.retry_at else "now",
                failure.error,
                extra=_log_extra(row),
            )
        signals.event_failed.send(
            sender=OutboxEvent,
            envelope=envelopes[row_id],
            error=errors[row_id],
            dead=failure.dead,
        )
    if outage is not None:
        raise RelayError(
            f"The broker refused part of a batch ({describe(outage)}); the affected events were "
            "handed back without spending an attempt."
        ) from outage


def _run_batch(
    *,
    using: str,
    batch_size: int | None,
    publishers: Sequence[Any] | None,
    relay_id: str | None,
    event_ids: Sequence[UUID] | None,
) -> BatchResult:
    from .publishers import get_publishers

    relay_id = relay_id or default_relay_id()
    size = batch_size or uow_settings.BATCH_SIZE
    pubs = list(publishers) if publishers is not None else get_publishers()
    result = BatchResult()
    try:
        rows = claims.claim(
            using=using,
            relay_id=relay_id,
            limit=size,
            lease=uow_settings.LEASE,
            ordered=uow_settings.ORDERING == "aggregate",
            event_ids=event_ids,
        )
    except Exception as exc:
        raise RelayError(
            f"Could not claim outbox events on database {using!r}: {describe(exc)}. "
            "Check that the database is reachable and migrated (manage.py migrate django_uow)."
        ) from exc
    result.claimed = len(rows)
    if not rows:
        return result  # an idle poll opens no span
    # One span per batch (never one for a whole loop), around publish and acknowledge.
    with span(
        "django_uow.relay.batch", database=using, relay_id=relay_id, claimed=len(rows)
    ) as current:
        _process(rows, using=using, relay_id=relay_id, publishers=pubs, result=result)
        if current is not None:
            current.set_attribute("dispatched", result.dispatched)
            current.set_attribute("failed", result.failed)
            current.set_attribute("retried", result.retried)
    return result


def relay_batch(
    *,
    using: str = "default",
    batch_size: int | None = None,
    publishers: Sequence[Any] | None = None,
    relay_id: str | None = None,
) -> BatchResult:
    """Claim one due batch, publish it, acknowledge it. Raises ``RelayError`` on an outage."""
    return _run_batch(
        using=using,
        batch_size=batch_size,
        publishers=publishers,
        relay_id=relay_id,
        event_ids=None,
    )


def relay_events(
    event_ids: Iterable[UUID],
    using: str = "default",
    *,
    publishers: Sequence[Any] | None = None,
    relay_id: str | None = None,
) -> BatchResult:
    """Relay exactly these (just committed) events, through the same claim as the sweep.

    Events already claimed by another relay, not yet due, or waiting behind an earlier
    owed event of their aggregate are left to the sweep.
    """
    ids = list(event_ids)
    total = BatchResult()
    size = uow_settings.BATCH_SIZE
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        batch = _run_batch(
            using=using,
            batch_size=len(chunk),
            publishers=publishers,
            relay_id=relay_id,
            event_ids=chunk,
        )
        for name in ("claimed", "dispatched", "retried", "failed", "handed_back", "lost_lease"):
            setattr(total, name, getattr(total, name) + getattr(batch, name))
        total.dispatched_ids += batch.dispatched_ids
    return total


def count_pending(using: str = "default") -> int:
    """Pending events, due or not (the ``left`` of a summary); uses the partial pending index."""
    return int(OutboxEvent.objects.using(using).filter(status=OutboxStatus.PENDING).count())


def relay_pending(
    *,
    using: str = "default",
    limit: int | None = None,
    batch_size: int | None = None,
    publishers: Sequence[Any] | None = None,
    relay_id: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[BatchResult, RelaySummary], None] | None = None,
    count_left: bool = True,
    before_batch: Callable[[], None] | None = None,
) -> RelaySummary:
    """Relay what is due, batch after batch, until nothing is due or ``limit`` is reached.

    Stops early (after the current batch) when ``should_stop()`` returns true.
    ``count_left=False`` skips counting the pending events at the end; ``before_batch``
    runs before each batch (the looping relay drops stale connections there). Raises
    ``RelayError`` when the database or the broker is unreachable.
    """
    relay_id = relay_id or default_relay_id()
    size = batch_size or uow_settings.BATCH_SIZE
    summary = RelaySummary()
    while limit is None or summary.relayed + summary.failed < limit:
        if should_stop is not None and should_stop():
            break
        if before_batch is not None:
            before_batch()
        room = size if limit is None else min(size, limit - summary.relayed - summary.failed)
        batch = relay_batch(using=using, batch_size=room, publishers=publishers, relay_id=relay_id)
        if batch.claimed == 0:
            break
        summary.add(batch)
        if on_batch is not None:
            on_batch(batch, summary)
        if not batch.progressed:
            break  # everything claimed was handed back: wait for the blocker
    if count_left:  # a looping relay counts once, when it stops, not every round
        summary.left = count_pending(using)
    return summary


# ----------------------------------------------------------------------- retention


def prune_outbox(
    *,
    using: str = "default",
    older_than: timedelta | None = None,
    batch_size: int | None = None,
    now: datetime | None = None,
) -> int:
    """Delete dispatched events older than ``RETENTION`` in bounded batches; return the count.

    Pending and failed events are never deleted: they are owed work.
    """
    age = older_than if older_than is not None else uow_settings.RETENTION
    size = batch_size or uow_settings.PRUNE_BATCH_SIZE
    cutoff = (now or timezone.now()) - age
    manager = OutboxEvent.objects.using(using)
    total = 0
    while True:
        ids = list(
            manager.filter(status=OutboxStatus.DISPATCHED, dispatched_at__lt=cutoff)
            .order_by("dispatched_at")
            .values_list("id", flat=True)[:size]
        )
        if not ids:
            break
        deleted, _ = manager.filter(id__in=ids, status=OutboxStatus.DISPATCHED).delete()
        total += deleted
        if len(ids) < size:
            break
    if total:
        logger.info("Pruned %d dispatched outbox event(s) older than %s", total, cutoff.isoformat())
    return total


def connection_alias_ok(using: str) -> None:
    """Raise ``RelayError`` when database ``using`` cannot be reached."""
    try:
        connections[using].ensure_connection()
    except Exception as exc:
        raise RelayError(f"Cannot connect to database {using!r}: {describe(exc)}") from exc
