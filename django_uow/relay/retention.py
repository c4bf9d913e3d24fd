"""Retention: delete dispatched outbox events past ``RETENTION``, in bounded batches.

``RETENTION`` may be one age, or a mapping per event type: exact names first, then
``"<app_label>.*"`` patterns, then ``"*"``; ``None`` keeps those events forever (an
audit log). Each rule deletes only the rows no more specific rule claims.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from ..conf import uow_settings
from ..models import OutboxEvent, OutboxStatus

logger = logging.getLogger("django_uow.relay")


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


def _prune_rows(using: str, governed: Q, cutoff: datetime, size: int) -> int:
    manager = OutboxEvent.objects.using(using)
    total = 0
    while True:
        ids = list(
            manager.filter(governed, status=OutboxStatus.DISPATCHED, dispatched_at__lt=cutoff)
            .order_by("dispatched_at")
            .values_list("id", flat=True)[:size]
        )
        if not ids:
            return total
        deleted, _ = manager.filter(id__in=ids, status=OutboxStatus.DISPATCHED).delete()
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
    """Delete dispatched events past their retention in bounded batches; return the count.

    ``older_than`` overrides ``RETENTION`` for every type. Pending and failed events are
    never deleted: they are owed work.
    """
    size = batch_size or uow_settings.PRUNE_BATCH_SIZE
    now = now or timezone.now()
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
                "Pruned %d dispatched outbox event(s) of %s older than %s",
                pruned,
                rule,
                (now - age).isoformat(),
            )
        total += pruned
    return total
