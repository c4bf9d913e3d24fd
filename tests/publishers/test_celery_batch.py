"""CeleryPublisher in batches: one Redis pipeline, one confirmed AMQP channel, real workers.

Every test talks to the real servers (Redis on UOW_REDIS_DB, RabbitMQ on 5672) through a
Celery app of its own, and uses queues of its own that it deletes afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from django_uow.delivery.handlers import handlers_for
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.outbox.writing import write_events
from django_uow.publishers import CeleryPublisher, handler_task_id
from django_uow.publishers.celery_messages import HANDLE_TASK
from django_uow.publishers.rabbitmq import MessageNotConfirmed
from django_uow.relay import relay_pending
from tests.conftest import require_server
from tests.relay.test_relay_faults import free_port
from tests.settings import REDIS_URL
from tests.testapp.models import Effect

REDIS = REDIS_URL
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
UOW = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}
#: (event type, payload of event i): each type has its own testapp handler writing an Effect.
KINDS: list[tuple[str, Callable[[int], dict[str, Any]]]] = [
    ("orders.cancelled", lambda i: {"order_id": i, "reason": "r"}),
    ("orders.bumped", lambda i: {"order_id": i, "seq": i}),
    ("audit.requested", lambda i: {"order_id": i}),
    ("testapp.Pinged", lambda i: {"note": f"n{i}"}),
]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def write(count: int) -> list[OutboxEvent]:
    """``count`` events, round robin over the KINDS, in one INSERT."""
    rows = []
    for i in range(count):
        event_type, payload = KINDS[i % len(KINDS)]
        rows.append(
            OutboxEvent(
                event_id=uuid.uuid4(),
                event_type=event_type,
                aggregate_type="testapp.order",
                aggregate_id=str(i + 1),
                payload=payload(i + 1),
            )
        )
    write_events(rows, "default")
    return list(OutboxEvent.objects.order_by("id"))


def expected_tasks(rows: list[OutboxEvent]) -> set[tuple[str, str]]:
    return {(str(r.event_id), h.name) for r in rows for h in handlers_for(r.event_type)}


@pytest.fixture
def queue() -> str:
    return f"uowtest-batch-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_app(queue: str) -> Iterator[Any]:
    """A Celery app of the test's own on the Redis broker; its queue keys go afterwards."""
    require_server("Redis", "127.0.0.1", 6379)
    from celery import Celery

    import django_uow.tasks  # noqa: F401 - the task names the publisher sends

    app = Celery("uowtest-batch-redis", broker=REDIS)
    try:
        yield app
    finally:
        with app.connection_for_write() as conn:
            client = conn.default_channel.client
            keys = client.keys(f"{queue}*")
            if keys:
                client.delete(*keys)
        app.close()


@pytest.fixture
def amqp_app(queue: str) -> Iterator[Any]:
    """A Celery app of the test's own on RabbitMQ; its queue is deleted afterwards."""
    require_server("RabbitMQ", "127.0.0.1", 5672)
    from celery import Celery

    import django_uow.tasks  # noqa: F401

    app = Celery("uowtest-batch-amqp", broker=AMQP)
    try:
        yield app
    finally:
        delete_amqp_queue(queue)
        app.close()


def delete_amqp_queue(name: str) -> None:
    import amqp

    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    try:
        conn.channel().queue_delete(name)
    finally:
        conn.close()


def redis_messages(app: Any, key: str) -> list[dict[str, Any]]:
    """The kombu messages in a Redis list, oldest first, with their decoded task body."""
    with app.connection_for_write() as conn:
        raw = conn.default_channel.client.lrange(key, 0, -1)
    messages = [json.loads(m) for m in reversed(raw)]
    for message in messages:
        message["decoded"] = json.loads(base64.b64decode(message["body"]))
    return messages


# ----------------------------------------------------------------------- Redis


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_redis_messages_are_what_send_task_writes(redis_app: Any, queue: str) -> None:
    rows = write(1)
    envelope = rows[0].to_envelope()
    with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
        assert CeleryPublisher(redis_app).publish([envelope]) is None
        handler = handlers_for(envelope.event_type)[0]
        with redis_app.producer_or_acquire() as producer:  # the one-at-a-time path
            redis_app.send_task(
                HANDLE_TASK,
                args=(envelope.to_message(), handler.name),
                task_id=handler_task_id(envelope.event_id, handler.name),
                producer=producer,
                retry=False,
                ignore_result=True,
                queue=f"{queue}-plain",
            )
    (batched,) = redis_messages(redis_app, queue)
    (plain,) = redis_messages(redis_app, f"{queue}-plain")
    for message in (batched, plain):
        message.pop("body")
        message["properties"].pop("delivery_tag")  # a fresh uuid4 per message
        message["properties"]["delivery_info"].pop("routing_key")  # the queue's name
        message["headers"].pop("argsrepr")  # repr() here, saferepr() there: display only
    assert batched == plain
    assert batched["headers"]["id"] == handler_task_id(envelope.event_id, handler.name)


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_redis_batch_is_one_round_trip(
    redis_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    rows = write(41)
    envelopes = [r.to_envelope() for r in rows]
    publisher = CeleryPublisher(redis_app)
    sends: list[int] = []
    real = redis.connection.AbstractConnection.send_packed_command

    me = threading.get_ident()

    def spy(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:  # not another test's worker threads
            sends.append(1)
        return real(self, command, *args, **kwargs)

    with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
        assert publisher.publish(envelopes[:1]) is None  # declares the queue once
        stats = lambda: redis.Redis.from_url(REDIS).info("commandstats")  # noqa: E731
        before = stats().get("cmdstat_lpush", {}).get("calls", 0)
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", spy)
        assert publisher.publish(envelopes[1:]) is None
        monkeypatch.undo()
        after = stats()["cmdstat_lpush"]["calls"]
    assert len(sends) == 1  # every LPUSH of the batch in one write, one round trip
    assert after - before >= 40  # server-wide: other clients may LPUSH meanwhile
    queued = redis_messages(redis_app, queue)
    assert [(m["decoded"][0][0]["event_id"], m["decoded"][0][1]) for m in queued] == [
        (str(r.event_id), h.name) for r in rows for h in handlers_for(r.event_type)
    ]  # in id order: a worker takes them oldest first


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_redis_priority_routes_use_the_transports_priority_queues(
    redis_app: Any, queue: str
) -> None:
    redis_app.conf.task_routes = {HANDLE_TASK: {"priority": 5}}
    envelope = write(1)[0].to_envelope()
    with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
        assert CeleryPublisher(redis_app).publish([envelope]) is None
    # kombu's priority_steps [0, 3, 6, 9]: priority 5 goes to the "3" list of the queue.
    assert redis_messages(redis_app, queue) == []
    (message,) = redis_messages(redis_app, f"{queue}\x06\x163")
    assert message["properties"]["priority"] == 5


def _sent_receiver(sender: Any = None, **kwargs: Any) -> None: ...


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("unusual", ["compression", "protocol 1", "task_sent", "topic"])
def test_an_unusual_configuration_sends_one_task_at_a_time(
    redis_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch, unusual: str
) -> None:
    from celery import signals
    from kombu import Exchange, Queue

    if unusual == "compression":
        redis_app.conf.task_compression = "gzip"
    elif unusual == "protocol 1":
        redis_app.conf.task_protocol = 1
    elif unusual == "task_sent":
        signals.task_sent.connect(_sent_receiver)
    else:
        redis_app.conf.task_queues = [Queue(queue, Exchange(queue, type="topic"), queue)]
    rows = write(3)
    calls: list[str] = []
    real = redis_app.send_task

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["task_id"])
        return real(name, *args, **kwargs)

    monkeypatch.setattr(redis_app, "send_task", spy)
    try:
        with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
            assert CeleryPublisher(redis_app).publish([r.to_envelope() for r in rows]) is None
    finally:
        signals.task_sent.disconnect(_sent_receiver)
    assert sorted(calls) == sorted(handler_task_id(e, h) for e, h in expected_tasks(rows))
    with redis_app.connection_for_write() as conn:
        raw = conn.default_channel.client.lrange(queue, 0, -1)
    assert len(raw) == len(calls)  # every task still reached the queue
    if unusual == "compression":
        assert {json.loads(m)["headers"]["compression"] for m in raw} == {"application/x-gzip"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_an_unreachable_broker_hands_the_batch_back(scheme: str) -> None:
    from celery import Celery

    from django_uow.exceptions import RelayError

    dead = Celery("dead", broker=f"{scheme}://guest:guest@127.0.0.1:{free_port()}/0")
    dead.conf.broker_connection_retry = False
    dead.conf.broker_connection_max_retries = 0
    dead.conf.broker_transport_options = {"max_retries": 0}
    write(3)
    with override_settings(DJANGO_UOW=UOW), pytest.raises(RelayError, match="reach the broker"):
        relay_pending(publishers=[CeleryPublisher(dead)])
    assert list(OutboxEvent.objects.values_list("status", "attempts")) == [("pending", 0)] * 3


# ----------------------------------------------------------------------- AMQP


@pytest.mark.django_db(transaction=True)
def test_amqp_confirms_are_awaited_once_and_a_returned_task_fails_its_event_only(
    amqp_app: Any, queue: str, temp_handler_names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import amqp

    from django_uow.delivery.handlers import event_handler
    from tests.testapp.events import Pinged

    other = f"{queue}-other"

    @event_handler(Pinged, name="t.batch_elsewhere", queue=other)
    def elsewhere(event: Pinged) -> None: ...

    temp_handler_names.append("t.batch_elsewhere")
    rows = write(8)  # rows[3] and rows[7] are Pinged: one task to each queue
    channels: list[Any] = []
    real = amqp.Channel.confirm_select

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        channels.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(amqp.Channel, "confirm_select", spy)
    try:
        with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
            publisher = CeleryPublisher(amqp_app)
            assert publisher.publish([rows[0].to_envelope(), rows[3].to_envelope()]) is None
            delete_amqp_queue(other)  # declared (and remembered) by the first batch: now gone
            failures = publisher.publish([r.to_envelope() for r in rows[4:]])
    finally:
        delete_amqp_queue(other)
    assert failures is not None
    assert list(failures) == [rows[7].event_id]  # the other events of the batch went out
    (error,) = failures.values()
    assert isinstance(error, MessageNotConfirmed)
    assert "unroutable" in str(error)
    assert len(channels) == 1  # one confirm channel for both batches
    conn = amqp.Connection("127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    try:
        _, count, _ = conn.channel().queue_declare(queue, passive=True)
    finally:
        conn.close()
    # First batch: rows[0] and rows[3]'s on_ping; second: rows[4..6] and rows[7]'s on_ping.
    assert count == 6


@pytest.fixture
def temp_handler_names() -> Iterator[list[str]]:
    from django_uow.delivery.handlers import registry

    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


# ----------------------------------------------------------------------- real workers


def start_worker(broker: str, queue: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_subprocess",
            connection.settings_dict["NAME"],
            "--pool=threads",
            "--concurrency=4",
            f"--queues={queue}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ],
        env={**os.environ, "UOW_CELERY_BROKER": broker},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_a_real_worker_runs_every_task_of_the_batches_once(
    broker: str, queue: str, request: pytest.FixtureRequest
) -> None:
    app = request.getfixturevalue(f"{broker}_app")
    url = REDIS if broker == "redis" else AMQP
    rows = write(200)
    expected = expected_tasks(rows)
    assert len({h for _, h in expected}) == len(KINDS)  # several handlers
    worker = start_worker(url, queue)
    try:
        with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": queue}):
            summary = relay_pending(publishers=[CeleryPublisher(app)], batch_size=50)
        assert (summary.relayed, summary.batches) == (200, 4)
        wait_for_deliveries(expected)
    finally:
        stop(worker)
    assert_each_ran_once(rows, expected)


def wait_for_deliveries(expected: set[tuple[str, str]]) -> None:
    """Wait (90 s at most) until every expected (event, handler) delivery succeeded."""
    succeeded = ProcessedEvent.objects.filter(status="succeeded")
    assert wait_for(lambda: succeeded.count() == len(expected), timeout=90), (
        f"{succeeded.count()} of {len(expected)} handler deliveries ran"
    )


def assert_each_ran_once(rows: list[OutboxEvent], expected: set[tuple[str, str]]) -> None:
    """Exactly the expected deliveries succeeded, and each event's effect happened once."""
    succeeded = ProcessedEvent.objects.filter(status="succeeded")
    assert set(succeeded.values_list("event_id", "handler")) == {
        (uuid.UUID(e), h) for e, h in expected
    }
    effects = Counter(str(e) for e in Effect.objects.values_list("event_id", flat=True))
    assert effects == Counter({str(r.event_id): 1 for r in rows})


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_a_commit_publishes_its_handler_tasks_itself_through_a_bounded_connection(
    broker: str, queue: str, request: pytest.FixtureRequest
) -> None:
    from celery import current_app

    from django_uow import UnitOfWork
    from tests.testapp.events import Pinged

    app = request.getfixturevalue(f"{broker}_app")
    previous = current_app._get_current_object()
    app.set_current()
    worker = start_worker(REDIS if broker == "redis" else AMQP, queue)
    celery_mode = {**UOW, "RELAY_ON_COMMIT": "celery", "CELERY_QUEUE": queue}
    try:
        with override_settings(DJANGO_UOW=celery_mode):
            for i in range(5):
                with UnitOfWork() as uow:
                    uow.record_event(Pinged(note=f"n{i}"))
                # One hop: the commit itself claimed, published and acknowledged its event.
                assert OutboxEvent.objects.filter(status="dispatched").count() == i + 1
        assert wait_for(lambda: Effect.objects.count() == 5, timeout=60)
    finally:
        previous.set_current()
        stop(worker)
    assert set(Effect.objects.values_list("event_id", flat=True)) == set(
        OutboxEvent.objects.values_list("event_id", flat=True)
    )
