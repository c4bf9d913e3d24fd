"""The on-commit fast path: relay the events a commit just wrote, as configured.

``RELAY_ON_COMMIT``: ``"celery"`` enqueues the relay task, ``"inline"`` relays in this
process, ``False`` leaves everything to the sweep. A failure here never affects the
committed transaction: the sweep (beat task or ``relay_outbox``) delivers what is left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

from .conf import uow_settings

logger = logging.getLogger("django_uow.fastpath")

#: The PostgreSQL channel a looping ``relay_outbox`` LISTENs on.
NOTIFY_CHANNEL = "django_uow_outbox"


def notify_relays(using: str) -> None:
    """Wake relays waiting with LISTEN (PostgreSQL, ``NOTIFY`` setting on); never raises."""
    from django.db import connections

    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
    except Exception:
        logger.warning("NOTIFY %s failed; relays wake at their interval.", NOTIFY_CHANNEL)


def relay_after_commit(event_ids: Sequence[UUID], using: str) -> None:
    if event_ids and uow_settings.NOTIFY:
        notify_relays(using)
    mode = uow_settings.RELAY_ON_COMMIT
    if not mode or not event_ids:
        return
    try:
        if mode == "inline":
            from .relay import relay_events

            relay_events(event_ids, using=using)
        else:
            from .tasks import enqueue_relay

            enqueue_relay(event_ids, using=using)
    except Exception:
        logger.warning(
            "Fast-path relay of %d event(s) failed; the sweep will deliver them.",
            len(event_ids),
            exc_info=True,
            extra={"event_ids": [str(e) for e in event_ids]},
        )
