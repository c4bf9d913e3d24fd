"""Outbox health at a glance: counts per status and relay lag.

Owed rows (pending, failed) are counted exactly: the partial indexes on owed rows keep
that cheap however many dispatched rows the table holds. Dispatched rows are counted
only up to ``dispatched_cap`` (a ``LIMIT`` inside the count), because an exact count
would read the whole table on every admin page view and every monitoring scrape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from .models import OutboxEvent

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
