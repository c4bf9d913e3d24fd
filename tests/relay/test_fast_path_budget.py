"""The commit path never waits on a broker: a time budget, no retries, a circuit breaker.

Each outage is real: a redis-server of the test's own on a free loopback port, stopped
(connections refused) or SIGSTOPped (TCP accepts, nothing answers).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

from django_uow import unit_of_work
from django_uow.delivery.handlers import handlers_for
from django_uow.models import OutboxEvent
from django_uow.publishers import handler_task_id
from django_uow.relay import relay_pending
from django_uow.relay.breaker import CircuitBreaker, breaker
from tests.conftest import CI
from tests.relay.test_relay_faults import OwnRedis, free_port
from tests.testapp.models import Order

BUDGET = 0.2
COOLDOWN = 2.0
#: Generous: the budget is 0.2 s; before the budget a refused broker took ~6 s, a hung one forever.
WITHIN_BUDGET = 2.0
CELERY_UOW = {
    "RELAY_ON_COMMIT": "celery",
    "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"],
    "FAST_PATH_TIMEOUT": BUDGET,
    "FAST_PATH_COOLDOWN": COOLDOWN,
}


class Broker(OwnRedis):
    """The test's own redis-server, which a test may stop, hang (SIGSTOP) and bring back."""

    hung = False

    def hang(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.hung = True

    def resume(self) -> None:
        if self.proc is not None and self.hung:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.hung = False

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def broker() -> Iterator[Broker]:
    import shutil

    if shutil.which("redis-server") is None:
        message = "redis-server binary not found (apt-get install redis-server)"
        if CI:
            pytest.fail(f"{message} (CI=true)")
        pytest.skip(message)
    server = Broker(free_port())
    server.start()
    try:
        yield server
    finally:
        server.resume()  # a stopped process cannot handle SIGTERM
        server.stop()


@pytest.fixture
def celery_app(broker: Broker) -> Iterator[Any]:
    """A Celery app of the test's own on the test's broker, current for the test."""
    from celery import Celery, current_app

    import django_uow.tasks  # noqa: F401  (the task names the fast path sends)

    previous = current_app._get_current_object()
    app = Celery("uow-fast-path-budget", broker=f"redis://127.0.0.1:{broker.port}/0")
    app.set_current()
    try:
        yield app
    finally:
        previous.set_current()
        app.close()


@contextmanager
def broker_connects(port: int) -> Iterator[list[float]]:
    """Record every TCP connect to ``port`` made by this process."""
    attempts: list[float] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if isinstance(address, tuple) and address[1] == port:
            attempts.append(time.monotonic())
        real_connect(self, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        yield attempts


@unit_of_work
def place_order() -> Order:
    order = Order.objects.create(total=Decimal("5"))
    order.place()
    order.save()
    return order


def timed_place() -> tuple[Order, float]:
    started = time.monotonic()
    order = place_order()
    return order, time.monotonic() - started


def fast_path_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "django_uow.fastpath" and r.levelno == level
    ]


def queued(broker: Broker, queue: str = "celery") -> list[dict[str, Any]]:
    client = broker.client()
    try:
        return [json.loads(m)["headers"] for m in client.lrange(queue, 0, -1)]
    finally:
        client.close()


def handed_off() -> bool:
    """A fast-path send over its budget is still awaited on a helper thread (not on
    SQLite, whose one write lock a second connection would wait on)."""
    from django.db import connection

    return connection.vendor != "sqlite"


def first_events(order: Order) -> list[Any]:
    """The event ids the commit of ``order`` wrote (its fast path's batch)."""
    return list(
        OutboxEvent.objects.filter(aggregate_id=str(order.pk)).values_list("event_id", flat=True)
    )


def wait_for_status(rows: Any, status: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(rows.values_list("status", flat=True)) == {status}:
            return True
        time.sleep(0.1)
    return False


def wait_until_none(rows: Any, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not rows.exists():
            return True
        time.sleep(0.1)
    return False


def expected_handler_tasks() -> set[str]:
    return {
        handler_task_id(row.event_id, handler.name)
        for row in OutboxEvent.objects.all()
        for handler in handlers_for(row.event_type)
    }


def wait_out_cooldown(opened_at: float) -> None:
    time.sleep(max(0.0, opened_at + COOLDOWN - time.monotonic()) + 0.1)


def outage_then_recovery(
    broker: Broker, caplog: pytest.LogCaptureFixture, *, outage: str, connected: bool = False
) -> None:
    """Commit during an outage and its cool-down, bring the broker back, commit again.

    ``connected``: the fast path already holds a live connection (no new connect).
    """
    earlier = list(OutboxEvent.objects.values_list("id", flat=True))
    if outage == "refused":
        broker.stop()
    else:
        broker.hang()
    with broker_connects(broker.port) as connects:
        first, took = timed_place()
        opened_at = time.monotonic()
        assert took < WITHIN_BUDGET, f"a commit waited {took:.1f}s on a {outage} broker"
        assert connected or connects, "the first commit tried the broker"
        assert breaker.is_open
        tried = len(connects)
        during = [place_order() for _ in range(4)]
        assert time.monotonic() - opened_at < COOLDOWN, "the machine is too slow for this test"
        # During the cool-down no commit touches the broker at all.
        assert len(connects) == tried
    assert breaker.skipped == 4
    # The data is committed; the events wait for the sweep, no attempt spent.
    placed = Order.objects.filter(pk__in=[o.pk for o in [first, *during]], status="placed")
    assert placed.count() == 5
    outage_events = OutboxEvent.objects.exclude(id__in=earlier)
    skipped = outage_events.exclude(event_id__in=first_events(first))
    assert set(skipped.values_list("status", "attempts")) == {("pending", 0)}
    sent = outage_events.filter(event_id__in=first_events(first))
    if outage == "refused" or not handed_off():  # given back at once, no attempt spent
        assert set(sent.values_list("status", "attempts", "claimed_by")) == {("pending", 0, "")}
    else:  # sent into a hung broker: still leased, its answer awaited off the commit path
        assert {
            (s, a, bool(c)) for s, a, c in sent.values_list("status", "attempts", "claimed_by")
        } == {("pending", 1, True)}
    warnings = fast_path_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "breaker open" in warnings[0], warnings

    if outage == "refused":
        broker.start()
    else:
        broker.resume()
        if handed_off():
            # The broker answers the commit's send at last: acknowledged, not sent again.
            assert wait_for_status(sent, "dispatched")
    wait_out_cooldown(opened_at)
    place_order()  # the first commit after the cool-down tries, and closes the breaker
    assert not breaker.is_open
    infos = fast_path_records(caplog, logging.INFO)
    assert len(infos) == 1 and "breaker is closed" in infos[0], infos
    assert len(fast_path_records(caplog, logging.WARNING)) == 1


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_a_broker_outage_never_holds_a_commit_and_the_sweep_delivers_afterwards(
    broker: Broker, celery_app: Any, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    with (
        override_settings(DJANGO_UOW=CELERY_UOW),
        caplog.at_level(logging.INFO, logger="django_uow.fastpath"),
    ):
        if outage == "hung":
            place_order()  # a healthy send first: the hang then hits a live connection
            # One hop: the commit published its handler task itself; no relay task.
            assert [h["task"] for h in queued(broker)] == ["django_uow.tasks.handle_event"]
            assert OutboxEvent.objects.get().status == "dispatched"
        outage_then_recovery(broker, caplog, outage=outage, connected=outage == "hung")
        tasks = [h["task"] for h in queued(broker)]
        assert "django_uow.tasks.relay_outbox" not in tasks
        if outage == "refused":
            # Only the commit that closed the breaker published: its own handler task.
            assert tasks == ["django_uow.tasks.handle_event"]
            assert OutboxEvent.objects.filter(status="dispatched").count() == 1
        summary = relay_pending()  # the sweep, through the app's own (unbounded) pool
    assert (summary.left, OutboxEvent.objects.exclude(status="dispatched").count()) == (0, 0)
    handler_tasks = [
        h["id"] for h in queued(broker) if h["task"] == "django_uow.tasks.handle_event"
    ]
    if handed_off() or outage == "refused":
        assert len(handler_tasks) == len(set(handler_tasks))  # none published twice
    assert set(handler_tasks) == expected_handler_tasks()
    assert len(set(handler_tasks)) == OutboxEvent.objects.count() >= 6


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_inline_mode_bounds_the_redis_stream_publisher_and_uses_the_breaker(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    uow = {
        "RELAY_ON_COMMIT": "inline",
        "PUBLISHERS": ["django_uow.publishers.RedisStreamPublisher"],
        "REDIS_URL": f"redis://127.0.0.1:{broker.port}/0",
        "STREAM_KEY": "uowbudget:{aggregate_type}",
        "FAST_PATH_TIMEOUT": BUDGET,
        "FAST_PATH_COOLDOWN": COOLDOWN,
    }
    with (
        override_settings(DJANGO_UOW=uow),
        caplog.at_level(logging.INFO, logger="django_uow.fastpath"),
    ):
        outage_then_recovery(broker, caplog, outage="hung")
        # The commit that sent into the hung broker (answered when it resumed) and the last.
        late = 1 if handed_off() else 0
        assert OutboxEvent.objects.filter(status="dispatched").count() == 1 + late
        summary = relay_pending()
    assert (summary.relayed, summary.left) == (5 - late, 0)
    client = broker.client()
    try:
        streamed = Counter(
            json.loads(fields[b"message"])["event_id"]
            for _, fields in client.xrange("uowbudget:testapp.order")
        )
    finally:
        client.close()
    every = {str(e) for e in OutboxEvent.objects.values_list("event_id", flat=True)}
    if handed_off():
        # The send the broker took during its stall is not sent again by the sweep.
        assert streamed == Counter(dict.fromkeys(every, 1))
    else:  # at least once: the send buffered before the stall arrives, and the sweep's
        assert set(streamed) == every


@pytest.mark.django_db(transaction=True)
def test_inline_mode_with_rabbitmq_refused_returns_within_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uow = {
        "RELAY_ON_COMMIT": "inline",
        "PUBLISHERS": ["django_uow.publishers.RabbitMQPublisher"],
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//",  # nobody listens
        "FAST_PATH_TIMEOUT": BUDGET,
        "FAST_PATH_COOLDOWN": COOLDOWN,
    }
    with (
        override_settings(DJANGO_UOW=uow),
        caplog.at_level(logging.INFO, logger="django_uow.fastpath"),
    ):
        _, took = timed_place()
        assert took < WITHIN_BUDGET
        assert breaker.is_open
        place_order()
    assert breaker.skipped == 1
    assert set(OutboxEvent.objects.values_list("status", "attempts")) == {("pending", 0)}
    assert len(fast_path_records(caplog, logging.WARNING)) == 1


@pytest.mark.django_db(transaction=True)
def test_inline_mode_without_a_broker_publisher_never_opens_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    uow = {
        "RELAY_ON_COMMIT": "inline",
        "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
    }
    with override_settings(DJANGO_UOW=uow):
        place_order()
    assert not breaker.is_open
    assert OutboxEvent.objects.get().status == "dispatched"


# ----------------------------------------------------------------------- the breaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_logs_once_when_it_opens_and_once_when_it_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    cb = CircuitBreaker(clock)
    with caplog.at_level(logging.DEBUG, logger="django_uow.fastpath"):
        assert cb.allow()
        cb.failed(ConnectionRefusedError("refused"), cooldown=5.0, events=2)
        assert cb.is_open
        assert [cb.allow() for _ in range(3)] == [False] * 3
        clock.now += 5.0
        assert cb.allow()  # the one trial after the cool-down ...
        assert not cb.allow()  # ... while the others keep skipping
        cb.failed(ConnectionRefusedError("still"), cooldown=5.0)  # reopened, quietly
        assert not cb.allow()
        clock.now += 5.0
        assert cb.allow()
        cb.succeeded()
        assert not cb.is_open and cb.allow()
        cb.succeeded()  # closed already: nothing more to say
    warnings = fast_path_records(caplog, logging.WARNING)
    infos = fast_path_records(caplog, logging.INFO)
    assert len(warnings) == 1 and "2 event(s)" in warnings[0] and "5.0s" in warnings[0]
    assert len(infos) == 1 and "after 10.0s" in infos[0] and "5 commit(s)" in infos[0]


def test_an_inconclusive_trial_lets_the_next_commit_try() -> None:
    clock = Clock()
    cb = CircuitBreaker(clock)
    cb.failed(ConnectionRefusedError("refused"), cooldown=1.0)
    clock.now += 1.0
    assert cb.allow()
    cb.inconclusive()  # e.g. the database failed, not the broker
    assert cb.is_open and cb.allow()


def test_a_zero_cooldown_tries_the_broker_on_every_commit() -> None:
    cb = CircuitBreaker(Clock())
    cb.failed(ConnectionRefusedError("refused"), cooldown=0.0)
    assert cb.allow()


# ----------------------------------------------------------------------- AMQP


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port whose kernel completes the TCP handshake and nothing ever answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_an_amqp_broker_outage_never_holds_a_commit(
    silent_listener: int, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    from celery import Celery, current_app

    port = silent_listener if outage == "hung" else free_port()
    previous = current_app._get_current_object()
    app = Celery("uow-fast-path-amqp", broker=f"amqp://guest:guest@127.0.0.1:{port}//")
    app.set_current()
    try:
        with (
            # A send into the silent broker is still awaited off the commit path, up to
            # LEASE; then it is given back.
            override_settings(DJANGO_UOW={**CELERY_UOW, "LEASE": 2.0}),
            caplog.at_level(logging.INFO, logger="django_uow.fastpath"),
        ):
            _, took = timed_place()
            assert took < WITHIN_BUDGET, f"a commit waited {took:.1f}s on a {outage} broker"
            assert breaker.is_open
            place_order()  # skipped: the breaker is open
            leased = OutboxEvent.objects.exclude(claimed_by="")
            assert wait_until_none(leased)
    finally:
        previous.set_current()
        app.close()
    assert breaker.skipped == 1
    assert set(OutboxEvent.objects.values_list("status", "attempts")) == {("pending", 0)}
    assert len(fast_path_records(caplog, logging.WARNING)) == 1
