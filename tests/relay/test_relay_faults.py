"""Faults: Redis stopped mid-drain, the relay SIGKILLed mid-batch, three relays at once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections, transaction

from django_uow import RelayError
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.publishers import RedisStreamPublisher
from django_uow.relay import RelayLoop, relay_pending
from tests.conftest import CI
from tests.support.relay import RedisListPublisher, interleaved, make_rows, take_list
from tests.testapp.models import Effect

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on now (parallel test runs must not share one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


OWN_REDIS_PORT = free_port()


def wait_until(predicate: Any, timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


#: Every fault test runs in both relay modes: under a lease (claim, publish outside any
#: transaction, fenced acknowledgement) and direct (claim, publish and mark dispatched in
#: one transaction).
RELAY_MODES = pytest.mark.parametrize("relay_mode", ["lease", "direct"])


@pytest.fixture
def in_relay_mode(relay_mode: str, settings: Any) -> str:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_MODE": relay_mode}
    return relay_mode


# ----------------------------------------------------------------------- Redis outage


class OwnRedis:
    """A throw-away redis-server on its own port (never the shared one on 6379)."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.args = args  # more redis-server options (--maxmemory 1mb ...)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def accepting() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        assert wait_until(accepting, timeout=10), "redis-server did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server binary not found (apt-get install redis-server)"
        if CI:
            pytest.fail(f"{message} (CI=true)")
        pytest.skip(message)
    server = OwnRedis(OWN_REDIS_PORT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def stream_ids(port: int, key: str) -> list[str]:
    import json

    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        return [json.loads(f[b"message"])["event_id"] for _, f in client.xrange(key)]
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.django_db
@RELAY_MODES
def test_redis_stopped_mid_drain_loses_nothing_and_marks_nothing_unpublished(
    own_redis: OwnRedis, in_relay_mode: str
) -> None:
    rows = make_rows(interleaved(3, 10))
    publisher = RedisStreamPublisher(
        f"redis://127.0.0.1:{OWN_REDIS_PORT}/0", key="uowfault:{aggregate_type}"
    )
    key = "uowfault:testapp.order"
    before: list[str] = []

    def stop_redis_after_first_batch(batch: Any, summary: Any) -> None:
        if summary.batches == 1:
            before.extend(stream_ids(OWN_REDIS_PORT, key))
            own_redis.stop()

    with pytest.raises(RelayError, match="Could not reach the broker"):
        RelayLoop(
            batch_size=10, publishers=[publisher], on_batch=stop_redis_after_first_batch
        ).drain(count_left=False)
    assert len(before) == 10
    marked = set(OutboxEvent.objects.filter(status="dispatched").values_list("event_id", flat=True))
    assert {str(e) for e in marked} == set(before)  # nothing marked that was not published
    pending = OutboxEvent.objects.filter(status="pending")
    assert pending.count() == 20
    assert set(pending.values_list("attempts", "claimed_by")) == {(0, "")}

    own_redis.start()  # an empty server: --save "" keeps nothing
    summary = relay_pending(batch_size=10, publishers=[publisher])
    assert (summary.relayed, summary.left) == (20, 0)
    after = stream_ids(OWN_REDIS_PORT, key)
    assert sorted(before + after) == sorted(str(r.event_id) for r in rows)


# ----------------------------------------------------------------------- SIGKILL


def relay_process(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.relay_subprocess", connection.settings_dict["NAME"], *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _in_flight() -> int:
    """Rows a relay has claimed and not settled: leased, or locked by an open direct batch."""
    leased = OutboxEvent.objects.exclude(claimed_by="").filter(status="pending").count()
    if leased:
        return leased
    with transaction.atomic():  # the rows no other transaction holds FOR UPDATE
        free = OutboxEvent.objects.select_for_update(skip_locked=True).values_list("id", flat=True)
        return OutboxEvent.objects.count() - len(list(free))


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
@RELAY_MODES
def test_relay_killed_mid_batch_delivers_everything_and_effects_happen_once(
    relay_mode: str,
) -> None:
    rows = make_rows(interleaved(10, 20))
    proc = relay_process(
        "--batch-size",
        "25",
        "--interval",
        "0.1",
        env={
            "UOW_HANDLER_SLEEP": "0.01",
            "UOW_LEASE": "1",
            "UOW_EXTRA": f'{{"RELAY_MODE": "{relay_mode}"}}',
        },
    )
    try:

        def mid_batch() -> bool:
            done = OutboxEvent.objects.filter(status="dispatched").count()
            if relay_mode == "lease":  # handlers ran past the acknowledged events
                return done >= 25 and Effect.objects.count() > done + 3
            # Direct: a batch's effects commit with its marks; catch one in flight.
            return done >= 25 and _in_flight() > 0

        assert wait_until(mid_batch, step=0.01), (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    if relay_mode == "lease":
        # Events the dead relay ran handlers for are leased but not acknowledged.
        assert OutboxEvent.objects.exclude(claimed_by="").filter(status="pending").exists()
    else:
        # The killed batch rolled back with its connection: nothing leased, nothing
        # half-done (every committed effect belongs to a dispatched event), no wait.
        assert not OutboxEvent.objects.exclude(claimed_by="").exists()
        dispatched = set(
            OutboxEvent.objects.filter(status="dispatched").values_list("event_id", flat=True)
        )
        assert set(Effect.objects.values_list("event_id", flat=True)) == dispatched
        assert 25 <= len(dispatched) < len(rows)

    def restart_once() -> bool:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.relay_subprocess",
                connection.settings_dict["NAME"],
                "--once",
            ],
            cwd=ROOT,
            env={**os.environ, "UOW_LEASE": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return not OutboxEvent.objects.exclude(status="dispatched").exists()

    assert wait_until(restart_once, timeout=30, step=0.3)
    per_event = defaultdict(int)
    for event_id in Effect.objects.values_list("event_id", flat=True):
        per_event[event_id] += 1
    assert set(per_event) == {r.event_id for r in rows}
    assert set(per_event.values()) == {1}  # idempotent handler: exactly once per event
    assert ProcessedEvent.objects.count() == len(rows)
    # Per-aggregate order of the effects follows the outbox order.
    order_of = {r.event_id: r.id for r in rows}
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    for aggregate_id, event_id in Effect.objects.order_by("id").values_list(
        "aggregate_id", "event_id"
    ):
        by_aggregate[aggregate_id].append(order_of[event_id])
    assert all(ids == sorted(ids) for ids in by_aggregate.values())


# ----------------------------------------------------------------------- concurrency


@pytest.mark.server_db
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("claim_mode, per_aggregate", [("one-statement", 100), ("portable", 30)])
@RELAY_MODES
def test_three_concurrent_relays_publish_each_event_once_in_aggregate_order(
    redis_server: str,
    claim_mode: str,
    per_aggregate: int,
    monkeypatch: pytest.MonkeyPatch,
    in_relay_mode: str,
) -> None:

    from django_uow.relay import claims

    if claim_mode == "one-statement" and not claims.one_statement(connection.alias):
        pytest.skip(f"no one-statement claim on {connection.vendor}: the portable run covers it")
    if claim_mode == "portable":  # the MySQL/MariaDB path, on PostgreSQL too
        monkeypatch.setattr(claims, "PORTABLE_ONLY", True)
    rows = make_rows(interleaved(50, per_aggregate))
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    with connection.cursor() as cursor:  # fresh statistics, as autovacuum would gather
        cursor.execute(
            f"ANALYZE TABLE {table}" if connection.vendor == "mysql" else f"ANALYZE {table}"
        )
    key = f"uowtest:concurrent:{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []
    batches: dict[str, int] = {}
    start = threading.Barrier(3)

    def relay(name: str) -> None:
        publisher = RedisListPublisher(redis_server, key)
        try:
            start.wait(timeout=10)
            count = 0
            for _ in range(400):
                summary = relay_pending(batch_size=250, publishers=[publisher])
                count += summary.batches
                if summary.left == 0:
                    break
                if not summary.relayed:
                    time.sleep(0.01)  # the others hold the due events: let them finish
            batches[name] = count
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()
            publisher.client.close()

    threads = [threading.Thread(target=relay, args=(f"r{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    published = take_list(redis_server, key)
    assert not errors, errors
    assert len(batches) == 3
    event_ids = [item.rsplit(":", 1)[1] for item in published]
    assert len(event_ids) == len(set(event_ids)) == len(rows)  # no event twice, none lost
    seen: dict[str, list[int]] = defaultdict(list)
    for item in published:
        aggregate_id, reason, _ = item.split(":")
        seen[aggregate_id].append(int(reason))
    assert all(seq == list(range(per_aggregate)) for seq in seen.values())
    assert not OutboxEvent.objects.exclude(status="dispatched").exists()
    assert connection.features.has_select_for_update_skip_locked  # no relay queued
