"""Publishers against real servers: Redis streams, Celery through a real worker on Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from django_uow import UnitOfWork
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.publishers import (
    CeleryPublisher,
    InlinePublisher,
    RedisStreamPublisher,
    get_publishers,
    handler_task_id,
)
from django_uow.relay import relay_pending
from tests.support.relay import make_rows
from tests.testapp.events import Pinged
from tests.testapp.models import Effect, Order

UOW = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ----------------------------------------------------------------------- loading


def test_publishers_are_loaded_once_and_reloaded_when_settings_change() -> None:
    first = get_publishers()
    assert get_publishers() is first
    assert [type(p) for p in first] == [InlinePublisher]
    with override_settings(
        DJANGO_UOW={**UOW, "PUBLISHERS": ["django_uow.publishers.RedisStreamPublisher"]}
    ):
        assert [type(p) for p in get_publishers()] == [RedisStreamPublisher]
    assert [type(p) for p in get_publishers()] == [InlinePublisher]


def test_a_bad_publisher_path_is_a_clear_error() -> None:
    from django.core.exceptions import ImproperlyConfigured

    with (
        override_settings(DJANGO_UOW={**UOW, "PUBLISHERS": ["myapp.nope.Publisher"]}),
        pytest.raises(ImproperlyConfigured, match="'myapp.nope.Publisher', which cannot be"),
    ):
        get_publishers()


def test_handler_task_ids_are_deterministic() -> None:
    event_id = uuid.uuid4()
    assert handler_task_id(event_id, "h") == handler_task_id(str(event_id), "h")
    assert handler_task_id(event_id, "h") == str(uuid.uuid5(event_id, "h"))
    assert handler_task_id(event_id, "h") != handler_task_id(event_id, "other")


# ----------------------------------------------------------------------- redis streams


@pytest.fixture
def stream_prefix(redis_server: str) -> Iterator[tuple[Any, str]]:
    import redis

    client = redis.Redis.from_url(redis_server)
    prefix = f"uowtest:{uuid.uuid4().hex[:8]}"
    yield client, prefix
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


@pytest.mark.django_db
def test_redis_stream_publisher_adds_one_entry_per_event_per_aggregate_type(
    stream_prefix: tuple[Any, str], redis_server: str
) -> None:
    client, prefix = stream_prefix
    rows = make_rows([("1", "a"), ("2", "b"), ("", "c")])
    publisher = RedisStreamPublisher(redis_server, key=prefix + ":{aggregate_type}")
    summary = relay_pending(publishers=[publisher])
    assert summary.relayed == 3
    entries = client.xrange(f"{prefix}:testapp.order")
    messages = [json.loads(fields[b"message"]) for _, fields in entries]
    assert [m["event_id"] for m in messages] == [str(rows[0].event_id), str(rows[1].event_id)]
    assert messages[0]["payload"] == {"order_id": 1, "reason": "a"}
    assert messages[0]["event_type"] == "orders.cancelled"
    assert client.xlen(f"{prefix}:none") == 1


@pytest.mark.django_db
def test_redis_stream_publisher_per_event_type_and_bounded(
    stream_prefix: tuple[Any, str], redis_server: str
) -> None:
    client, prefix = stream_prefix
    make_rows([(str(i), "x") for i in range(300)])
    publisher = RedisStreamPublisher(redis_server, key=prefix + ":{event_type}", maxlen=10)
    assert relay_pending(publishers=[publisher]).relayed == 300
    length = client.xlen(f"{prefix}:orders.cancelled")
    assert 10 <= length < 300  # MAXLEN ~ trims whole macro nodes


@pytest.mark.django_db
def test_redis_stream_publisher_sends_a_batch_in_one_round_trip(
    stream_prefix: tuple[Any, str], redis_server: str
) -> None:
    client, prefix = stream_prefix
    publisher = RedisStreamPublisher(redis_server, key=prefix + ":{aggregate_type}")
    make_rows([("0", "warm-up")])
    relay_pending(publishers=[publisher])  # the first batch also loads the script
    make_rows([(str(i), "x") for i in range(50)])
    before = client.info("commandstats").get("cmdstat_xadd", {}).get("calls", 0)
    commands: list[str] = []
    real_execute = publisher.client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]))
        return real_execute(*args, **kwargs)

    publisher.client.execute_command = counting
    relay_pending(publishers=[publisher])
    assert commands == ["EVALSHA"]  # one round trip for the whole batch
    after = client.info("commandstats")["cmdstat_xadd"]["calls"]
    assert after - before == 50


# ----------------------------------------------------------------------- celery


@pytest.fixture(scope="module")
def celery_worker() -> Iterator[Any]:
    from tests.conftest import require_server

    require_server("Redis", "127.0.0.1", 6379)
    from celery import _state
    from celery.contrib.testing.worker import start_worker

    import django_uow.tasks  # noqa: F401 - registers the shared tasks
    from tests.celery_app import app

    previous_default, previous_current = _state.default_app, _state.get_current_app()
    app.set_current()
    app.set_default()
    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()  # UOW_REDIS_DB is this run's own database
    try:
        with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
            yield app
    finally:
        _state.set_default_app(previous_default)
        previous_current.set_current()


@pytest.fixture
def received(celery_worker: Any) -> Iterator[list[tuple[str, str]]]:
    from celery.signals import task_prerun

    seen: list[tuple[str, str]] = []

    def record(sender: Any = None, task_id: str = "", **kwargs: Any) -> None:
        seen.append((sender.name, task_id))

    task_prerun.connect(record, weak=False)
    yield seen
    task_prerun.disconnect(record)


def place(count: int) -> list[Order]:
    orders = []
    for _ in range(count):
        with UnitOfWork():
            order = Order.objects.create(total=Decimal("5"))
            order.place()
            order.save()
        orders.append(order)
    return orders


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
def test_celery_publisher_delivers_each_event_to_its_handler_through_a_worker(
    celery_worker: Any, received: list[tuple[str, str]]
) -> None:
    with override_settings(
        DJANGO_UOW={**UOW, "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}
    ):
        place(5)
        assert relay_pending().relayed == 5
    assert wait_for(lambda: Effect.objects.count() == 5)
    expected = {
        handler_task_id(e, "testapp.record_placed")
        for e in OutboxEvent.objects.values_list("event_id", flat=True)
    }
    assert {tid for name, tid in received if name == "django_uow.tasks.handle_event"} == expected


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
def test_celery_redelivery_has_its_effect_once(celery_worker: Any) -> None:
    from celery.signals import task_postrun

    finished: list[tuple[str, Any]] = []

    def record(sender: Any = None, task_id: str = "", retval: Any = None, **kw: Any) -> None:
        finished.append((task_id, retval))

    task_postrun.connect(record, weak=False)
    try:
        place(1)
        envelope = OutboxEvent.objects.get().to_envelope()
        publisher = CeleryPublisher(celery_worker)
        publisher.publish([envelope])
        publisher.publish([envelope])  # the relay died before its acknowledgement
        assert wait_for(lambda: len(finished) == 2)
    finally:
        task_postrun.disconnect(record)
    task_id = handler_task_id(envelope.event_id, "testapp.record_placed")
    # Both deliveries ran under the same task id; the second one was skipped as processed.
    assert sorted(finished, key=lambda f: bool(f[1])) == [(task_id, False), (task_id, True)]
    assert Effect.objects.filter(event_id=envelope.event_id).count() == 1
    assert ProcessedEvent.objects.filter(event_id=envelope.event_id).count() == 1


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
def test_celery_publisher_reuses_one_producer_for_the_whole_batch(celery_worker: Any) -> None:
    place(20)
    envelopes = [row.to_envelope() for row in OutboxEvent.objects.order_by("id")]
    acquired: list[Any] = []
    amqp = celery_worker.amqp
    real = amqp.Producer

    def spy(*args: Any, **kwargs: Any) -> Any:
        producer = real(*args, **kwargs)
        acquired.append(producer)
        return producer

    amqp.Producer = spy
    try:
        assert CeleryPublisher(celery_worker).publish(envelopes) is None
    finally:
        del amqp.Producer
    assert len(acquired) == 1
    # On the sweep's bounded connection: BROKER_TIMEOUT on every socket step, no retries.
    options = acquired[0].channel.connection.client.transport_options
    assert (options["socket_timeout"], options["max_retries"]) == (5.0, 0)
    assert wait_for(lambda: Effect.objects.count() == 20)


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
def test_celery_fast_path_enqueues_the_relay_task(
    celery_worker: Any, received: list[tuple[str, str]]
) -> None:
    with override_settings(DJANGO_UOW={**UOW, "RELAY_ON_COMMIT": "celery"}):
        place(2)
        assert wait_for(lambda: Effect.objects.count() == 2)
    # The handlers commit before the relay acknowledges: wait for the acknowledgement too.
    assert wait_for(lambda: OutboxEvent.objects.filter(status="dispatched").count() == 2)
    assert any(name == "django_uow.tasks.relay_outbox" for name, _ in received)


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
def test_celery_fast_path_publishes_the_handler_tasks_itself_in_one_hop(
    celery_worker: Any, received: list[tuple[str, str]]
) -> None:
    celery_mode = {
        **UOW,
        "RELAY_ON_COMMIT": "celery",
        "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
    }
    with override_settings(DJANGO_UOW=celery_mode):
        place(3)
        # Relayed by the committing process itself, before any task ran.
        assert OutboxEvent.objects.filter(status="dispatched").count() == 3
        expected = {
            handler_task_id(e, "testapp.record_placed")
            for e in OutboxEvent.objects.values_list("event_id", flat=True)
        }
        assert wait_for(lambda: Effect.objects.count() == 3)
        assert wait_for(lambda: expected <= {tid for _, tid in received})
    assert "django_uow.tasks.relay_outbox" not in {name for name, _ in received}


@pytest.mark.django_db(transaction=True)
def test_celery_publisher_with_an_unreachable_broker_pauses_the_relay() -> None:
    from celery import Celery

    import django_uow.tasks  # noqa: F401
    from django_uow.exceptions import RelayError

    dead = Celery("dead", broker="redis://127.0.0.1:1/0")
    dead.conf.broker_connection_retry = False
    dead.conf.broker_connection_max_retries = 0
    dead.conf.broker_transport_options = {"max_retries": 0}
    place(2)
    with pytest.raises(RelayError, match="Could not reach the broker"):
        relay_pending(publishers=[CeleryPublisher(dead)])
    assert list(OutboxEvent.objects.values_list("status", "attempts")) == [("pending", 0)] * 2


# ----------------------------------------------------------------------- tasks


@pytest.fixture
def temp_handler_names() -> Iterator[list[str]]:
    from django_uow.delivery.handlers import registry

    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


def ping_envelope() -> Any:
    with UnitOfWork() as uow:
        uow.record_event(Pinged(note="hello"))
    return OutboxEvent.objects.get().to_envelope()


@pytest.mark.celery
@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_handler_task_retries_a_failing_handler_with_backoff(
    celery_worker: Any, temp_handler_names: list[str]
) -> None:
    from django_uow.delivery.handlers import event_handler

    calls: list[int] = []

    @event_handler(Pinged, name="t.flaky_task")
    def flaky(event: Pinged, envelope: Any) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        Effect.objects.create(event_id=envelope.event_id, handler="flaky")

    temp_handler_names.append("t.flaky_task")
    with override_settings(DJANGO_UOW={**UOW, "BACKOFF": (0.01, 0.05)}):
        envelope = ping_envelope()
        CeleryPublisher(celery_worker).publish([envelope])
        assert wait_for(lambda: Effect.objects.filter(handler="flaky").count() == 1)
    assert len(calls) == 3
    assert ProcessedEvent.objects.filter(handler="t.flaky_task").count() == 1


@pytest.mark.celery
@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_handler_task_gives_up_on_permanent_failure(
    celery_worker: Any, temp_handler_names: list[str]
) -> None:
    from django_uow import PermanentFailure
    from django_uow.delivery.handlers import event_handler
    from django_uow.signals import event_failed

    calls: list[int] = []
    dead: list[bool] = []

    @event_handler(Pinged, name="t.hopeless")
    def hopeless(event: Pinged) -> None:
        calls.append(1)
        raise PermanentFailure("never")

    temp_handler_names.append("t.hopeless")

    def on_failed(sender: Any, **kwargs: Any) -> None:
        dead.append(kwargs["dead"])

    event_failed.connect(on_failed, weak=False, dispatch_uid="tf")
    try:
        # Zero backoff: a retry, if one were wrongly scheduled, would run at once.
        with override_settings(DJANGO_UOW={**UOW, "BACKOFF": (0.0, 0.0)}):
            CeleryPublisher(celery_worker).publish([ping_envelope()])
            assert wait_for(lambda: dead == [True])
            time.sleep(0.3)
    finally:
        event_failed.disconnect(dispatch_uid="tf")
    assert calls == [1]


@pytest.mark.celery
@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_handler_task_gives_up_at_once_on_a_payload_that_does_not_decode(
    celery_worker: Any,
) -> None:
    from django_uow import Envelope, EventDecodeError
    from django_uow.signals import event_failed
    from tests.testapp.events import OrderPlaced

    failures: list[tuple[BaseException, bool]] = []

    def on_failed(sender: Any, **kwargs: Any) -> None:
        failures.append((kwargs["error"], kwargs["dead"]))

    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type=OrderPlaced.event_type,
        aggregate_type="testapp.order",
        aggregate_id="1",
        aggregate_version=1,
        occurred_at=timezone.now(),
        payload={"order_id": 1, "total": "abc"},
        headers={"schema_version": 1},
    )
    event_failed.connect(on_failed, weak=False, dispatch_uid="tf-decode")
    try:
        # Zero backoff: a retry, if one were wrongly scheduled, would run at once.
        with override_settings(DJANGO_UOW={**UOW, "BACKOFF": (0.0, 0.0)}):
            CeleryPublisher(celery_worker).publish([envelope])
            assert wait_for(lambda: len(failures) == 1)
            time.sleep(0.3)
    finally:
        event_failed.disconnect(dispatch_uid="tf-decode")
    [(error, dead)] = failures  # one handler (testapp.record_placed), no retries
    assert dead and isinstance(error, EventDecodeError)
    assert "payload field 'total' is not a valid Decimal: 'abc'" in str(error)
    assert Effect.objects.count() == 0


@pytest.mark.django_db
def test_relay_task_reports_a_paused_relay_when_the_broker_is_down() -> None:
    from django_uow.tasks import relay_outbox

    make_rows([("1", "a")])
    with override_settings(
        DJANGO_UOW={
            **UOW,
            "PUBLISHERS": ["django_uow.publishers.RedisStreamPublisher"],
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }
    ):
        result = relay_outbox()
    assert result["status"] == "paused" and "Could not reach the broker" in result["error"]
    assert relay_outbox() == {
        "status": "ok",
        "relayed": 1,
        "failed": 0,
        "retried": 0,
        "left": 0,
        "republished": 0,
        "woken": 0,
    }


@pytest.mark.django_db
def test_prune_task() -> None:
    import datetime

    from django.utils import timezone

    from django_uow.tasks import prune_outbox

    rows = make_rows([("1", "a")])
    OutboxEvent.objects.update(
        status="dispatched", dispatched_at=timezone.now() - datetime.timedelta(days=30)
    )
    ProcessedEvent.objects.create(
        event_id=rows[0].event_id,
        handler="h",
        processed_at=timezone.now() - datetime.timedelta(days=31),
    )
    assert prune_outbox() == {"events": 1, "inbox": 1}


@pytest.mark.django_db
def test_celery_tasks_go_to_the_handler_queue_or_celery_queue(
    redis_server: str, temp_handler_names: list[str]
) -> None:
    import redis

    from django_uow.delivery.handlers import event_handler
    from tests.celery_app import app

    @event_handler(Pinged, name="t.routed", queue="uowtest-special")
    def routed(event: Pinged) -> None: ...

    temp_handler_names.append("t.routed")
    client = redis.Redis.from_url(redis_server)
    client.delete("uowtest-special", "uowtest-default")
    try:
        with override_settings(DJANGO_UOW={**UOW, "CELERY_QUEUE": "uowtest-default"}):
            envelope = ping_envelope()
            assert CeleryPublisher(app).publish([envelope]) is None
        special = [json.loads(m) for m in client.lrange("uowtest-special", 0, -1)]
        default = [json.loads(m) for m in client.lrange("uowtest-default", 0, -1)]
    finally:
        client.delete("uowtest-special", "uowtest-default")
        client.close()
    assert [m["headers"]["id"] for m in special] == [handler_task_id(envelope.event_id, "t.routed")]
    # testapp's own Pinged handler has no queue of its own: it follows CELERY_QUEUE.
    assert [m["headers"]["id"] for m in default] == [
        handler_task_id(envelope.event_id, "testapp.on_ping")
    ]
    assert special[0]["headers"]["task"] == "django_uow.tasks.handle_event"


def test_the_package_imports_without_celery() -> None:
    import os
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['celery'] = None\n"
        "import django; django.setup()\n"
        "import django_uow.tasks, django_uow.publishers, django_uow.relay, django_uow.relay.fastpath\n"
        "from django_uow.exceptions import RelayError\n"
        "try:\n"
        "    django_uow.relay.fastpath.enqueue_relay([], using='default')\n"
        "except RelayError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'django-uow[celery]'" in done.stdout


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("publisher", ["InlinePublisher", "CeleryPublisher"])
def test_commit_with_the_broker_down_keeps_the_events_for_the_sweep(
    caplog: pytest.LogCaptureFixture, publisher: str
) -> None:
    import logging

    from celery import Celery, current_app

    previous = current_app._get_current_object()
    dead = Celery("dead", broker="redis://127.0.0.1:1/0")
    dead.conf.broker_transport_options = {"max_retries": 0}
    dead.set_current()
    try:
        with (
            override_settings(
                DJANGO_UOW={
                    **UOW,
                    "RELAY_ON_COMMIT": "celery",
                    "PUBLISHERS": [f"django_uow.publishers.{publisher}"],
                }
            ),
            caplog.at_level(logging.WARNING, logger="django_uow.fastpath"),
        ):
            # Commits; enqueuing the relay task (InlinePublisher) or publishing the
            # handler tasks (CeleryPublisher, one hop) fails after COMMIT.
            place(1)
    finally:
        previous.set_current()
    assert Order.objects.get().status == "placed"
    assert list(OutboxEvent.objects.values_list("status", "attempts")) == [("pending", 0)]
    assert "the sweep will deliver them" in caplog.text
    with override_settings(DJANGO_UOW=UOW):
        assert relay_pending().relayed == 1
