"""Publishers: how the relay hands a batch of events to the outside world.

A publisher gets the envelopes of one batch in id order and publishes them in one
round trip (a Redis pipeline, one Celery producer). It returns ``None`` when all were
published, or a mapping ``{event_id: exception}`` for the ones that failed (the rest
were published); raising means the whole batch failed. When an event fails, a
publisher should not publish later events of the same aggregate in that batch: it
reports them as ``BlockedByEarlierFailure`` and the relay hands them back untouched.

A publisher class that delivers events to this project's ``@event_handler`` functions,
and to nothing else, sets ``runs_handlers = True``: the ``django_uow.W100`` check then
knows an event type without a handler would have no effect at all.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, ClassVar, Protocol, runtime_checkable
from uuid import UUID

from django.core.signals import setting_changed
from django.db import connections, router
from django.utils.module_loading import import_string

from .brokers import celery_connection, redis_client_options
from .celery_batch import HANDLE_TASK, Delivery, send_batch, task_queue
from .conf import uow_settings
from .deliveries import record_published
from .events import Envelope
from .exceptions import (
    BlockedByEarlierFailure,
    DeliveriesNotRecorded,
    HandlerFailed,
    PermanentFailure,
    RetryAfter,
    UnknownEventType,
)
from .handlers import Handler, handlers_for
from .inbox import run_handler
from .jetstream import NatsJetStreamPublisher
from .models import ProcessedEvent
from .rabbitmq import RabbitMQPublisher
from .retry import describe, is_connection_error

logger = logging.getLogger("django_uow.publishers")


__all__ = [
    "BlockedByEarlierFailure",
    "CeleryPublisher",
    "InlinePublisher",
    "NatsJetStreamPublisher",
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

    A handler that raises fails its event; the relay retries it with backoff. Its
    exception reaches the relay wrapped in ``HandlerFailed`` (``PermanentFailure`` and
    ``RetryAfter`` as they are), so a handler's ``ConnectionError`` is never taken for a
    broker outage.
    """

    #: Every event it is given reaches handlers (system check W100 relies on it).
    runs_handlers: ClassVar[bool] = True
    #: Runs the handlers here: an outage of another publisher of the batch does not stop
    #: it (each handler's inbox row makes the batch's retry skip what already ran).
    in_process: ClassVar[bool] = True

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        outcome = _OrderedFailures()
        for envelope in envelopes:
            if outcome.blocked(envelope):
                continue
            try:
                envelope.event_class()
            except UnknownEventType as exc:
                outcome.fail(envelope, exc)
                continue
            for handler in handlers_for(envelope.event_type):
                try:
                    run_handler(handler, envelope)
                except (PermanentFailure, RetryAfter) as exc:
                    outcome.fail(envelope, exc)
                    break
                except Exception as exc:
                    outcome.fail(envelope, HandlerFailed(handler.name, exc))
                    break
        return outcome.result()


class CeleryPublisher:
    """Send one Celery task per (event, handler), a whole batch in as few round trips as possible.

    Task ids are ``uuid5(event_id, handler name)``; tasks go to the handler's ``queue``
    or ``CELERY_QUEUE``, through ``task_routes`` as ``send_task`` routes them. On a Redis
    broker every task of the batch goes in one pipeline; on RabbitMQ (py-amqp) on one
    confirm-mode channel, the confirms awaited once per batch (``confirm_timeout``); on
    other transports, or a configuration ``celery_batch`` does not reproduce, one
    ``send_task`` per task through one producer. Broker errors are not retried here: the
    relay gives the batch back and tries again later. The deliveries sent are recorded
    as ``published`` in the inbox with one statement per batch, so a task the broker
    loses is published again after ``HANDLER_DEADLINE``.
    """

    runs_handlers: ClassVar[bool] = True

    def __init__(
        self,
        app: Any = None,
        *,
        timeout: float | None = None,
        confirm_timeout: float = 10.0,
        reply_timeout: float | None = None,
    ) -> None:
        self._app = app
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        if timeout is not None:
            confirm_timeout = timeout if reply_timeout is None else reply_timeout
        self.confirm_timeout = confirm_timeout

    @property
    def app(self) -> Any:
        if self._app is not None:
            return self._app
        from celery import current_app

        return current_app._get_current_object()  # type: ignore[attr-defined]

    def bound(self) -> CeleryPublisher:
        """This publisher with the calling thread's Celery app fixed (the current app is
        per thread), for a publish handed to another thread."""
        if self._app is not None:
            return self
        return CeleryPublisher(
            self.app,
            timeout=self.timeout,
            confirm_timeout=self.confirm_timeout,
            reply_timeout=self.reply_timeout,
        )

    def for_commit_path(
        self, timeout: float, reply_timeout: float | None = None
    ) -> CeleryPublisher:
        """This publisher on a connection of its own: connect bounded by ``timeout``, each
        read and write (and the confirms) by ``reply_timeout`` (default ``timeout``)."""
        return CeleryPublisher(self._app, timeout=timeout, reply_timeout=reply_timeout)

    @contextmanager
    def _producer(self, app: Any) -> Iterator[Any]:
        if self.timeout is None:
            with app.producer_or_acquire() as producer:
                yield producer
            return
        with celery_connection(app, self.timeout, self.reply_timeout) as connection:
            yield app.amqp.Producer(connection, auto_declare=False)

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        outcome = _OrderedFailures()
        events: list[tuple[Envelope, list[Delivery]]] = []
        for envelope in envelopes:
            if outcome.blocked(envelope):
                continue
            try:
                envelope.event_class()
            except UnknownEventType as exc:
                outcome.fail(envelope, exc)
                continue
            events.append((envelope, _deliveries(envelope, handlers_for(envelope.event_type))))
        sent: list[tuple[Envelope, str]] = []
        try:
            self._publish(events, outcome, sent)
        except BaseException:
            _record_published(sent, strict=False)  # the outage is what the relay must see
            raise
        _record_published(sent, strict=True)
        return outcome.result()

    def _publish(
        self,
        events: Sequence[tuple[Envelope, list[Delivery]]],
        outcome: _OrderedFailures,
        sent: list[tuple[Envelope, str]],
    ) -> None:
        app = self.app
        with self._producer(app) as producer:
            deliveries = [d for _, deliveries in events for d in deliveries]
            batch = in_tasks(deliveries, uow_settings.HANDLER_BATCH)
            errors = send_batch(app, producer, batch, confirm_timeout=self.confirm_timeout)
            if errors is None:
                self._publish_each(app, producer, events, outcome, sent)
                return
        failed: dict[tuple[UUID, str], Exception | None] = {}
        for task, task_error in zip(batch, errors, strict=True):
            for envelope in task.envelopes:
                failed[(envelope.event_id, task.handler)] = task_error
        for envelope, deliveries in events:
            blocked = outcome.blocked(envelope)  # sent, but an earlier event failed
            error = None
            for delivery in deliveries:
                exc = failed[(envelope.event_id, delivery.handler)]
                if exc is None:
                    sent.append((envelope, delivery.handler))
                else:
                    error = error or exc
            if error is not None and not blocked:
                outcome.fail(envelope, error)

    def _publish_each(
        self,
        app: Any,
        producer: Any,
        events: Sequence[tuple[Envelope, list[Delivery]]],
        outcome: _OrderedFailures,
        sent: list[tuple[Envelope, str]],
    ) -> None:
        """One ``send_task`` per delivery, through ``producer``."""
        for envelope, deliveries in events:
            if outcome.blocked(envelope):
                continue
            try:
                for delivery in deliveries:
                    self._send(app, producer, delivery)
                    sent.append((envelope, delivery.handler))
            except Exception as exc:
                if is_connection_error(exc):
                    raise  # broker down: the relay hands the whole batch back
                outcome.fail(envelope, exc)

    def send_deliveries(
        self, deliveries: Sequence[tuple[Envelope, Handler]], *, record: bool = True
    ) -> None:
        """Send exactly these (event, handler) tasks through one producer; raise on error.

        The deadline sweep and ``redeliver`` use it to publish one handler's delivery again.
        """
        app = self.app
        batch = [d for envelope, handler in deliveries for d in _deliveries(envelope, [handler])]
        sent: list[tuple[Envelope, str]] = []
        try:
            with self._producer(app) as producer:
                errors = send_batch(app, producer, batch, confirm_timeout=self.confirm_timeout)
                if errors is None:
                    for delivery in batch:
                        self._send(app, producer, delivery)
                        sent.append((delivery.envelope, delivery.handler))
                    return
            sent.extend(
                (d.envelope, d.handler) for d, e in zip(batch, errors, strict=True) if e is None
            )
            failures = [e for e in errors if e is not None]
            if failures:
                raise failures[0]
        finally:
            if record:
                _record_published(sent, strict=False)

    def queue_depths(self, handlers: Iterable[Handler], *, timeout: float = 5.0) -> dict[str, int]:
        """Messages waiting in the broker queue of each handler (by name), where the
        transport can tell (Redis, AMQP); handlers it cannot tell about are left out.

        Waiting means ready to be taken: messages a worker holds (running, prefetched,
        or kept for a countdown) are not counted. Bounded by ``timeout``; a broker error
        propagates.
        """
        app = self.app
        depths: dict[str, int] = {}
        by_queue: dict[str, list[str]] = {}
        for handler in handlers:
            name = task_queue(app, handler.queue or uow_settings.CELERY_QUEUE or None)
            if name is not None:
                by_queue.setdefault(name, []).append(handler.name)
        if not by_queue:
            return depths
        with celery_connection(app, timeout) as connection:
            for queue, names in by_queue.items():
                count = _ready_messages(connection, queue)
                if count is not None:
                    depths.update(dict.fromkeys(names, count))
        return depths

    @staticmethod
    def _send(app: Any, producer: Any, delivery: Delivery) -> None:
        options: dict[str, Any] = {}
        if delivery.queue:
            options["queue"] = delivery.queue
        # By name: the worker runs django_uow.tasks.handle_event.
        app.send_task(
            HANDLE_TASK,
            args=(delivery.message, delivery.handler),
            task_id=delivery.task_id,
            producer=producer,
            retry=False,
            ignore_result=True,  # as the task does: no result backend call
            **options,
        )


def _ready_messages(connection: Any, queue: str) -> int | None:
    """``queue``'s ready messages (a passive declare: Redis sums its priority lists); 0 for
    a queue the broker does not have; None when the transport cannot tell."""
    if connection.transport.driver_type not in ("redis", "amqp"):
        return None
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except Exception as exc:
        codes = {str(getattr(exc, name, "")) for name in ("code", "reply_code")}
        if "404" in codes:
            # No such queue (AMQP; kombu's Redis transport says the same of an empty
            # one), so nothing waits in it.
            return 0
        raise
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def _deliveries(envelope: Envelope, handlers: Iterable[Handler]) -> list[Delivery]:
    """The handler tasks of one event; its message is built once for all of them."""
    message = envelope.to_message()
    return [
        Delivery(
            envelope,
            handler.name,
            handler.queue or uow_settings.CELERY_QUEUE or None,
            message,
            handler_task_id(envelope.event_id, handler.name),
        )
        for handler in handlers
    ]


def in_tasks(deliveries: Sequence[Delivery], size: int) -> list[Delivery]:
    """``deliveries`` as Celery tasks: each handler's, in order, up to ``size`` per task.

    A task of one delivery is the usual ``handle_event`` task (its deterministic id
    kept); a longer one is a ``handle_events`` task, which runs them in turn.
    """
    if size <= 1:
        return list(deliveries)
    groups: dict[tuple[str, str | None], list[Delivery]] = {}
    for delivery in deliveries:
        groups.setdefault((delivery.handler, delivery.queue), []).append(delivery)
    tasks: list[Delivery] = []
    for group in groups.values():
        for start in range(0, len(group), size):
            first, *rest = group[start : start + size]
            if not rest:
                tasks.append(first)
                continue
            more = tuple((d.envelope, d.message) for d in rest)
            tasks.append(replace(first, task_id=str(uuid.uuid4()), more=more))
    return tasks


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
    _record_published(sent, strict=True)


def _record_published(sent: Sequence[tuple[Envelope, str]], *, strict: bool) -> None:
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


class RedisStreamPublisher:
    """XADD each event to a Redis stream with one pipeline per batch.

    The stream key is ``STREAM_KEY`` formatted with ``aggregate_type`` and ``event_type``
    (default ``"django_uow:{aggregate_type}"``: one stream per aggregate type; use
    ``"...:{event_type}"`` for one per event type). Streams are capped with
    ``MAXLEN ~ STREAM_MAXLEN``. Each entry has one field, ``message``: the envelope as JSON.
    A batch is one server-side script (``XADD_IN_ORDER``): one round trip, and an
    aggregate whose event failed gets none of its later events in that batch.
    """

    #: A batch is one pipeline that Redis answers in milliseconds: under RELAY_MODE
    #: "auto" the relay publishes it inside the claiming transaction (one write per row).
    direct_relay = True

    def __init__(
        self,
        url: str | None = None,
        *,
        key: str | None = None,
        maxlen: int | None = -1,
        timeout: float | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self.url = url or uow_settings.REDIS_URL
        self.key = key or uow_settings.STREAM_KEY
        self.maxlen = uow_settings.STREAM_MAXLEN if maxlen == -1 else maxlen
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        self._client: Any = None
        self._xadd: Any = None

    def for_commit_path(
        self, timeout: float, reply_timeout: float | None = None
    ) -> RedisStreamPublisher:
        """This publisher with a client of its own: connect bounded by ``timeout``, each
        command by ``reply_timeout`` (default ``timeout``), no retries."""
        return RedisStreamPublisher(
            self.url, key=self.key, maxlen=self.maxlen, timeout=timeout, reply_timeout=reply_timeout
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            import redis

            if self.timeout is None:
                options = {"socket_connect_timeout": 2, "socket_timeout": 5}
            else:
                options = redis_client_options(self.timeout, self.reply_timeout)
            self._client = redis.Redis.from_url(self.url, **options)
        return self._client

    def stream_key(self, envelope: Envelope) -> str:
        return self.key.format(
            aggregate_type=envelope.aggregate_type or "none", event_type=envelope.event_type
        )

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        if not envelopes:
            return None
        ordered = uow_settings.ORDERING == "aggregate"
        keys: list[str] = []
        args: list[Any] = [self.maxlen or 0, 1 if ordered else 0]
        for envelope in envelopes:
            keys.append(self.stream_key(envelope))
            aggregate = f"{envelope.aggregate_type}\x1f{envelope.aggregate_id}"
            args += [aggregate if envelope.aggregate_id else "", envelope.to_json()]
        results = self._script(keys=keys, args=args)
        outcome = _OrderedFailures()
        for envelope, result in zip(envelopes, results, strict=True):
            if outcome.blocked(envelope):
                continue
            if isinstance(result, Exception):
                outcome.fail(envelope, result)
            elif result == b"blocked" or result == "blocked":
                outcome.failures[envelope.event_id] = BlockedByEarlierFailure(envelope)
        return outcome.result()

    @property
    def _script(self) -> Any:
        if self._xadd is None:
            self._xadd = self.client.register_script(XADD_IN_ORDER)
        return self._xadd


#: One round trip for a batch, like a pipeline, but in order per aggregate: once an
#: event's XADD fails, the later events of its aggregate are not added ("blocked"), so a
#: stream never holds an event whose predecessor is missing. KEYS: a stream per event;
#: ARGV: MAXLEN (0: none), ordering on (1/0), then per event its aggregate key and body.
XADD_IN_ORDER = """
local maxlen = tonumber(ARGV[1])
local ordered = ARGV[2] == '1'
local failed = {}
local out = {}
for i = 1, #KEYS do
  local aggregate = ARGV[2 * i + 1]
  local body = ARGV[2 * i + 2]
  if ordered and aggregate ~= '' and failed[aggregate] then
    out[i] = 'blocked'
  else
    local reply
    if maxlen > 0 then
      reply = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*', 'message', body)
    else
      reply = redis.pcall('XADD', KEYS[i], '*', 'message', body)
    end
    if type(reply) == 'table' and reply.err then
      if aggregate ~= '' then failed[aggregate] = true end
    end
    out[i] = reply
  end
end
return out
"""


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
