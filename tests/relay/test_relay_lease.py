"""Short leases, renewed while a batch is in flight.

A relay killed while holding a claim blocks its aggregates only until its (short) lease
runs out; a live relay with a slow batch keeps its lease, so no other relay takes it.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_uow.conf import DEFAULTS, uow_settings
from django_uow.models import OutboxEvent
from django_uow.relay import claims, relay_batch, relay_pending
from tests.support.relay import RecordingPublisher, make_rows
from tests.testapp.models import Effect

ROOT = Path(__file__).resolve().parents[2]


def relay_process(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.relay_subprocess", connection.settings_dict["NAME"], *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def claimed() -> bool:
    return OutboxEvent.objects.exclude(claimed_by="").exists()


def test_the_default_lease_is_short() -> None:
    assert DEFAULTS["LEASE"] <= 10


@pytest.mark.django_db
def test_renewal_extends_only_the_holders_lease() -> None:
    make_rows([("1", "a"), ("2", "b")])
    mine = claims.claim_batch(using="default", relay_id="r1", limit=1, lease=5, ordered=True)
    before = OutboxEvent.objects.get(id=mine[0].id).claimed_until
    assert claims.renew(using="default", relay_id="r1", ids=[mine[0].id], lease=60) == 1
    after = OutboxEvent.objects.get(id=mine[0].id).claimed_until
    assert before is not None and after is not None
    assert after >= timezone.now() + datetime.timedelta(seconds=50) > before
    # Another relay cannot renew (or take) what r1 holds; a dispatched row is not renewed.
    assert claims.renew(using="default", relay_id="r2", ids=[mine[0].id], lease=60) == 0
    claims.acknowledge(using="default", relay_id="r1", ids=[mine[0].id])
    assert claims.renew(using="default", relay_id="r1", ids=[mine[0].id], lease=60) == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_live_relay_keeps_the_lease_of_a_batch_slower_than_the_lease() -> None:
    (row,) = make_rows([("1", "slow")])
    proc = relay_process("--once", env={"UOW_LEASE": "2", "UOW_HANDLER_SLEEP": "5"})
    try:
        assert wait_until(claimed), proc.stderr.read() if proc.poll() is not None else ""
        other = RecordingPublisher()
        # Twice the lease: without renewal another relay would publish the event again.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and proc.poll() is None:
            relay_batch(publishers=[other])
            time.sleep(0.1)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert other.published == []
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("dispatched", 1)
    assert Effect.objects.filter(event_id=row.event_id).count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_killed_relays_aggregate_flows_again_within_seconds(settings: Any) -> None:
    rows = make_rows([("1", "a1"), ("1", "a2"), ("1", "a3")])
    proc = relay_process("--once", env={"UOW_LEASE": "2", "UOW_HANDLER_SLEEP": "60"})
    try:
        assert wait_until(claimed), proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.5)  # inside the first handler, holding the whole aggregate
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert OutboxEvent.objects.filter(status="pending").exclude(claimed_by="").exists()
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "LEASE": 2.0}
    assert uow_settings.LEASE == 2.0
    killed_at = time.monotonic()

    def delivered() -> bool:
        relay_pending()
        return not OutboxEvent.objects.exclude(status="dispatched").exists()

    # The lease of the dead relay is 2 s: the aggregate flows again within seconds.
    assert wait_until(delivered, timeout=15)
    assert time.monotonic() - killed_at < 15
    assert sorted(Effect.objects.values_list("event_id", flat=True)) == sorted(
        r.event_id for r in rows
    )
