"""Retention: delete what is no longer owed, in bounded batches.

- the outbox: settled events past ``RETENTION``: dispatched (aged from
  ``dispatched_at``) or discarded by an operator (aged from ``discarded_at``), except
  those with a handler delivery still owed, failed or blocked (it needs the event).
  ``RETENTION`` may be one age, or a mapping per event type: exact names first, then
  ``"<app_label>.*"`` patterns, then ``"*"``; ``None`` keeps those events forever (an
  audit log). Each rule deletes only the rows no more specific rule claims;
- the inbox: succeeded handler deliveries past ``INBOX_RETENTION``. Deliveries still
  owed (published, retrying), blocked and dead letters (failed) are never pruned, nor is
  an ordered handler's succeeded row while its event is still in the outbox: the next
  event of the aggregate waits for it, and a missing row would read as "not delivered".

Ages count on the database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Exists, OuterRef, Q

from ..conf import uow_settings
from ..db.clock import database_now
from ..delivery.handlers import registry as handler_registry
from ..models import DeliveryStatus, OutboxEvent, OutboxStatus, ProcessedEvent
from ..retry import logger_for

logger = logger_for("django_uow.relay")


@dataclass
class Pruned:
    """What one pruning pass deleted."""

    events: int = 0
    inbox: int = 0

    def __str__(self) -> str:
        return f"pruned {self.events} event(s), {self.inbox} inbox row(s)"


def rule_filters(policy: dict[str, timedelta | None]) -> list[tuple[str, Q, timedelta | None]]:
    """``(rule, rows it governs, age)`` for each rule, most specific first."""
    exact = [k for k in policy if k != "*" and not k.endswith(".*")]
    prefixes = [k for k in policy if k.endswith(".*")]
    rules: list[tuple[str, Q, timedelta | None]] = []
    for name in exact:
        rules.append((name, Q(event_type=name), policy[name]))
    for pattern in prefixes:
        governed = Q(event_type__startswith=pattern[:-1])
        for name in exact:
            governed &= ~Q(event_type=name)
        rules.append((pattern, governed, policy[pattern]))
    rest = Q()
    for name in exact:
        rest &= ~Q(event_type=name)
    for pattern in prefixes:
        rest &= ~Q(event_type__startswith=pattern[:-1])
    rules.append(("*", rest, policy["*"]))
    return rules


#: Settled statuses and the column each one's age is measured from (each has a partial
#: index on that column, so a pruning batch never walks owed rows).
SETTLED = ((OutboxStatus.DISPATCHED, "dispatched_at"), (OutboxStatus.DISCARDED, "discarded_at"))


def _prune_rows(using: str, governed: Q, cutoff: datetime, size: int) -> int:
    return sum(
        _prune_status(using, governed, status, column, cutoff, size) for status, column in SETTLED
    )


def _prune_status(
    using: str, governed: Q, status: str, column: str, cutoff: datetime, size: int
) -> int:
    manager = OutboxEvent.objects.using(using)
    unfinished = ProcessedEvent.objects.using(using).filter(
        event_id=OuterRef("event_id"),
        status__in=[
            DeliveryStatus.PUBLISHED,
            DeliveryStatus.RETRYING,
            DeliveryStatus.FAILED,
            DeliveryStatus.BLOCKED,
        ],
    )
    total = 0
    while True:
        ids = list(
            manager.filter(governed, status=status, **{f"{column}__lt": cutoff})
            .filter(~Exists(unfinished))
            .order_by(column)
            .values_list("id", flat=True)[:size]
        )
        if not ids:
            return total
        deleted, _ = manager.filter(id__in=ids, status=status).delete()
        total += deleted
        if len(ids) < size:
            return total


def prune_outbox(
    *,
    using: str = "default",
    older_than: timedelta | None = None,
    batch_size: int | None = None,
    now: datetime | None = None,
) -> int:
    """Delete dispatched and discarded events past their retention in bounded batches;
    return the count.

    ``older_than`` overrides ``RETENTION`` for every type. Pending and failed events are
    never deleted: they are owed work. Neither is an event with a handler delivery still
    owed, failed or blocked: it may be delivered again.
    """
    size = batch_size or uow_settings.PRUNE_BATCH_SIZE
    now = now or database_now(using)
    policy: dict[str, timedelta | None] = (
        {"*": older_than} if older_than is not None else uow_settings.RETENTION_BY_TYPE
    )
    total = 0
    for rule, governed, age in rule_filters(policy):
        if age is None:
            continue  # kept forever
        pruned = _prune_rows(using, governed, now - age, size)
        if pruned:
            logger.info(
                "Pruned %d dispatched or discarded outbox event(s) of %s older than %s",
                pruned,
                rule,
                (now - age).isoformat(),
            )
        total += pruned
    return total


def prune_inbox(
    *,
    using: str = "default",
    older_than: timedelta | None = None,
    batch_size: int | None = None,
    now: datetime | None = None,
) -> int:
    """Delete succeeded handler deliveries older than ``INBOX_RETENTION``; return the count.

    Bounded batches walk the partial index on succeeded rows by ``processed_at``. An
    ordered handler's row is kept while its event is in the outbox.
    """
    age = older_than if older_than is not None else uow_settings.INBOX_RETENTION
    size = batch_size or uow_settings.PRUNE_BATCH_SIZE
    cutoff = (now or database_now(using)) - age
    manager = ProcessedEvent.objects.using(using)
    ordered = [h.name for h in handler_registry.all() if h.ordered]
    in_outbox = OutboxEvent.objects.using(using).filter(event_id=OuterRef("event_id"))
    prunable = manager.filter(status=DeliveryStatus.SUCCEEDED, processed_at__lt=cutoff)
    if ordered:
        prunable = prunable.exclude(Q(handler__in=ordered) & Exists(in_outbox))
    total = 0
    while True:
        ids = list(prunable.order_by("processed_at").values_list("id", flat=True)[:size])
        if not ids:
            break
        deleted, _ = manager.filter(id__in=ids, status=DeliveryStatus.SUCCEEDED).delete()
        total += deleted
        if len(ids) < size:
            break
    if total:
        logger.info(
            "Pruned %d succeeded handler deliveries older than %s", total, cutoff.isoformat()
        )
    return total


def prune(
    *,
    using: str = "default",
    older_than: timedelta | None = None,
    inbox_older_than: timedelta | None = None,
    batch_size: int | None = None,
    now: datetime | None = None,
) -> Pruned:
    """Prune the outbox and the inbox (``RETENTION`` and ``INBOX_RETENTION``)."""
    return Pruned(
        events=prune_outbox(using=using, older_than=older_than, batch_size=batch_size, now=now),
        inbox=prune_inbox(using=using, older_than=inbox_older_than, batch_size=batch_size, now=now),
    )
