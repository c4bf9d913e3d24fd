"""Publishers: how the relay hands a batch of events to the outside world.

A publisher gets the envelopes of one batch in id order and publishes them in one
round trip (a Redis pipeline, one Celery producer). It returns ``None`` when all were
published, or a mapping ``{event_id: exception}`` for the ones that failed (the rest
were published); raising means the whole batch failed. When an event fails, a
publisher should not publish later events of the same aggregate in that batch: it
reports them as ``BlockedByEarlierFailure`` and the relay hands them back untouched.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .conf import uow_settings
from .events import Envelope
from .exceptions import BlockedByEarlierFailure, UnknownEventType
from .handlers import handlers_for
from .inbox import run_handler
from .rabbitmq import RabbitMQPublisher
from .retry import is_connection_error

logger = logging.getLogger("django_uow.publishers")

#: The Celery task that runs one handler for one event.
HANDLE_TASK = "django_uow.tasks.handle_event"


__all__ = [
    "BlockedByEarlierFailure",
    "CeleryPublisher",
    "InlinePublisher",
    "Publisher",
    "RabbitMQPublisher",
    "RedisStreamPublisher",
    "get_publishers",
    "handler_task_id",
]


@runtime_checkable
class Publisher(Protocol):
    """What ``PUBLISHERS`` entries implement: publish one batch, report what failed."""

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        """Publish ``envelopes`` (id order); ``None``: all published, else the failures."""
        ...


class _OrderedFailures:
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


def handler_task_id(event_id: UUID | str, handler_name: str) -> str:
    """The deterministic Celery task id of (event, handler): a redelivery reuses it."""
    return str(uuid.uuid5(UUID(str(event_id)), handler_name))


class InlinePublisher:
    """Call the handlers in the relay process (tests, demos, no broker).

    A handler that raises fails its event; the relay retries it with backoff.
    """

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        outcome = _OrderedFailures()
        for envelope in envelopes:
            if outcome.blocked(envelope):
                continue
            try:
                envelope.event_class()
                for handler in handlers_for(envelope.event_type):
                    run_handler(handler, envelope)
            except Exception as exc:
                outcome.fail(envelope, exc)
        return outcome.result()


class CeleryPublisher:
    """Send one Celery task per (event, handler), all through ONE producer per batch.

    Task ids are ``uuid5(event_id, handler name)``; tasks go to the handler's ``queue``
    or ``CELERY_QUEUE``. Broker errors are not retried here (``retry=False``): the relay
    gives the batch back and tries again later.
    """

    def __init__(self, app: Any = None) -> None:
        self._app = app

    @property
    def app(self) -> Any:
        if self._app is not None:
            return self._app
        from celery import current_app

        return current_app

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        app = self.app
        default_queue = uow_settings.CELERY_QUEUE
        outcome = _OrderedFailures()
        with app.producer_or_acquire() as producer:
            for envelope in envelopes:
                if outcome.blocked(envelope):
                    continue
                try:
                    envelope.event_class()
                except UnknownEventType as exc:
                    outcome.fail(envelope, exc)
                    continue
                message = envelope.to_message()
                try:
                    for handler in handlers_for(envelope.event_type):
                        options: dict[str, Any] = {}
                        queue = handler.queue or default_queue
                        if queue:
                            options["queue"] = queue
                        # By name: the worker runs django_uow.tasks.handle_event.
                        app.send_task(
                            HANDLE_TASK,
                            args=(message, handler.name),
                            task_id=handler_task_id(envelope.event_id, handler.name),
                            producer=producer,
                            retry=False,
                            **options,
                        )
                except Exception as exc:
                    if is_connection_error(exc):
                        raise  # broker down: the relay hands the whole batch back
                    outcome.fail(envelope, exc)
        return outcome.result()


class RedisStreamPublisher:
    """XADD each event to a Redis stream with one pipeline per batch.

    The stream key is ``STREAM_KEY`` formatted with ``aggregate_type`` and ``event_type``
    (default ``"django_uow:{aggregate_type}"``: one stream per aggregate type; use
    ``"...:{event_type}"`` for one per event type). Streams are capped with
    ``MAXLEN ~ STREAM_MAXLEN``. Each entry has one field, ``message``: the envelope as JSON.
    """

    def __init__(
        self, url: str | None = None, *, key: str | None = None, maxlen: int | None = -1
    ) -> None:
        self.url = url or uow_settings.REDIS_URL
        self.key = key or uow_settings.STREAM_KEY
        self.maxlen = uow_settings.STREAM_MAXLEN if maxlen == -1 else maxlen
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(
                self.url, socket_connect_timeout=2, socket_timeout=5
            )
        return self._client

    def stream_key(self, envelope: Envelope) -> str:
        return self.key.format(
            aggregate_type=envelope.aggregate_type or "none", event_type=envelope.event_type
        )

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        pipe = self.client.pipeline(transaction=False)
        for envelope in envelopes:
            body = json.dumps(envelope.to_message(), cls=DjangoJSONEncoder)
            if self.maxlen:
                pipe.xadd(
                    self.stream_key(envelope),
                    {"message": body},
                    maxlen=self.maxlen,
                    approximate=True,
                )
            else:
                pipe.xadd(self.stream_key(envelope), {"message": body})
        results = pipe.execute(raise_on_error=False)
        outcome = _OrderedFailures()
        for envelope, result in zip(envelopes, results, strict=True):
            if outcome.blocked(envelope):
                continue
            if isinstance(result, Exception):
                outcome.fail(envelope, result)
        return outcome.result()


# ----------------------------------------------------------------------- loading

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
    return publisher  # type: ignore[no-any-return]


def get_publishers() -> list[Publisher]:
    """The configured publishers, instantiated once (until ``DJANGO_UOW`` changes)."""
    global _cache
    if _cache is None:
        _cache = [load_publisher(path) for path in uow_settings.PUBLISHERS]
    return _cache


def clear_cache(*, setting: str = "DJANGO_UOW", **kwargs: Any) -> None:
    global _cache
    if setting == "DJANGO_UOW":
        _cache = None


setting_changed.connect(clear_cache, dispatch_uid="django_uow_publishers_cache")
