"""The on-commit fast path: relay the events a commit just wrote, as configured.

``relay_after_commit`` is a ``uow_committed`` receiver, connected in
``AppConfig.ready()``: the unit of work announces its commit and knows nothing of the
relay. ``RELAY_ON_COMMIT``: ``"celery"`` enqueues the relay task, ``"inline"`` relays in
this process, ``False`` leaves everything to the sweep. A failure here never affects
the committed transaction: the sweep (beat task or ``relay_outbox``) delivers what is
left.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import connections

from ..conf import uow_settings
from ..exceptions import RelayError
from .batch import relay_events

logger = logging.getLogger("django_uow.fastpath")

#: The PostgreSQL channel a looping ``relay_outbox`` LISTENs on.
NOTIFY_CHANNEL = "django_uow_outbox"


def notify_relays(using: str) -> None:
    """Wake relays waiting with LISTEN (PostgreSQL, ``NOTIFY`` setting on); never raises."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
    except Exception:
        logger.warning("NOTIFY %s failed; relays wake at their interval.", NOTIFY_CHANNEL)


def enqueue_relay(event_ids: Sequence[UUID], using: str = "default") -> None:
    """Send the relay task for just-committed events (the ``"celery"`` fast path)."""
    try:
        from celery import current_app
    except ImportError as exc:  # pragma: no cover - celery is an optional extra
        raise RelayError(
            "RELAY_ON_COMMIT='celery' needs Celery: pip install 'django-uow[celery]', or set "
            "DJANGO_UOW['RELAY_ON_COMMIT'] to 'inline' or False."
        ) from exc
    options: dict[str, Any] = {"retry": False}
    if uow_settings.CELERY_QUEUE:
        options["queue"] = uow_settings.CELERY_QUEUE
    current_app.send_task(
        uow_settings.CELERY_RELAY_TASK,
        kwargs={"event_ids": [str(e) for e in event_ids], "using": using},
        **options,
    )


def relay_after_commit(
    sender: Any = None,
    *,
    events: Sequence[Any] = (),
    using: str = "default",
    **kwargs: Any,
) -> None:
    """``uow_committed`` receiver: relay the committed ``events`` (outbox rows); never raises."""
    event_ids = [row.event_id for row in events]
    if event_ids and uow_settings.NOTIFY:
        notify_relays(using)
    mode = uow_settings.RELAY_ON_COMMIT
    if not mode or not event_ids:
        return
    try:
        if mode == "inline":
            relay_events(event_ids, using=using)
        else:
            enqueue_relay(event_ids, using=using)
    except Exception:
        logger.warning(
            "Fast-path relay of %d event(s) failed; the sweep will deliver them.",
            len(event_ids),
            exc_info=True,
            extra={"event_ids": [str(e) for e in event_ids]},
        )
