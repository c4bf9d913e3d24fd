"""``RabbitMQPublisher``: publish events to a RabbitMQ topic exchange, confirmed per batch.

Each event is one persistent AMQP message: routing key = the event type, ``message_id``
= the event id, ``content_type`` = ``application/json``, body = the envelope as JSON (the
same document ``RedisStreamPublisher`` writes). The exchange (``RABBITMQ_EXCHANGE``, a
durable topic exchange) is declared on first use; consumers bind their own queues to it,
e.g. ``shop.*`` for every event of the ``shop`` app.

Publisher confirms are awaited once per batch, not per message: the channel is in
confirm mode, every message of the batch is written, then the broker's acks (often one
``multiple`` ack) are read until every delivery tag is settled. A message the broker
nacks, returns as unroutable (with ``mandatory=True``), or does not confirm within the
timeout is a failed publish for that event only. An unreachable broker, or a connection
lost mid-batch, raises: the relay hands the batch back without spending attempts.

Uses ``amqp`` (py-amqp, a dependency of kombu and Celery): ``pip install
"django-uow[rabbitmq]"``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

from ..conf import uow_settings
from ..events.base import Envelope
from ..exceptions import RelayError


class MessageNotConfirmed(Exception):
    """The broker nacked, returned or never confirmed one message: that event failed."""


def connection_params(url: str) -> dict[str, Any]:
    """Keyword arguments of ``amqp.Connection`` for an ``amqp://user:pass@host:port/vhost`` URL.

    The vhost is the URL path without its first slash, so ``//`` (and an empty path)
    is the default vhost ``/``.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"amqp", "pyamqp"}:
        raise RelayError(
            f"RABBITMQ_URL {url!r} is not an amqp:// URL; write it as "
            "'amqp://user:password@host:5672/vhost' ('//' for the default vhost)."
        )
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return {
        "host": f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        "userid": unquote(parts.username or "guest"),
        "password": unquote(parts.password or "guest"),
        "virtual_host": vhost,
    }


class _Confirms:
    """Collects the broker's acks, nacks and returns for one batch's delivery tags."""

    def __init__(self, tags: Mapping[int, UUID]) -> None:
        self.open = dict(tags)
        self.failures: dict[UUID, Exception] = {}

    def _settle(self, tag: int, multiple: bool, error: Exception | None) -> None:
        settled = [t for t in self.open if t <= tag] if multiple else [tag]
        for t in settled:
            event_id = self.open.pop(t, None)
            if event_id is not None and error is not None:
                self.failures.setdefault(event_id, error)

    def on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, None)

    def on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, MessageNotConfirmed("the broker refused the message (nack)"))

    def on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        # A returned message is still acked afterwards: remember why it failed.
        event_id = UUID(str(message.properties.get("message_id")))
        self.failures[event_id] = MessageNotConfirmed(
            f"unroutable: no queue is bound to exchange {exchange!r} for routing key "
            f"{routing_key!r} ({exc}); bind a queue, or publish without mandatory=True"
        )


class RabbitMQPublisher:
    """Publish each event to a durable topic exchange, with publisher confirms per batch.

    ``mandatory=True`` makes an unroutable message (no queue bound for its routing key)
    a failed publish instead of a message the broker drops. ``confirm_timeout`` bounds
    the wait for a batch's confirms; ``connect_timeout`` the connection set-up.
    """

    mandatory = False

    def __init__(
        self,
        url: str | None = None,
        *,
        exchange: str | None = None,
        mandatory: bool | None = None,
        confirm_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.url = url or uow_settings.RABBITMQ_URL
        self.exchange = exchange or uow_settings.RABBITMQ_EXCHANGE
        if mandatory is not None:
            self.mandatory = mandatory
        # Unset: the sweep's bound on every broker call (BROKER_TIMEOUT).
        self.confirm_timeout = _or_bound(confirm_timeout)
        self.connect_timeout = _or_bound(connect_timeout)
        self.connection_name = f"django-uow publisher {uuid.uuid4().hex[:8]}"
        self._connection: Any = None
        self._channel: Any = None
        self._next_tag = 1
        self._lock = threading.Lock()

    @property
    def broker_url(self) -> str:
        return str(self.url)

    def for_commit_path(
        self, timeout: float, reply_timeout: float | None = None
    ) -> RabbitMQPublisher:
        """A copy for the fast path: connect bounded by ``timeout``, writes and confirms by
        ``reply_timeout`` (default ``timeout``)."""
        return RabbitMQPublisher(
            self.url,
            exchange=self.exchange,
            mandatory=self.mandatory,
            confirm_timeout=timeout if reply_timeout is None else reply_timeout,
            connect_timeout=timeout,
        )

    # -- connection -----------------------------------------------------------------

    def _open(self) -> Any:
        if self._channel is not None:
            return self._channel
        import amqp

        connection = amqp.Connection(
            **connection_params(self.url),
            connect_timeout=self.connect_timeout,
            read_timeout=self.confirm_timeout,
            write_timeout=self.confirm_timeout,
            client_properties={"connection_name": self.connection_name},
        )
        connection.connect()
        try:
            channel = connection.channel()
            channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
            channel.confirm_select()
        except BaseException:
            connection.collect()
            raise
        self._connection, self._channel, self._next_tag = connection, channel, 1
        return channel

    def close(self) -> None:
        """Close the connection (a later publish opens a new one)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                connection.collect()  # already broken: free its socket

    # -- publishing -----------------------------------------------------------------

    def message(self, envelope: Envelope) -> Any:
        """The AMQP message of one event: persistent JSON, ``message_id`` = the event id."""
        import amqp

        return amqp.Message(
            envelope.to_json(),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            message_id=str(envelope.event_id),
            type=envelope.event_type,
            timestamp=int(envelope.occurred_at.timestamp()),
            application_headers={
                "aggregate_type": envelope.aggregate_type,
                "aggregate_id": envelope.aggregate_id,
            },
        )

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        if not envelopes:
            return None
        import amqp

        with self._lock:
            try:
                return self._publish(envelopes)
            except (OSError, amqp.exceptions.ConnectionError) as exc:
                self.close()  # the next batch reconnects; the relay hands this one back
                host = connection_params(self.url)["host"]
                raise ConnectionError(f"RabbitMQ at {host} is unreachable: {exc!r}") from exc
            except Exception:
                self.close()
                raise

    def _publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        channel = self._open()
        first = self._next_tag
        tags = {first + i: envelope.event_id for i, envelope in enumerate(envelopes)}
        confirms = _Confirms(tags)
        # Listen before writing: py-amqp reads pending frames (acks included) before
        # each publish when the broker can block connections.
        with self._listening(channel, confirms):
            for envelope in envelopes:
                channel._basic_publish(  # confirm mode without a round trip per message
                    self.message(envelope),
                    exchange=self.exchange,
                    routing_key=envelope.event_type,
                    mandatory=self.mandatory,
                )
                self._next_tag += 1
            self._await(confirms)
        if confirms.open:
            self.close()  # late confirms must not meet the next batch's tags
        for event_id in confirms.open.values():
            confirms.failures[event_id] = MessageNotConfirmed(
                f"the broker did not confirm the message within {self.confirm_timeout:g}s"
            )
        return confirms.failures or None

    @contextmanager
    def _listening(self, channel: Any, confirms: _Confirms) -> Iterator[None]:
        handlers = {
            "basic_ack": confirms.on_ack,
            "basic_nack": confirms.on_nack,
            "basic_return": confirms.on_return,
        }
        for name, handler in handlers.items():
            channel.events[name].add(handler)
        try:
            yield
        finally:
            for name, handler in handlers.items():
                channel.events[name].discard(handler)

    def _await(self, confirms: _Confirms) -> None:
        """Read the broker's confirms until every tag is settled or the timeout passes."""
        deadline = time.monotonic() + self.confirm_timeout
        while confirms.open:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self._connection.drain_events(timeout=left)
            except TimeoutError:
                return


def _or_bound(seconds: float | None) -> float:
    return uow_settings.BROKER_TIMEOUT if seconds is None else seconds
