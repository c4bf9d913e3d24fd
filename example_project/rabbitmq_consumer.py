"""A consumer of django-uow events outside Django: plain Python and py-amqp.

    python example_project/rabbitmq_consumer.py --binding 'shop.*'

It binds a durable queue to the events exchange (``RABBITMQ_EXCHANGE``, a topic
exchange whose routing keys are event types), prints one JSON line per event, and acks
each message after handling it. Delivery is at least once: a consumer that dies before
its ack gets the message again, so make the effect idempotent (the ``event_id`` is also
the AMQP ``message_id``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import unquote, urlsplit

import amqp


def connect(url: str) -> amqp.Connection:
    parts = urlsplit(url)
    connection = amqp.Connection(
        host=f"{parts.hostname or '127.0.0.1'}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) if len(parts.path) > 1 else "/",
        connect_timeout=5,
    )
    connection.connect()
    return connection


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--exchange", default="django_uow")
    parser.add_argument("--queue", default="example-consumer")
    parser.add_argument("--binding", default="#", help="routing pattern, e.g. 'shop.*'")
    parser.add_argument("--count", type=int, default=0, help="exit after N events (0: never)")
    parser.add_argument("--timeout", type=float, default=0, help="exit after N idle seconds")
    args = parser.parse_args()

    connection = connect(args.url)
    channel = connection.channel()
    channel.exchange_declare(args.exchange, "topic", durable=True, auto_delete=False)
    channel.queue_declare(args.queue, durable=True, auto_delete=False)
    channel.queue_bind(args.queue, args.exchange, routing_key=args.binding)
    channel.basic_qos(0, 50, False)
    seen = 0

    def handle(message: amqp.Message) -> None:
        nonlocal seen
        envelope = json.loads(message.body)
        # The effect goes here; key it on envelope["event_id"] to make it happen once.
        print(json.dumps({"routing_key": message.delivery_info["routing_key"], **envelope}))
        sys.stdout.flush()
        channel.basic_ack(message.delivery_tag)
        seen += 1

    channel.basic_consume(args.queue, callback=handle)
    print("ready", file=sys.stderr, flush=True)
    idle_since = time.monotonic()
    try:
        while not args.count or seen < args.count:
            try:
                connection.drain_events(timeout=1)
                idle_since = time.monotonic()
            except TimeoutError:
                if args.timeout and time.monotonic() - idle_since > args.timeout:
                    break
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
