"""The on-commit fast path: relay the events a commit just wrote, as configured.

``relay_after_commit`` is a ``uow_committed`` receiver, connected in
``AppConfig.ready()``: the unit of work announces its commit and knows nothing of the
relay. ``RELAY_ON_COMMIT``: ``"inline"`` relays in this process; ``"celery"`` does too
when every publisher talks to a broker (``CeleryPublisher`` publishes the handler tasks
straight after the commit: one hop from commit to handler), and otherwise enqueues the
relay task (an ``InlinePublisher`` then runs the handlers in a worker, not in the
request); ``False`` leaves everything to the sweep. Either way the events are claimed,
leased and acknowledged by ``relay_events``, as by any relay. A failure here never
affects the committed transaction: the sweep (beat task or ``relay_outbox``) delivers
what is left.

Broker work here is bounded by ``FAST_PATH_TIMEOUT`` (connections of its own with
timeouts on connect, reads and writes, and no retries: ``brokers``), and a broker failure
opens the circuit breaker (``breaker``): commits skip the fast path for
``FAST_PATH_COOLDOWN`` seconds and leave their events to the sweep. A commit never waits
on a broker that is down or hung for longer than the budget. When every publisher talks
to a broker, a broker that answers after the budget is still waited for, up to ``LEASE``,
on a helper thread (``handoff``), which then acknowledges the batch: a stalled broker that
takes the message after all is not sent it a second time by the sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from django.db import connections
from django.utils import timezone

from ..conf import uow_settings
from ..db.features import features
from ..exceptions import RelayError
from ..publishers import Publisher, commit_path_publishers, get_publishers
from ..publishers.connections import celery_connection
from ..retry import is_connection_error, logger_for
from .batch import relay_events
from .breaker import breaker

logger = logger_for("django_uow.fastpath")

#: The PostgreSQL channel a looping ``relay_outbox`` LISTENs on.
NOTIFY_CHANNEL = "django_uow_outbox"


def notify_relays(using: str) -> None:
    """Wake relays waiting with LISTEN (PostgreSQL, ``NOTIFY`` setting on); never raises."""
    connection = connections[using]
    if not features(connection).notify:
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
    except Exception:
        logger.warning("NOTIFY %s failed; relays wake at their interval.", NOTIFY_CHANNEL)


def enqueue_relay(
    event_ids: Sequence[UUID], using: str = "default", *, timeout: float | None = None
) -> None:
    """Send the relay task for just-committed events (the ``"celery"`` fast path).

    With ``timeout`` the task goes through this thread's bounded connection
    (``brokers.celery_connection``); without, through the Celery app's own pool.
    """
    try:
        from celery import current_app
    except ImportError as exc:  # pragma: no cover - celery is an optional extra
        raise RelayError(
            "RELAY_ON_COMMIT='celery' needs Celery: pip install 'django-uow[celery]', or set "
            "DJANGO_UOW['RELAY_ON_COMMIT'] to 'inline' or False."
        ) from exc
    # No result backend call: nobody waits for the relay task's result.
    options: dict[str, Any] = {"retry": False, "ignore_result": True}
    if uow_settings.CELERY_QUEUE:
        options["queue"] = uow_settings.CELERY_QUEUE
    task = uow_settings.CELERY_RELAY_TASK
    kwargs = {"event_ids": [str(e) for e in event_ids], "using": using}
    if timeout is None:
        current_app.send_task(task, kwargs=kwargs, **options)
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]  # the app, not the proxy
    with celery_connection(app, timeout) as connection:
        app.send_task(task, kwargs=kwargs, connection=connection, **options)


def all_brokered() -> bool:
    """True when every publisher talks to a broker (has a bounded commit-path copy).

    In ``"celery"`` mode the committing process then relays its own events; with a
    publisher that runs handlers in process (``InlinePublisher``) it enqueues the relay
    task instead, so that the handlers run in a worker.
    """
    publishers = get_publishers()
    return bool(publishers) and all(
        callable(getattr(p, "for_commit_path", None)) for p in publishers
    )


def broker_failed(exc: BaseException) -> bool:
    """True when the fast path failed because the broker is unreachable, slow or hung."""
    if is_connection_error(exc):
        return True
    cause = exc.__cause__
    return isinstance(exc, RelayError) and cause is not None and is_connection_error(cause)


def relay_after_commit(
    sender: Any = None,
    *,
    events: Sequence[Any] = (),
    using: str = "default",
    **kwargs: Any,
) -> None:
    """``uow_committed`` receiver: relay the committed ``events`` (outbox rows); never raises.

    Broker work is bounded by ``FAST_PATH_TIMEOUT``; while the breaker is open the events
    are left to the sweep at once.
    """
    # A scheduled event is not due at commit: no relay could take it now, so it costs no
    # claim here (the sweep delivers it once due).
    now = timezone.now()
    event_ids = [
        row.event_id
        for row in events
        if getattr(row, "deliver_at", None) is None or row.deliver_at <= now
    ]
    if event_ids and uow_settings.NOTIFY:
        notify_relays(using)
    mode = uow_settings.RELAY_ON_COMMIT
    if not mode or not event_ids:
        return
    timeout = uow_settings.FAST_PATH_TIMEOUT
    publishers: Sequence[Publisher] | None = None
    brokered = True
    budget: float | None = None
    if mode == "inline" or all_brokered():
        if all_brokered() and not features(connections[using]).single_writer:
            # Every publisher talks to a broker: the commit waits for them up to the
            # budget, and a late answer is still awaited on a helper thread (handoff),
            # which settles on a connection of its own. Not on SQLite: a second writer
            # there would wait on the database's one write lock, or fail on it.
            publishers, _ = commit_path_publishers(timeout, max(timeout, uow_settings.LEASE))
            budget = timeout
        else:
            publishers, brokered = commit_path_publishers(timeout)
        mode = "inline"  # with Celery: one hop, this process publishes the handler tasks
    if brokered and not breaker.allow():
        logger.debug(
            "Fast path skipped (breaker open): %d event(s) left to the sweep", len(event_ids)
        )
        return
    try:
        if mode == "inline":
            relay_events(event_ids, using=using, publishers=publishers, budget=budget)
        else:
            enqueue_relay(event_ids, using=using, timeout=timeout)
    except Exception as exc:
        if brokered and broker_failed(exc):
            breaker.failed(exc, uow_settings.FAST_PATH_COOLDOWN, len(event_ids))
            return
        if brokered:
            breaker.inconclusive()  # something else failed: the next commit tries again
        logger.warning(
            "Fast-path relay of %d event(s) failed; the sweep will deliver them.",
            len(event_ids),
            exc_info=True,
            extra={"event_ids": [str(e) for e in event_ids]},
        )
    else:
        if brokered:
            breaker.succeeded()
