"""Celery task messages for a whole batch, sent with the fewest broker round trips.

``CeleryPublisher`` hands the (event, handler) deliveries of a batch to ``send_batch``.
Each task message is built once, as ``send_task`` builds it: the route from the app's
router (``task_routes``, the handler's queue or ``CELERY_QUEUE``), Celery's own
``create_task_message`` (protocol 2), the task's serializer. Then, per transport:

- **Redis**: each message takes the kombu Redis transport's form (``prepare_message``,
  the base64 body, a delivery tag, the priority queue key from ``priority_steps``) and
  every LPUSH of the batch goes in ONE pipeline: one round trip;
- **AMQP** (py-amqp): the messages go out on one channel in confirm mode (``mandatory``)
  and the broker's confirms are awaited once for the batch; a nack, a return or no
  confirm in time fails that delivery only;
- anything else returns ``None`` and the caller sends one ``send_task`` per delivery.

Also ``None`` (one ``send_task`` each, exactly as before) when the configuration is one
this module does not reproduce: task protocol 1, ``task_send_sent_event`` (or a receiver
of the deprecated ``task_sent`` signal), compression, a route with an exchange, a
routing key, an ``expires`` or options it does not know, a queue on a non-direct
exchange or with ``x-expires``. ``_Unusual`` says which.
An unreachable broker raises, as ``send_task`` does: the relay hands the batch back.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..events.base import Envelope
from ..retry import logger_for
from .rabbitmq import MessageNotConfirmed

logger = logger_for("django_uow.publishers")

#: The Celery task that runs one handler for one event.
HANDLE_TASK = "django_uow.tasks.handle_event"
HANDLE_BATCH_TASK = "django_uow.tasks.handle_events"

#: Route options ``send_task`` would turn into something this module reproduces.
_KNOWN_OPTIONS = frozenset({"queue", "priority", "serializer", "delivery_mode"})


class _Unusual(Exception):
    """A configuration the batch path does not reproduce: send one task at a time."""


@dataclass(frozen=True)
class Delivery:
    """One handler task to send: the event, the handler, its queue, its task id.

    With ``more`` (``HANDLER_BATCH`` > 1) the task is ``handle_events`` and runs the
    handler for this event and then for each of those, in order.
    """

    envelope: Envelope
    handler: str
    queue: str | None
    message: dict[str, Any]
    task_id: str
    more: tuple[tuple[Envelope, dict[str, Any]], ...] = ()
    #: The handler's ``timeout`` (seconds per delivery), or None.
    timeout: float | None = None

    @property
    def soft_time_limit(self) -> float | None:
        """Celery's soft time limit of the task: the handler's timeout per delivery in it."""
        return None if self.timeout is None else self.timeout * (1 + len(self.more))

    @property
    def task(self) -> str:
        return HANDLE_BATCH_TASK if self.more else HANDLE_TASK

    @property
    def args(self) -> tuple[Any, ...]:
        if not self.more:
            return (self.message, self.handler)
        return ([self.message, *(message for _, message in self.more)], self.handler)

    @property
    def envelopes(self) -> list[Envelope]:
        return [self.envelope, *(envelope for envelope, _ in self.more)]


@dataclass(frozen=True)
class _Route:
    qname: str
    queue: Any
    priority: int | None
    serializer: str
    delivery_mode: int | None
    time_limit: float | None
    soft_time_limit: float | None


@dataclass
class _Prepared:
    """One task message ready for the transport."""

    index: int
    route: _Route
    task_body: Any
    body: Any
    content_type: str
    content_encoding: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    task: str = HANDLE_TASK


class _Builder:
    """Builds the task messages of one batch the way ``send_task`` would."""

    def __init__(self, app: Any) -> None:
        conf = app.conf
        if conf.task_protocol != 2:
            raise _Unusual(f"task_protocol is {conf.task_protocol}")
        if conf.task_send_sent_event:
            raise _Unusual("task_send_sent_event is on")
        from celery import signals

        if getattr(signals, "task_sent", None) is not None and signals.task_sent.receivers:
            raise _Unusual("a receiver listens to the deprecated task_sent signal")
        self.app = app
        self.amqp = app.amqp
        self.router = app.amqp.router
        self.registry = getattr(app, "_tasks", None)
        self._tasks: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.reply_to = app.thread_oid
        self.root_id: str | None = None
        self.parent_id: str | None = None
        self.parent_priority: int | None = None
        parent = app.current_worker_task
        if parent:  # as send_task: a task publishing from a worker is the parent
            self.root_id = parent.request.root_id or parent.request.id
            self.parent_id = parent.request.id
            if conf.task_inherit_parent_priority:
                self.parent_priority = (parent.request.delivery_info or {}).get("priority")
        self.retry_policy = dict(conf.task_publish_retry_policy or {})
        self.maxsize = int(getattr(self.amqp, "argsrepr_maxsize", 1024))
        self._routes: dict[tuple[str, str | None], _Route] = {}

    def task(self, name: str) -> tuple[Any, dict[str, Any]]:
        """The registered task ``name`` (None when not imported here) and its options."""
        if name not in self._tasks:
            task = self.registry.get(name) if self.registry is not None else None
            options: dict[str, Any] = {}
            if task is not None and hasattr(task, "_get_exec_options"):
                options = {k: v for k, v in task._get_exec_options().items() if v is not None}
            self._tasks[name] = (task, options)
        return self._tasks[name]

    def route(self, name: str, queue: str | None, args: tuple[Any, ...]) -> _Route:
        """Where ``send_task`` would send this task; cached when no ``task_routes``."""
        cacheable = not self.router.routes
        if cacheable and (name, queue) in self._routes:
            return self._routes[(name, queue)]
        task, defaults = self.task(name)
        options = dict(defaults)
        if queue:
            options["queue"] = queue
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        options.pop("ignore_result", None)
        if options.pop("expires", None) is not None:
            raise _Unusual("the task has an expires option")
        options = self.router.route(options, name, args, {}, task)
        if self.parent_priority is not None:
            options.setdefault("priority", self.parent_priority)
        unknown = {k for k, v in options.items() if v is not None} - _KNOWN_OPTIONS
        if unknown:
            raise _Unusual(f"the route sets {', '.join(sorted(unknown))}")
        conf = self.app.conf
        if options.get("compression") or conf.task_compression:
            raise _Unusual("task compression is on")
        target = options.get("queue") or self.amqp.default_queue
        if isinstance(target, str):
            target = self.amqp.queues[target]
        exchange = getattr(target, "exchange", None)
        if exchange is None or exchange.type != "direct" or type(target).__name__ == "Broadcast":
            raise _Unusual(f"queue {target.name!r} is not on a direct exchange")
        from kombu.entity import maybe_delivery_mode

        mode = options.get("delivery_mode") or exchange.delivery_mode
        route = _Route(
            qname=target.name,
            queue=target,
            priority=options.get("priority"),
            serializer=options.get("serializer") or conf.task_serializer,
            delivery_mode=maybe_delivery_mode(mode or conf.task_default_delivery_mode),
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
        )
        if cacheable:
            self._routes[(name, queue)] = route
        return route

    def argsrepr(self, args: tuple[Any, ...]) -> str:
        """What monitoring shows for the arguments: ``repr``, cut as ``saferepr`` cuts."""
        text = repr(args)
        if len(text) > self.maxsize:
            text = text[: self.maxsize] + "..."
        return text

    def build(self, index: int, delivery: Delivery) -> _Prepared:
        from celery import signals
        from kombu.serialization import dumps

        args = delivery.args
        route = self.route(delivery.task, delivery.queue, args)
        headers, properties, body, _ = self.amqp.create_task_message(
            delivery.task_id,
            delivery.task,
            args,
            {},
            reply_to=self.reply_to,
            time_limit=route.time_limit,
            soft_time_limit=delivery.soft_time_limit or route.soft_time_limit,
            root_id=self.root_id,
            parent_id=self.parent_id,
            ignore_result=True,  # as the task does: no result backend call
            argsrepr=self.argsrepr(args),
            kwargsrepr="{}",
        )
        signals.before_task_publish.send(
            sender=delivery.task,
            body=body,
            exchange="",
            routing_key=route.qname,
            declare=[route.queue],
            headers=headers,
            properties=properties,
            retry_policy=self.retry_policy,
        )
        content_type, content_encoding, payload = dumps(body, serializer=route.serializer)
        properties["delivery_mode"] = route.delivery_mode
        return _Prepared(
            index,
            route,
            body,
            payload,
            content_type,
            content_encoding,
            headers,
            properties,
            delivery.task,
        )

    def after(self, prepared: _Prepared) -> None:
        from celery import signals

        signals.after_task_publish.send(
            sender=prepared.task,
            body=prepared.task_body,
            headers=prepared.headers,
            exchange="",
            routing_key=prepared.route.qname,
        )


Errors = list[Exception | None]


def send_batch(
    app: Any, producer: Any, deliveries: Sequence[Delivery], *, confirm_timeout: float
) -> Errors | None:
    """Send ``deliveries`` in one go; per delivery its error or ``None``.

    ``None`` instead of a list: this transport or configuration is not reproduced here,
    nothing was sent, the caller sends one task at a time. A broker outage raises.
    """
    transport = producer.connection.transport
    driver = (transport.driver_type, getattr(transport, "driver_name", ""))
    sender: _RedisSender | _AmqpSender
    try:
        if driver[0] == "redis":
            sender = _RedisSender(producer)
        elif driver == ("amqp", "py-amqp"):
            sender = _AmqpSender(producer, confirm_timeout)
        else:
            return None
        builder = _Builder(app)
        errors: Errors = [None] * len(deliveries)
        prepared: list[_Prepared] = []
        for index, delivery in enumerate(deliveries):
            try:
                prepared.append(builder.build(index, delivery))
            except _Unusual:
                raise
            except Exception as exc:  # e.g. a payload the serializer refuses
                errors[index] = exc
        sender.check(prepared)
    except _Unusual as why:
        logger.debug("Celery publishing one task at a time: %s", why)
        return None
    if prepared:
        sender.send(prepared, errors)
    for item in prepared:
        if errors[item.index] is None:
            builder.after(item)
    return errors


def _declare(producer: Any, prepared: Sequence[_Prepared]) -> None:
    """Declare each queue of the batch once, as ``send_task`` does (kombu caches it)."""
    seen: set[str] = set()
    for item in prepared:
        if item.route.qname not in seen:
            seen.add(item.route.qname)
            producer.maybe_declare(item.route.queue, retry=False)


class _RedisSender:
    """Every LPUSH of the batch in one non-transactional pipeline."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.channel = producer.channel
        for name in ("_inplace_augment_message", "_q_for_pri", "_get_message_priority"):
            if not hasattr(self.channel, name):
                raise _Unusual(f"the Redis channel has no {name}")

    def check(self, prepared: Sequence[_Prepared]) -> None:
        _declare(self.producer, prepared)
        expiring = getattr(self.channel, "_expires", None) or {}
        for item in prepared:
            if item.route.qname in expiring:
                raise _Unusual(f"queue {item.route.qname!r} has x-expires")

    def send(self, prepared: Sequence[_Prepared], errors: Errors) -> None:
        from kombu.utils.json import dumps

        channel = self.channel
        with channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for item in prepared:
                message = channel.prepare_message(
                    item.body,
                    item.route.priority,
                    item.content_type,
                    item.content_encoding,
                    item.headers,
                    item.properties,
                )
                channel._inplace_augment_message(message, "", item.route.qname)
                priority = channel._get_message_priority(message, reverse=False)
                pipe.lpush(channel._q_for_pri(item.route.qname, priority), dumps(message))
            results = pipe.execute(raise_on_error=False)
        for item, result in zip(prepared, results, strict=True):
            if isinstance(result, Exception):
                errors[item.index] = result


class _ConfirmChannel:
    """A channel of our own in confirm mode, and the next delivery tag it will assign."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.next_tag = 1


#: One confirm channel per py-amqp connection, gone with the connection.
_confirm_channels: weakref.WeakKeyDictionary[Any, _ConfirmChannel] = weakref.WeakKeyDictionary()


class _AmqpSender:
    """Publish on one confirm-mode channel; await the confirms once for the batch."""

    def __init__(self, producer: Any, timeout: float) -> None:
        self.producer = producer
        self.connection = producer.connection
        self.timeout = timeout
        self.raw: Any = None

    def check(self, prepared: Sequence[_Prepared]) -> None:
        _declare(self.producer, prepared)

    def _channel(self) -> _ConfirmChannel:
        raw = self.raw = self.connection.connection  # connects when needed
        state = _confirm_channels.get(raw)
        if state is None or not state.channel.is_open:
            channel = self.connection.channel()
            channel.confirm_select()
            state = _confirm_channels[raw] = _ConfirmChannel(channel)
        return state

    def _drop(self) -> None:
        """Stop using this connection's confirm channel: the next batch opens a new one.

        Not closed here: closing waits for the broker's answer, and a broker that did
        not confirm in time may not answer either. Late confirms reach no listener.
        """
        if self.raw is not None:
            _confirm_channels.pop(self.raw, None)

    def send(self, prepared: Sequence[_Prepared], errors: Errors) -> None:
        import amqp

        state = self._channel()
        channel = state.channel
        open_tags: dict[int, int] = {}
        by_task: dict[str, int] = {}

        def settle(tag: int, multiple: bool, error: Exception | None) -> None:
            tags = [t for t in open_tags if t <= tag] if multiple else [tag]
            for t in tags:
                index = open_tags.pop(t, None)
                if index is not None and error is not None and errors[index] is None:
                    errors[index] = error

        def on_ack(tag: int, multiple: bool) -> None:
            settle(tag, multiple, None)

        def on_nack(tag: int, multiple: bool) -> None:
            settle(tag, multiple, MessageNotConfirmed("the broker refused the message (nack)"))

        def on_return(exc: Any, exchange: str, routing_key: str, message: Any) -> None:
            index = by_task.get(str(message.properties.get("correlation_id")))
            if index is not None:
                errors[index] = MessageNotConfirmed(
                    f"unroutable: no queue {routing_key!r} to take the task ({exc})"
                )

        handlers: dict[str, Callable[..., None]] = {
            "basic_ack": on_ack,
            "basic_nack": on_nack,
            "basic_return": on_return,
        }
        try:
            with _listening(channel, handlers):
                for item in prepared:
                    message = channel.prepare_message(
                        item.body,
                        item.route.priority,
                        item.content_type,
                        item.content_encoding,
                        item.headers,
                        item.properties,
                    )
                    open_tags[state.next_tag] = item.index
                    by_task[str(item.properties["correlation_id"])] = item.index
                    state.next_tag += 1
                    channel._basic_publish(  # no round trip per message
                        message, exchange="", routing_key=item.route.qname, mandatory=True
                    )
                self._await(open_tags)
        except (OSError, amqp.exceptions.ConnectionError):
            self._drop()
            raise
        except amqp.exceptions.ChannelError as exc:
            self._drop()  # the broker closed our channel: what it did not confirm failed
            for index in open_tags.values():
                errors[index] = errors[index] or exc
            return
        if open_tags:
            self._drop()  # late confirms must not meet the next batch's tags
            for index in open_tags.values():
                errors[index] = errors[index] or MessageNotConfirmed(
                    f"the broker did not confirm the task within {self.timeout:g}s"
                )

    def _await(self, open_tags: dict[int, int]) -> None:
        deadline = time.monotonic() + self.timeout
        while open_tags:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.raw.drain_events(timeout=left)
            except TimeoutError:
                return


@contextmanager
def _listening(channel: Any, handlers: dict[str, Callable[..., None]]) -> Iterator[None]:
    for name, handler in handlers.items():
        channel.events[name].add(handler)
    try:
        yield
    finally:
        for name, handler in handlers.items():
            channel.events[name].discard(handler)


def task_queue(app: Any, queue: str | None) -> str | None:
    """The broker queue a ``handle_event`` task for a handler with ``queue`` goes to, as
    ``send_task`` routes it (``task_routes`` included); None when it cannot be told."""
    try:
        return _Builder(app).route(HANDLE_TASK, queue, ()).qname
    except Exception:
        return None
