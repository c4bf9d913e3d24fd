"""What every publisher shares: the ``Publisher`` protocol, per-aggregate failure
bookkeeping, the delivery rows a publish leaves, and loading ``PUBLISHERS``.

A publisher gets the envelopes of one batch in id order and publishes them in one round
trip. It returns ``None`` when all were published, or a mapping ``{event_id: exception}``
for the ones that failed (the rest were published); raising means the whole batch failed.
When an event fails, a publisher should not publish later events of the same aggregate in
that batch: it reports them as ``BlockedByEarlierFailure`` and the relay hands them back.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from django.core.signals import setting_changed
from django.db import connections, router
from django.utils.module_loading import import_string

from ..conf import uow_settings
from ..delivery.rows import record_published
from ..events.base import Envelope
from ..exceptions import BlockedByEarlierFailure, DeliveriesNotRecorded
from ..models import ProcessedEvent
from ..retry import describe, logger_for

logger = logger_for("django_uow.publishers")


@runtime_checkable
class Publisher(Protocol):
    """What ``PUBLISHERS`` entries implement: publish one batch, report what failed."""

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        """Publish ``envelopes`` (id order); ``None``: all published, else the failures."""
        ...


class OrderedFailures:
    """Per-event failures that also block later events of the same aggregate."""

    def __init__(self) -> None:
        self.failures: dict[UUID, Exception] = {}
        self._blocked: set[tuple[str, str]] = set()

    def blocked(self, envelope: Envelope) -> bool:
        key = (envelope.aggregate_type, envelope.aggregate_id)
        if envelope.aggregate_id and key in self._blocked:
            self.failures[envelope.event_id] = BlockedByEarlierFailure(envelope)
            return True
        return False

    def fail(self, envelope: Envelope, exc: Exception) -> None:
        self.failures[envelope.event_id] = exc
        if envelope.aggregate_id and uow_settings.ORDERING == "aggregate":
            self._blocked.add((envelope.aggregate_type, envelope.aggregate_id))

    def result(self) -> dict[UUID, Exception] | None:
        return self.failures or None


def for_another_thread(publisher: Publisher) -> Publisher:
    """``publisher`` ready to publish from another thread: what it resolves per thread
    (Celery's current app) fixed now, through its ``bound()`` when it has one."""
    bound = getattr(publisher, "bound", None)
    if callable(bound):
        copy: Publisher = bound()
        return copy
    return publisher


def broker_label(publisher: Publisher) -> str:
    """``"CeleryPublisher at redis://127.0.0.1:6379/0"``: which publisher and which broker
    (its ``broker_url``, password masked), for a log line about an outage."""
    name = type(publisher).__name__
    try:
        url = getattr(publisher, "broker_url", None)
    except Exception:  # an app that cannot say: the class name is enough
        url = None
    return f"{name} at {mask_password(str(url))}" if url else name


def mask_password(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    auth, _, host = rest.partition("@")
    user, colon, _password = auth.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def handler_task_id(event_id: UUID | str, handler_name: str) -> str:
    """The deterministic Celery task id of (event, handler): a redelivery reuses it."""
    return str(uuid.uuid5(UUID(str(event_id)), handler_name))


#: Tries of the write that records a batch's deliveries as published, and the first pause.
RECORD_TRIES = (3, 0.05)


_deferred: ContextVar[list[tuple[Envelope, str]] | None] = ContextVar(
    "uow_deliveries_recorded_later", default=None
)


@contextmanager
def recording_deferred() -> Iterator[list[tuple[Envelope, str]]]:
    """Collect the deliveries ``CeleryPublisher`` sends here instead of writing their rows:
    a publish run on a helper thread leaves the write (``record_sent``) to the thread
    that settles the batch, on its own database connection."""
    sink: list[tuple[Envelope, str]] = []
    token = _deferred.set(sink)
    try:
        yield sink
    finally:
        _deferred.reset(token)


def record_sent(sent: Sequence[tuple[Envelope, str]]) -> None:
    """Write the rows of deliveries collected by ``recording_deferred``; raises
    ``DeliveriesNotRecorded`` when it cannot."""
    record_deliveries(sent, strict=True)


def record_deliveries(sent: Sequence[tuple[Envelope, str]], *, strict: bool) -> None:
    """Mark what was sent as published, trying again a few times.

    The rows are what the deadline sweep finds a lost task by. ``strict`` (the batch was
    sent): a write that keeps failing raises ``DeliveriesNotRecorded``, so the relay does
    not acknowledge the batch and sends it again later. Otherwise (the send itself failed
    and that error is the one to report) the failure is logged.
    """
    if not sent:
        return
    sink = _deferred.get()
    if sink is not None:
        sink.extend(sent)
        return
    using = router.db_for_write(ProcessedEvent)
    tries, pause = RECORD_TRIES
    error: Exception | None = None
    for attempt in range(tries):
        try:
            record_published(sent, using=using)
            return
        except Exception as exc:
            error = exc
            connection = connections[using]
            if connection.in_atomic_block:
                break  # the transaction is broken: only its rollback helps
            connection.close_if_unusable_or_obsolete()
            time.sleep(pause * 2**attempt)
    if strict:
        raise DeliveriesNotRecorded(
            f"The broker took {len(sent)} handler task(s), but their delivery rows could not "
            f"be written ({describe(error) if error else 'unknown error'}); the batch is "
            "published again later."
        ) from error
    logger.warning(
        "Could not record %d published handler deliveries (%s); their events are published "
        "again, and idempotent handlers run each once.",
        len(sent),
        describe(error) if error else "unknown error",
    )


_cache: list[Publisher] | None = None


def load_publisher(path: str) -> Publisher:
    try:
        cls = import_string(path)
    except ImportError as exc:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"DJANGO_UOW['PUBLISHERS'] names {path!r}, which cannot be imported ({exc}). "
            "Use a dotted path to a publisher class, e.g. 'django_uow.publishers.CeleryPublisher'."
        ) from exc
    publisher = cls()
    if not callable(getattr(publisher, "publish", None)):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"DJANGO_UOW['PUBLISHERS'] entry {path!r} has no publish(envelopes) method."
        )
    loaded: Publisher = publisher
    return loaded


def get_publishers() -> list[Publisher]:
    """The configured publishers, instantiated once (until ``DJANGO_UOW`` changes)."""
    global _cache
    if _cache is None:
        _cache = [load_publisher(path) for path in uow_settings.PUBLISHERS]
    return _cache


_commit_path_cache: tuple[tuple[float, float | None], list[Publisher], bool] | None = None


def commit_path_publishers(
    timeout: float, reply_timeout: float | None = None
) -> tuple[list[Publisher], bool]:
    """The publishers the fast path uses, and whether any of them talks to a broker.

    A publisher with a ``for_commit_path(timeout, reply_timeout)`` method talks to a
    broker: the fast path uses the copy it returns, whose connect is bounded by
    ``timeout`` and whose reads and writes by ``reply_timeout``, with no retries. Others
    (``InlinePublisher``) are used as they are.
    """
    global _commit_path_cache
    cached = _commit_path_cache
    if cached is None or cached[0] != (timeout, reply_timeout):
        publishers: list[Publisher] = []
        brokered = False
        for publisher in get_publishers():
            bounded = getattr(publisher, "for_commit_path", None)
            if callable(bounded):
                publishers.append(_bounded_copy(bounded, timeout, reply_timeout))
                brokered = True
            else:
                publishers.append(publisher)
        cached = _commit_path_cache = ((timeout, reply_timeout), publishers, brokered)
    return cached[1], cached[2]


def _bounded_copy(bounded: Any, timeout: float, reply_timeout: float | None) -> Publisher:
    """``for_commit_path(timeout, reply_timeout)``; a publisher whose method takes only the
    timeout bounds its replies by it too."""
    try:
        inspect.signature(bounded).bind(timeout, reply_timeout)
    except TypeError:
        copy: Publisher = bounded(timeout)
        return copy
    copy = bounded(timeout, reply_timeout)
    return copy


def clear_cache(*, setting: str = "DJANGO_UOW", **kwargs: Any) -> None:
    global _cache, _commit_path_cache
    if setting == "DJANGO_UOW":
        _cache = None
        _commit_path_cache = None


setting_changed.connect(clear_cache, dispatch_uid="django_uow_publishers_cache")
