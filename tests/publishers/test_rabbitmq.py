"""RabbitMQPublisher against the real RabbitMQ on 127.0.0.1:5672: messages, confirms,
unroutable messages, an outage, a connection closed by the server mid-drain, and the
example consumer outside Django."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_uow import RelayError
from django_uow.models import OutboxEvent
from django_uow.publishers import RabbitMQPublisher
from django_uow.publishers.rabbitmq import connection_params
from django_uow.relay import RelayLoop, relay_batch, relay_pending
from tests.conftest import require_server
from tests.support.relay import CANCELLED, interleaved, make_rows

ROOT = Path(__file__).resolve().parents[2]
URL = "amqp://guest:guest@127.0.0.1:5672//"

pytestmark = pytest.mark.django_db(transaction=True)


class Broker:
    """The test's own exchange and queue on the shared server, deleted afterwards."""

    def __init__(self) -> None:
        import amqp

        self.exchange = f"uow_test_{uuid.uuid4().hex[:10]}"
        self.queue = f"{self.exchange}_q"
        self.connection = amqp.Connection(**connection_params(URL), connect_timeout=5)
        self.connection.connect()
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)

    def bind(self, pattern: str = "#") -> None:
        self.channel.queue_declare(self.queue, durable=False, auto_delete=False)
        self.channel.queue_bind(self.queue, self.exchange, routing_key=pattern)

    def take(self) -> list[Any]:
        messages = []
        while (message := self.channel.basic_get(self.queue, no_ack=True)) is not None:
            messages.append(message)
        return messages

    def close(self) -> None:
        try:
            self.channel.queue_delete(self.queue)
            self.channel.exchange_delete(self.exchange)
        finally:
            self.connection.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    require_server("RabbitMQ", "127.0.0.1", 5672)
    own = Broker()
    try:
        yield own
    finally:
        own.close()


def statuses() -> dict[str, tuple[str, int]]:
    return {r.payload["reason"]: (r.status, r.attempts) for r in OutboxEvent.objects.order_by("id")}


def test_each_event_is_one_persistent_confirmed_message(broker: Broker) -> None:
    broker.bind()
    rows = make_rows(interleaved(3, 4))
    publisher = RabbitMQPublisher(URL, exchange=broker.exchange)
    try:
        summary = relay_pending(publishers=[publisher])
    finally:
        publisher.close()
    assert (summary.relayed, summary.left) == (12, 0)
    messages = broker.take()
    assert [m.properties["message_id"] for m in messages] == [str(r.event_id) for r in rows]
    first, row = messages[0], rows[0]
    assert first.delivery_info["routing_key"] == CANCELLED  # the event type
    assert first.properties["content_type"] == "application/json"
    assert first.properties["delivery_mode"] == 2  # persistent
    body = json.loads(first.body)
    assert body["event_id"] == str(row.event_id)
    assert body["event_type"] == CANCELLED
    assert (body["aggregate_type"], body["aggregate_id"]) == ("testapp.order", row.aggregate_id)
    assert body["payload"] == row.payload and body["headers"] == row.headers
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}


def test_a_batch_is_written_whole_before_any_wait_for_confirms(broker: Broker) -> None:
    """Confirm mode without a round trip per message: py-amqp's own confirm mode waits
    for each message's ack before writing the next; this publisher writes the whole
    batch, then reads the acks."""
    broker.bind()
    make_rows(interleaved(5, 10))
    publisher = RabbitMQPublisher(URL, exchange=broker.exchange)
    steps: list[str] = []
    try:
        channel = publisher._open()
        connection = publisher._connection
        drain, publish = connection.drain_events, channel._basic_publish

        def waiting(timeout: float | None = None) -> Any:
            if timeout:  # a wait for the broker (py-amqp also polls with timeout=0)
                steps.append("wait")
            return drain(timeout=timeout)

        def writing(*args: Any, **kwargs: Any) -> Any:
            steps.append("write")
            return publish(*args, **kwargs)

        connection.drain_events, channel._basic_publish = waiting, writing
        assert relay_pending(publishers=[publisher], batch_size=50).relayed == 50
    finally:
        publisher.close()
    assert steps[:50] == ["write"] * 50
    assert steps[50:] and set(steps[50:]) == {"wait"}
    assert len(broker.take()) == 50


def test_an_unroutable_message_fails_only_its_event_when_mandatory(broker: Broker) -> None:
    broker.bind("other.*")  # nothing routes orders.cancelled
    make_rows([("1", "a"), ("2", "b")])
    publisher = RabbitMQPublisher(URL, exchange=broker.exchange, mandatory=True)
    try:
        relay_batch(publishers=[publisher])  # one batch: a jittered retry may be due at once
    finally:
        publisher.close()
    rows = list(OutboxEvent.objects.order_by("id"))
    assert {r.status for r in rows} == {"pending"}  # retried with backoff, attempt spent
    assert all(r.attempts == 1 for r in rows)
    assert all("unroutable" in r.last_error and CANCELLED in r.last_error for r in rows)
    assert broker.take() == []


def test_without_mandatory_an_unroutable_message_is_published(broker: Broker) -> None:
    make_rows([("1", "a")])
    publisher = RabbitMQPublisher(URL, exchange=broker.exchange)
    try:
        assert relay_pending(publishers=[publisher]).relayed == 1
    finally:
        publisher.close()


def test_a_refused_broker_is_an_outage_that_spends_no_attempt(broker: Broker) -> None:
    make_rows([("1", "a"), ("2", "b")])
    dead = RabbitMQPublisher("amqp://guest:guest@127.0.0.1:1//", exchange=broker.exchange)
    with pytest.raises(RelayError, match="Could not reach the broker"):
        relay_pending(publishers=[dead])
    assert statuses() == {"a": ("pending", 0), "b": ("pending", 0)}


def close_connection_from_the_server(name: str) -> None:
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if name in line]
    assert pids, f"connection {name!r} not found in:\n{listing}"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: closed mid-drain"],
            capture_output=True,
            timeout=60,
            check=True,
        )


def test_a_connection_closed_mid_drain_marks_nothing_unconfirmed(broker: Broker) -> None:
    if subprocess.run(["which", "rabbitmqctl"], capture_output=True).returncode:
        pytest.skip("rabbitmqctl is not installed")
    broker.bind()
    make_rows(interleaved(3, 10))
    publisher = RabbitMQPublisher(URL, exchange=broker.exchange)

    def close_after_first_batch(batch: Any, drained: Any) -> None:
        if drained.batches == 1:
            close_connection_from_the_server(publisher.connection_name)
            time.sleep(0.5)  # let the close frame arrive

    try:
        with pytest.raises(RelayError, match="Could not reach the broker"):
            RelayLoop(
                batch_size=10, publishers=[publisher], on_batch=close_after_first_batch
            ).drain(count_left=False)
        confirmed = {m.properties["message_id"] for m in broker.take()}
        dispatched = {
            str(e)
            for e in OutboxEvent.objects.filter(status="dispatched").values_list(
                "event_id", flat=True
            )
        }
        assert len(dispatched) == 10
        assert dispatched <= confirmed  # nothing marked that the broker did not confirm
        assert OutboxEvent.objects.filter(status="pending", attempts=0).count() == 20
        # The broker is back (a new connection): everything is delivered.
        assert relay_pending(publishers=[publisher]).relayed == 20
    finally:
        publisher.close()
    confirmed |= {m.properties["message_id"] for m in broker.take()}
    assert confirmed == {str(e) for e in OutboxEvent.objects.values_list("event_id", flat=True)}


def test_the_example_consumer_reads_the_events_outside_django(broker: Broker) -> None:
    queue = f"{broker.exchange}_consumer"
    consumer = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "example_project" / "rabbitmq_consumer.py"),
            "--exchange",
            broker.exchange,
            "--queue",
            queue,
            "--binding",
            "orders.*",
            "--count",
            "3",
            "--timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        assert consumer.stderr is not None
        assert consumer.stderr.readline().strip() == "ready"  # bound before we publish
        rows = make_rows([("1", "a"), ("1", "b"), ("2", "c")])
        publisher = RabbitMQPublisher(URL, exchange=broker.exchange)
        try:
            assert relay_pending(publishers=[publisher]).relayed == 3
        finally:
            publisher.close()
        out, err = consumer.communicate(timeout=60)
    finally:
        consumer.kill()
        broker.channel.queue_delete(queue)
    assert consumer.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["event_id"] for line in lines] == [str(r.event_id) for r in rows]
    assert {line["routing_key"] for line in lines} == {CANCELLED}
    assert [line["payload"]["reason"] for line in lines] == ["a", "b", "c"]
