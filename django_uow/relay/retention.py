"""Retention: delete dispatched outbox events past ``RETENTION``, in bounded batches."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.utils import timezone

from ..conf import uow_settings
from ..models import OutboxEvent, OutboxStatus

logger = logging.getLogger("django_uow.relay")


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
