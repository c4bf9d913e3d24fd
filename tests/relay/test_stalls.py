"""A stalled broker or a paused relay: every broker call of the sweep is bounded, SIGTERM
ends the relay, and a relay that lost its lease publishes nothing more of its batch.

The faults are real: a loopback listener that accepts and never answers, a SIGSTOPped
redis-server of the test's own, a relay paused (in this process, at a fixed point) past
its lease while another relay takes its events over.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from django_uow.models import OutboxEvent
from django_uow.relay import batch as relay_batch_module
from django_uow.relay import relay_batch, relay_pending
from tests.relay.test_fast_path_budget import Broker
from tests.relay.test_relay_faults import free_port
from tests.support.processes import start_relay, stop, wait_for
from tests.support.relay import RecordingPublisher, RedisListPublisher, make_rows, take_list

CELERY = "django_uow.publishers.CeleryPublisher"
#: The sweep's bound in these tests; the relay must end well within EXIT_WITHIN.
BROKER_TIMEOUT = 1.0
EXIT_WITHIN = 30.0


class SilentBroker:
    """A loopback port that accepts connections and never answers; counts the accepts."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = int(self.server.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read or written

    def close(self) -> None:
        self.server.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_broker() -> Iterator[SilentBroker]:
    broker = SilentBroker()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def stopped_redis() -> Iterator[Broker]:
    import shutil

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (apt-get install redis-server)")
    server = Broker(free_port())
    server.start()
    server.hang()
    try:
        yield server
    finally:
        server.resume()
        server.stop()


def _relay_env(url: str) -> dict[str, Any]:
    return {
        "extra": {"PUBLISHERS": [CELERY], "BROKER_TIMEOUT": BROKER_TIMEOUT},
        "UOW_CELERY_BROKER": url,
        "UOW_LOG": "WARNING",
    }


def _finish(proc: subprocess.Popen[bytes]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"relay_outbox still running {EXIT_WITHIN:g}s later")
    return time.monotonic() - started, err.decode(errors="replace")


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_relay_once_against_a_stopped_redis_ends_and_hands_the_batch_back(
    stopped_redis: Broker,
) -> None:
    (row,) = make_rows([("1", "a")])
    url = f"redis://127.0.0.1:{stopped_redis.port}/0"
    relay = start_relay("--once", **_relay_env(url))
    _, err = _finish(relay)
    assert relay.returncode != 0  # an outage is an error of --once
    assert f"CeleryPublisher at {url}" in err, err[-2000:]  # it names the broker
    row.refresh_from_db()
    assert (row.status, row.attempts, row.claimed_by) == ("pending", 0, "")


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_sigterm_ends_a_relay_stuck_on_a_broker_that_never_answers(
    silent_broker: SilentBroker,
) -> None:
    (row,) = make_rows([("1", "a")])
    url = f"redis://127.0.0.1:{silent_broker.port}/0"
    relay = start_relay("--interval", "0.2", "--no-listen", **_relay_env(url))
    try:
        assert wait_for(lambda: bool(silent_broker.accepted), timeout=EXIT_WITHIN)
        os.killpg(relay.pid, signal.SIGTERM)  # while it waits on the broker
    except BaseException:
        stop(relay)
        raise
    _, err = _finish(relay)
    assert relay.returncode == 0, err[-2000:]
    lines = [line for line in err.splitlines() if f"127.0.0.1:{silent_broker.port}" in line]
    assert len(lines) == 1, err[-2000:]  # one line for the outage, naming the broker
    assert "CeleryPublisher at" in lines[0] and "Could not reach the broker" in lines[0]
    row.refresh_from_db()
    assert (row.status, row.attempts, row.claimed_by) == ("pending", 0, "")


class StuckPublisher:
    """A custom publisher with no timeouts of its own: it returns only when its lease has
    lapsed (or after ``give_up`` seconds), noting whether it saw that happen."""

    def __init__(self, give_up: float) -> None:
        self.give_up = give_up
        self.lapsed = False

    def publish(self, envelopes: Any) -> None:
        deadline = time.monotonic() + self.give_up
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT COUNT(*) FROM {OutboxEvent._meta.db_table} WHERE claimed_until < now()"
                )
                if cursor.fetchone()[0]:
                    self.lapsed = True
                    return None
            time.sleep(0.1)
        return None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_stops_renewing_a_batch_stuck_past_its_bound() -> None:
    make_rows([("1", "a")])
    stuck = StuckPublisher(give_up=10.0)
    # The bound: LEASE + 3 x BROKER_TIMEOUT = 1.3 s; the heartbeat beats every 0.33 s.
    with override_settings(DJANGO_UOW={"LEASE": 1.0, "BROKER_TIMEOUT": 0.1}):
        relay_batch(publishers=[stuck])
    assert stuck.lapsed, "the heartbeat renewed the lease of a stuck batch for 10 s"


# ----------------------------------------------------------------------- stale copies


def _versions(items: list[str]) -> list[int]:
    return [int(item.split(":")[1]) for item in items]


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_relay_paused_past_its_lease_does_not_publish_its_old_batch(
    redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"uow_stale_{uuid.uuid4().hex[:8]}"
    make_rows([("1", str(version)) for version in range(4)])
    lease = 1.0
    triage = relay_batch_module._Batch.triage

    def paused_after_claim(self: Any) -> None:
        triage(self)
        if self.relay_id == "paused":
            # The relay stops here past its lease; meanwhile another takes its events
            # over and publishes them and the later versions.
            time.sleep(lease * 1.5)
            took_over = relay_pending(
                publishers=[RedisListPublisher(redis_server, key)], relay_id="other"
            )
            assert took_over.relayed == 4

    monkeypatch.setattr(relay_batch_module._Batch, "triage", paused_after_claim)
    try:
        with override_settings(DJANGO_UOW={"LEASE": lease}):
            result = relay_batch(
                publishers=[RedisListPublisher(redis_server, key)],
                relay_id="paused",
                batch_size=2,
            )
        stream = _versions(take_list(redis_server, key))
    finally:
        take_list(redis_server, key)
    assert stream == [0, 1, 2, 3]  # no older version after a newer one
    assert result.dispatched == 0
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_relay_whose_heartbeat_finds_the_lease_lost_publishes_nothing_more() -> None:
    make_rows([("1", "a"), ("2", "b")])

    class TakenOverWhilePublishing(RecordingPublisher):
        def publish(self, envelopes: Any) -> Any:
            # Another relay took these events over while this publisher was slow.
            OutboxEvent.objects.update(claimed_by="another-relay")
            time.sleep(1.0)  # three heartbeats of a 0.6 s lease
            return super().publish(envelopes)

    first, second = TakenOverWhilePublishing(), RecordingPublisher()
    with override_settings(DJANGO_UOW={"LEASE": 0.6}):
        result = relay_batch(publishers=[first, second])
    assert len(first.published) == 2  # it was already sending when the lease went
    assert second.published == []  # the next publisher never got the stale batch
    assert result.dispatched == 0
    assert set(OutboxEvent.objects.values_list("claimed_by", flat=True)) == {"another-relay"}
