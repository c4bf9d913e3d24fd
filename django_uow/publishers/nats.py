"""``NatsJetStreamPublisher``: publish events to a NATS JetStream stream, acked per batch.

Each event is one message on the subject ``<NATS_SUBJECT_PREFIX>.<event type>`` (so
``django_uow.shop.OrderPlaced``), with the ``Nats-Msg-Id`` header set to the event id:
JetStream drops a second message with the same id inside the stream's duplicate window
(two minutes by default), so a relay that publishes an event again after losing its
lease does not store it twice. The body is the envelope as JSON (the document
``RedisStreamPublisher`` and ``RabbitMQPublisher`` write).

The stream (``NATS_STREAM``, capturing ``<prefix>.>``) is created on first use when it
does not exist; an existing stream is used as it is. Every message of a batch is written
before the publisher waits, once, for the batch's acks. A message JetStream refuses
(no stream for its subject, a stream limit) or does not ack within the timeout is a
failed publish for that event only. An unreachable server, a connection lost mid-batch,
or a batch of which not one message was acked raises ``ConnectionError``: the relay
hands the batch back without spending attempts.

nats-py is asyncio-only: the publisher runs its own event loop on a daemon thread and
the relay's (synchronous) ``publish`` waits for it. Needs ``pip install
"django-uow[nats]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from uuid import UUID

from ..conf import uow_settings
from ..events.base import Envelope
from ..exceptions import PermanentFailure

#: What a NATS subject token may not contain (wildcards, separators, whitespace).
_BAD_TOKEN = re.compile(r"[\s*>]")


class MessageNotAcked(Exception):
    """JetStream refused one message, or did not ack it in time: that event failed."""


def subject_for(prefix: str, event_type: str) -> str:
    """``<prefix>.<event type>``; ``PermanentFailure`` if the type cannot be a subject."""
    subject = f"{prefix}.{event_type}"
    tokens = subject.split(".")
    if any(not token or _BAD_TOKEN.search(token) for token in tokens):
        raise PermanentFailure(
            f"event type {event_type!r} cannot be a NATS subject ({subject!r}): subject "
            "tokens are separated by '.', may not be empty, and may not contain spaces, "
            "'*' or '>'; rename the event type"
        )
    return subject


class NatsJetStreamPublisher:
    """Publish each event to a JetStream stream, deduplicated by ``Nats-Msg-Id``.

    ``ack_timeout`` bounds the wait for a batch's acks; ``connect_timeout`` the
    connection set-up. ``declare=False`` never creates the stream (an operator owns it).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        stream: str | None = None,
        subject_prefix: str | None = None,
        declare: bool = True,
        ack_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.url = url or uow_settings.NATS_URL
        self.stream = stream or uow_settings.NATS_STREAM
        self.subject_prefix = subject_prefix or uow_settings.NATS_SUBJECT_PREFIX
        self.declare = declare
        # Unset: the sweep's bound on every broker call (BROKER_TIMEOUT).
        bound = uow_settings.BROKER_TIMEOUT
        self.ack_timeout = bound if ack_timeout is None else ack_timeout
        self.connect_timeout = bound if connect_timeout is None else connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._js: Any = None
        self._lock = threading.Lock()

    @property
    def broker_url(self) -> str:
        return str(self.url)

    def for_commit_path(
        self, timeout: float, reply_timeout: float | None = None
    ) -> NatsJetStreamPublisher:
        """A copy for the fast path: connect bounded by ``timeout``, acks by
        ``reply_timeout`` (default ``timeout``)."""
        return NatsJetStreamPublisher(
            self.url,
            stream=self.stream,
            subject_prefix=self.subject_prefix,
            declare=self.declare,
            ack_timeout=timeout if reply_timeout is None else reply_timeout,
            connect_timeout=timeout,
        )

    # -- the event loop -------------------------------------------------------------

    def _run(self, coroutine: Any, timeout: float) -> Any:
        if self._loop is None or not self._loop.is_running():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="django-uow nats publisher", daemon=True
            )
            thread.start()
            self._loop, self._thread = loop, thread
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise ConnectionError(
                f"NATS at {self.url} did not answer within {timeout:g}s"
            ) from None

    def close(self) -> None:
        """Close the connection and stop the loop (a later publish starts both again)."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        with contextlib.suppress(Exception):  # a broken connection: stop the loop anyway
            self._run(self._close(), self.connect_timeout + 1)  # also lets cancelled tasks end
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        loop.close()
        self._loop = self._thread = None

    async def _close(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            await client.close()

    # -- connection -----------------------------------------------------------------

    async def _open(self) -> Any:
        if self._client is not None and self._client.is_connected:
            return self._js
        await self._close()
        import nats

        async def ignore(exc: Exception) -> None:
            """nats-py logs connection errors through this; the relay reports them."""

        client = await nats.connect(
            self.url,
            connect_timeout=self.connect_timeout,
            # Two quick tries, then NoServersError (0 would retry forever).
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            error_cb=ignore,
        )
        js = client.jetstream(timeout=self.ack_timeout)
        if self.declare:
            await self._declare(js)
        self._client, self._js = client, js
        return js

    async def _declare(self, js: Any) -> None:
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(name=self.stream, subjects=[f"{self.subject_prefix}.>"])

    # -- publishing -----------------------------------------------------------------

    def message(self, envelope: Envelope) -> tuple[str, bytes, dict[str, str]]:
        """``(subject, body, headers)`` of one event."""
        body = envelope.to_json().encode()
        headers = {
            "Nats-Msg-Id": str(envelope.event_id),
            "Content-Type": "application/json",
            "Uow-Event-Type": envelope.event_type,
        }
        return subject_for(self.subject_prefix, envelope.event_type), body, headers

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        if not envelopes:
            return None
        with self._lock:
            budget = self.connect_timeout + self.ack_timeout + 1.0
            try:
                return self._run(self._publish(envelopes), budget)  # type: ignore[no-any-return]
            except ConnectionError:
                self.close()
                raise
            except OSError as exc:
                self.close()
                raise ConnectionError(f"NATS at {self.url} is unreachable: {exc!r}") from exc
            except Exception as exc:
                self.close()
                if _is_connection_problem(exc):
                    raise ConnectionError(f"NATS at {self.url} is unreachable: {exc!r}") from exc
                raise

    async def _publish(self, envelopes: Sequence[Envelope]) -> dict[UUID, Exception] | None:
        js = await self._open()
        failures: dict[UUID, Exception] = {}
        pending: dict[UUID, asyncio.Future[Any]] = {}
        for envelope in envelopes:
            try:
                subject, body, headers = self.message(envelope)
            except PermanentFailure as exc:
                failures[envelope.event_id] = exc
                continue
            pending[envelope.event_id] = await js.publish_async(subject, body, headers=headers)
        if pending:
            await asyncio.wait(pending.values(), timeout=self.ack_timeout)
        if pending and not self._client.is_connected:
            raise ConnectionError(f"the connection to NATS at {self.url} was lost mid-batch")
        if pending and not any(future.done() for future in pending.values()):
            for future in pending.values():
                future.cancel()
            # Not one answer: the server is down or stalled. Nothing is spent; a message
            # it stored after all is deduplicated by its Nats-Msg-Id when sent again.
            raise ConnectionError(
                f"NATS at {self.url} answered none of {len(pending)} messages "
                f"within {self.ack_timeout:g}s"
            )
        for event_id, future in pending.items():
            if not future.done():
                future.cancel()
                failures[event_id] = MessageNotAcked(
                    f"JetStream did not ack the message within {self.ack_timeout:g}s"
                )
            elif future.exception() is not None:
                failures[event_id] = MessageNotAcked(_describe_refusal(future.exception()))
        return failures or None


def _describe_refusal(exc: BaseException | None) -> str:
    from nats.errors import NoRespondersError
    from nats.js.errors import NoStreamResponseError

    if isinstance(exc, NoRespondersError | NoStreamResponseError):
        return (
            "no JetStream stream captures the message's subject; create a stream for it "
            "or let the publisher declare one (declare=True)"
        )
    return f"JetStream refused the message: {exc!r}"


def _is_connection_problem(exc: BaseException) -> bool:
    from nats.errors import ConnectionClosedError, NoServersError, TimeoutError, UnexpectedEOF

    return isinstance(exc, ConnectionClosedError | NoServersError | TimeoutError | UnexpectedEOF)
