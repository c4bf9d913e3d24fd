"""NatsJetStreamPublisher against a real NATS JetStream: the shared server on 127.0.0.1:4222
(each test with its own stream and subject prefix, deleted after) and, for the outage, a
``nats-server`` of the test's own that the test SIGSTOPs mid-drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from django_uow import RelayError
from django_uow.events.base import Envelope
from django_uow.exceptions import PermanentFailure
from django_uow.models import OutboxEvent
from django_uow.publishers import NatsJetStreamPublisher
from django_uow.relay import relay_batch, relay_pending
from tests.conftest import require_server
from tests.support.relay import CANCELLED, interleaved, make_rows

URL = "nats://127.0.0.1:4222"

pytestmark = pytest.mark.django_db(transaction=True)


def _run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


class Stream:
    """The test's own stream and subject prefix on a JetStream server, deleted afterwards."""

    def __init__(self, url: str = URL) -> None:
        self.url = url
        tag = uuid.uuid4().hex[:10]
        self.name = f"UOW_TEST_{tag}"
        self.prefix = f"uowtest{tag}"

    def publisher(self, **kwargs: Any) -> NatsJetStreamPublisher:
        options = {"stream": self.name, "subject_prefix": self.prefix, **kwargs}
        return NatsJetStreamPublisher(self.url, **options)

    async def _messages(self) -> list[Any]:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(self.url, connect_timeout=5)
        try:
            js = client.jetstream()
            try:
                info = await js.stream_info(self.name)
            except NotFoundError:
                return []
            first, last = info.state.first_seq, info.state.last_seq
            if not info.state.messages:
                return []
            return [await js.get_msg(self.name, seq) for seq in range(first, last + 1)]
        finally:
            await client.close()

    def messages(self) -> list[Any]:
        return _run(self._messages())  # type: ignore[no-any-return]

    async def _create(self, subjects: list[str]) -> None:
        import nats

        client = await nats.connect(self.url, connect_timeout=5)
        try:
            await client.jetstream().add_stream(name=self.name, subjects=subjects)
        finally:
            await client.close()

    def create(self, subjects: list[str]) -> None:
        _run(self._create(subjects))

    async def _delete(self) -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(self.url, connect_timeout=5)
        try:
            with contextlib.suppress(NotFoundError):
                await client.jetstream().delete_stream(self.name)
        finally:
            await client.close()

    def delete(self) -> None:
        _run(self._delete())


@pytest.fixture
def stream() -> Iterator[Stream]:
    require_server("NATS", "127.0.0.1", 4222)
    own = Stream()
    try:
        yield own
    finally:
        own.delete()


def statuses() -> dict[str, tuple[str, int]]:
    return {r.payload["reason"]: (r.status, r.attempts) for r in OutboxEvent.objects.order_by("id")}


def test_each_event_is_one_message_deduplicated_by_its_event_id(stream: Stream) -> None:
    rows = make_rows(interleaved(3, 4))
    publisher = stream.publisher()
    try:
        summary = relay_pending(publishers=[publisher])
    finally:
        publisher.close()
    assert (summary.relayed, summary.left) == (12, 0)
    messages = stream.messages()
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [str(r.event_id) for r in rows]
    first, row = messages[0], rows[0]
    assert first.subject == f"{stream.prefix}.{CANCELLED}"
    assert first.headers["Content-Type"] == "application/json"
    body = json.loads(first.data)
    assert body["event_id"] == str(row.event_id)
    assert (body["aggregate_type"], body["aggregate_id"]) == ("testapp.order", row.aggregate_id)
    assert body["payload"] == row.payload and body["headers"] == row.headers
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}


def test_an_event_published_again_is_stored_once(stream: Stream) -> None:
    """A relay that dies after publishing and before acknowledging publishes the batch
    again when its lease expires: JetStream keeps one message per event id."""
    make_rows(interleaved(2, 3))
    publisher = stream.publisher()
    try:
        assert relay_pending(publishers=[publisher]).relayed == 6
        OutboxEvent.objects.update(status="pending", claimed_by="", claimed_until=None)
        assert relay_pending(publishers=[publisher]).relayed == 6
    finally:
        publisher.close()
    ids = [m.headers["Nats-Msg-Id"] for m in stream.messages()]
    assert len(ids) == 6 == len(set(ids))


def test_a_subject_no_stream_captures_fails_only_its_event(stream: Stream) -> None:
    stream.create([f"{stream.prefix}.orders.placed"])  # not orders.cancelled
    make_rows([("1", "a")], event_type="orders.placed")
    make_rows([("2", "b")])
    publisher = stream.publisher(declare=False)
    try:
        relay_batch(publishers=[publisher])
    finally:
        publisher.close()
    assert statuses() == {"a": ("dispatched", 1), "b": ("pending", 1)}
    failed = OutboxEvent.objects.get(payload__reason="b")
    assert "no JetStream stream captures" in failed.last_error
    assert [m.subject for m in stream.messages()] == [f"{stream.prefix}.orders.placed"]


def test_an_event_type_that_cannot_be_a_subject_is_a_permanent_failure(stream: Stream) -> None:
    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type="orders.big spender",
        aggregate_type="testapp.order",
        aggregate_id="1",
        aggregate_version=1,
        occurred_at=timezone.now(),
        payload={},
        headers={},
    )
    good = Envelope(**{**envelope.__dict__, "event_id": uuid.uuid4(), "event_type": "orders.x"})
    publisher = stream.publisher()
    try:
        failures = publisher.publish([envelope, good])
    finally:
        publisher.close()
    assert failures is not None and set(failures) == {envelope.event_id}
    assert isinstance(failures[envelope.event_id], PermanentFailure)
    assert "cannot be a NATS subject" in str(failures[envelope.event_id])
    assert [m.headers["Nats-Msg-Id"] for m in stream.messages()] == [str(good.event_id)]


def test_a_refused_server_is_an_outage_that_spends_no_attempt() -> None:
    make_rows([("1", "a"), ("2", "b")])
    dead = NatsJetStreamPublisher("nats://127.0.0.1:1", connect_timeout=1)
    try:
        with pytest.raises(RelayError, match="Could not reach the broker"):
            relay_pending(publishers=[dead])
    finally:
        dead.close()
    assert statuses() == {"a": ("pending", 0), "b": ("pending", 0)}


# -- a server of the test's own, stopped mid-drain ------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(binary):
        require_server("nats-server (binary)", "127.0.0.1", 4222)  # fails under CI
        pytest.skip("nats-server is not installed")
    port = _free_port()
    server = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    try:
        yield f"nats://127.0.0.1:{port}", server
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(10)


def test_a_server_stopped_mid_drain_marks_nothing_unacked(
    own_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, server = own_server
    stream = Stream(url)
    make_rows(interleaved(3, 4))
    publisher = stream.publisher(ack_timeout=1.0, connect_timeout=1.0)
    try:
        assert relay_batch(publishers=[publisher], batch_size=4).dispatched == 4
        server.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RelayError, match="Could not reach the broker"):
                relay_batch(publishers=[publisher], batch_size=4)
        finally:
            server.send_signal(signal.SIGCONT)
        assert OutboxEvent.objects.filter(status="dispatched").count() == 4
        assert OutboxEvent.objects.filter(status="pending", attempts=0).count() == 8
        # The server is back: everything is delivered, each event stored once.
        assert relay_pending(publishers=[publisher]).relayed == 8
    finally:
        publisher.close()
    stored = [m.headers["Nats-Msg-Id"] for m in stream.messages()]
    assert sorted(stored) == sorted(
        str(e) for e in OutboxEvent.objects.values_list("event_id", flat=True)
    )
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}
