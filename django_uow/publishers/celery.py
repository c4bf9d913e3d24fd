"""``CeleryPublisher``: one Celery task per (event, handler), a batch in one round trip."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar
from uuid import UUID

from ..conf import uow_settings
from ..delivery.handlers import Handler, handlers_for
from ..events.base import Envelope
from ..exceptions import UnknownEventType
from ..retry import is_connection_error
from .base import OrderedFailures, handler_task_id, record_deliveries
from .celery_messages import HANDLE_TASK, Delivery, send_batch, task_queue
from .connections import celery_connection


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
        confirm_timeout: float | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self._app = app
        self.timeout = timeout
        self.reply_timeout = reply_timeout
        if timeout is not None:
            confirm_timeout = timeout if reply_timeout is None else reply_timeout
        self._confirm_timeout: float | None = confirm_timeout

    @property
    def confirm_timeout(self) -> float:
        """The wait for a batch's confirms (unset: ``BROKER_TIMEOUT``, read when used)."""
        if self._confirm_timeout is None:
            return uow_settings.BROKER_TIMEOUT
        return self._confirm_timeout

    @property
    def broker_url(self) -> str:
        conf = self.app.conf
        return str(conf.broker_write_url or conf.broker_url)

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
            confirm_timeout=self._confirm_timeout,
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
        # Not the app's pool: kombu would retry a connect until broker_connection_timeout
        # and its Redis transport sets no socket timeout, so a hung broker held the sweep
        # (and SIGTERM) forever. The sweep is bounded by BROKER_TIMEOUT on every step.
        timeout = uow_settings.BROKER_TIMEOUT if self.timeout is None else self.timeout
        reply = timeout if self.timeout is None else self.reply_timeout
        with celery_connection(app, timeout, reply) as connection:
            yield app.amqp.Producer(connection, auto_declare=False)

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        outcome = OrderedFailures()
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
            record_deliveries(sent, strict=False)  # the outage is what the relay must see
            raise
        record_deliveries(sent, strict=True)
        return outcome.result()

    def _publish(
        self,
        events: Sequence[tuple[Envelope, list[Delivery]]],
        outcome: OrderedFailures,
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
        outcome: OrderedFailures,
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
                record_deliveries(sent, strict=False)

    def queues_of(self, handlers: Iterable[Handler]) -> dict[str, str]:
        """The broker queue each handler's tasks go to (by handler name), as ``send_task``
        routes them; handlers whose route cannot be told are left out."""
        app = self.app
        queues: dict[str, str] = {}
        for handler in handlers:
            name = task_queue(app, handler.queue or uow_settings.CELERY_QUEUE or None)
            if name is not None:
                queues[handler.name] = name
        return queues

    def queue_depths(self, queues: Iterable[str], *, timeout: float = 5.0) -> dict[str, int]:
        """Messages waiting in each broker queue, where the transport can tell (Redis,
        AMQP); queues it cannot tell about are left out.

        Waiting means ready to be taken: messages a worker holds (running, prefetched, or
        kept for a countdown) are not counted. Bounded by ``timeout``; a broker error
        propagates.
        """
        names = sorted(set(queues))
        depths: dict[str, int] = {}
        if not names:
            return depths
        with celery_connection(self.app, timeout) as connection:
            for queue in names:
                count = _ready_messages(connection, queue)
                if count is not None:
                    depths[queue] = count
        return depths

    @staticmethod
    def _send(app: Any, producer: Any, delivery: Delivery) -> None:
        options: dict[str, Any] = {}
        if delivery.queue:
            options["queue"] = delivery.queue
        if delivery.soft_time_limit is not None:
            options["soft_time_limit"] = delivery.soft_time_limit
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
            timeout=handler.policy.timeout,
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
