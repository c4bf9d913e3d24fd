"""Workload: draining pending events to RabbitMQ with publisher confirms.

The baseline is what a competent developer writes by hand: claim a batch with
``FOR UPDATE SKIP LOCKED``, publish every row as a persistent message on a channel in
confirm mode, wait for the broker's acks once for the batch, mark the rows with one
UPDATE. django-uow's ``RabbitMQPublisher`` relay does the same through its lease, claim
and acknowledgement statements.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

from django.db import connection, transaction

from ..db import OUTBOX, seed_outbox, truncate, vacuum
from ..harness import Config, Results, Row, interleaved, paired_row
from .relay import drained, relay_available
from .relay_hand import CLAIM_SQL, MARK_SQL

URL = "amqp://guest:guest@127.0.0.1:5672//"
HAND_LABEL = "hand-written SKIP LOCKED relay, RabbitMQ confirms per batch"
UOW_LABEL = "django-uow relay, RabbitMQPublisher"
HOST = ("127.0.0.1", 5672)


def broker_available() -> str:
    """Empty when RabbitMQ answers on 127.0.0.1:5672, else why not."""
    try:
        with socket.create_connection(HOST, timeout=1):
            return ""
    except OSError as error:
        return f"RabbitMQ is not reachable on 127.0.0.1:5672 ({error})"


class Broker:
    """The benchmark's own exchange and queue (deleted after), and the baseline's channel."""

    def __init__(self) -> None:
        import amqp

        self.exchange = f"uow_bench_{uuid.uuid4().hex[:8]}"
        self.queue = f"{self.exchange}_q"
        self.connection = amqp.Connection(host="127.0.0.1:5672", connect_timeout=5)
        self.connection.connect()
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, "topic", durable=True, auto_delete=False)
        self.channel.queue_declare(self.queue, durable=True, auto_delete=False)
        self.channel.queue_bind(self.queue, self.exchange, routing_key="#")
        self.channel.confirm_select()
        self.acked = 0
        self.channel.events["basic_ack"].add(self._on_ack)
        self.tag = 0

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self.acked = tag if multiple else max(self.acked, tag)

    def purge(self) -> None:
        self.channel.queue_purge(self.queue)

    def close(self) -> None:
        try:
            self.channel.queue_delete(self.queue)
            self.channel.exchange_delete(self.exchange)
        finally:
            self.connection.close()


def hand_batch(broker: Broker, batch_size: int = 500) -> int:
    """Claim, publish all with confirms awaited once, mark: the hand-written relay."""
    import amqp

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(CLAIM_SQL, [batch_size])
        rows = cursor.fetchall()
        if not rows:
            return 0
        for row in rows:
            body = {
                "event_id": str(row[1]),
                "event_type": row[2],
                "aggregate_type": row[3],
                "aggregate_id": row[4],
                "aggregate_version": row[5],
                "occurred_at": row[6].isoformat(),
                "payload": row[7] if isinstance(row[7], dict) else json.loads(row[7]),
                "headers": row[8] if isinstance(row[8], dict) else json.loads(row[8]),
            }
            message = amqp.Message(
                json.dumps(body),
                content_type="application/json",
                delivery_mode=2,
                message_id=str(row[1]),
            )
            broker.channel.basic_publish(message, exchange=broker.exchange, routing_key=row[2])
            broker.tag += 1
        deadline = time.monotonic() + 30
        while broker.acked < broker.tag and time.monotonic() < deadline:
            broker.connection.drain_events(timeout=5)
        if broker.acked < broker.tag:
            raise RuntimeError("the broker did not confirm the batch")
        cursor.execute(MARK_SQL, [[row[0] for row in rows]])
        return len(rows)


def run_rabbitmq(cfg: Config, results: Results) -> None:
    n = cfg.scale(20_000, 1_000)
    reps = min(cfg.reps, 3)
    reason = broker_available() or relay_available()
    hand_key, uow_key = "relay.rabbit.hand", "relay.uow.rabbit"
    if reason:
        for key, label in ((hand_key, HAND_LABEL), (uow_key, UOW_LABEL)):
            results.add(Row("rabbitmq", key, label, "events/s", not_measured=reason))
        return

    from django_uow.publishers import RabbitMQPublisher
    from django_uow.relay import relay_pending

    broker = Broker()
    publisher = RabbitMQPublisher(URL, exchange=broker.exchange)

    def setup() -> None:
        truncate(OUTBOX)
        seed_outbox(n, aggregates=max(1, n // 2))
        vacuum(OUTBOX)
        broker.purge()

    def hand() -> int:
        total = 0
        while done := hand_batch(broker):
            total += done
        return drained(n, total)

    def uow() -> int:
        return drained(n, relay_pending(publishers=[publisher], batch_size=500).relayed)

    try:
        # Interleaved (ABAB...), so drift on a shared machine hits both alike.
        samples = interleaved({hand_key: hand, uow_key: uow}, reps, lambda key: setup())
    finally:
        publisher.close()
        broker.close()
    results.add(paired_row("rabbitmq", hand_key, HAND_LABEL, "events/s", samples, hand_key))
    results.add(
        paired_row(
            "rabbitmq",
            uow_key,
            UOW_LABEL,
            "events/s",
            samples,
            hand_key,
            note="persistent messages, publisher confirms awaited once per batch",
        )
    )
