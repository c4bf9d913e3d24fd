"""One clock: the database's. Processes whose clocks are off by ±10 s (``time.time`` and
``timezone.now`` shifted in a child process) take no live lease, publish no scheduled
event early, and leave no event waiting for a relay.

Before, leases, due times and "now" came from each process's own clock: a healthy relay
8 s fast took every lease of a relay on time (each event published twice), a writer 3 s
fast left its event pending past every relay, and a relay 6 s fast published a scheduled
event early.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection
from django.test import override_settings

from django_uow import UnitOfWork
from django_uow.db.clock import database_now
from django_uow.models import OutboxEvent
from django_uow.relay import relay_events, relay_pending
from tests.conftest import require_server
from tests.support.delivery import effects, outbox_rows
from tests.support.processes import start_relay, stop, wait_for
from tests.support.relay import RecordingPublisher
from tests.testapp.events import OrderCancelled
from tests.testapp.models import Order

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def stream_entries(redis_url: str, key: str) -> Counter[str]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return Counter(
            json.loads(fields[b"message"])["event_id"] for _, fields in client.xrange(key)
        )
    finally:
        client.delete(key)
        client.close()


@pytest.mark.parametrize("skew", [10.0, -10.0])
def test_a_relay_with_a_skewed_clock_takes_no_live_lease(skew: float) -> None:
    require_server("Redis", "127.0.0.1", 6379)
    from django.conf import settings

    prefix = f"uow_skew_{uuid.uuid4().hex[:8]}"
    policy = {
        "PUBLISHERS": [
            "django_uow.publishers.InlinePublisher",
            "django_uow.publishers.RedisStreamPublisher",
        ],
        "STREAM_KEY": prefix + ":{aggregate_type}",
        "RELAY_MODE": "lease",
        "BATCH_SIZE": 5,
    }
    rows = outbox_rows(
        "orders.cancelled", [{"order_id": i, "reason": "r"} for i in range(20)], aggregate_id=""
    )
    # Both relays run each batch's handlers for 5 s, past the 3 s lease they renew.
    on_time = start_relay("--once", extra=policy, UOW_LEASE="3", UOW_HANDLER_SLEEP="1")
    skewed = start_relay(
        "--once", extra=policy, UOW_LEASE="3", UOW_HANDLER_SLEEP="1", UOW_CLOCK_SKEW=str(skew)
    )
    try:
        assert wait_for(lambda: on_time.poll() is not None and skewed.poll() is not None, 90)
    finally:
        stop(on_time)
        stop(skewed)
    published = stream_entries(settings.REDIS_URL, f"{prefix}:none")
    assert published == Counter({str(r.event_id): 1 for r in rows})  # each exactly once
    assert Counter(effects("cancelled")) == Counter({r.event_id: 1 for r in rows})
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}


@pytest.mark.parametrize("skew", [10.0, -10.0])
def test_an_event_written_by_a_skewed_writer_is_due_for_every_relay_at_once(skew: float) -> None:
    env = {"UOW_CLOCK_SKEW": str(skew)}
    subprocess.run(
        [sys.executable, "-m", "tests.write_subprocess", connection.settings_dict["NAME"], "1"],
        env={**os.environ, **env},
        check=True,
        timeout=60,
    )
    (row,) = OutboxEvent.objects.all()
    now = database_now("default")
    assert abs(row.created_at - now) < datetime.timedelta(seconds=5)
    assert row.available_at == row.created_at
    publisher = RecordingPublisher()
    assert relay_events([row.event_id], publishers=[publisher]).dispatched == 1


def test_a_relay_with_a_fast_clock_publishes_no_scheduled_event_early() -> None:
    with UnitOfWork() as uow:
        uow.record_event(OrderCancelled(order_id=1, reason="later"), delay=6)
    (row,) = OutboxEvent.objects.all()
    assert row.deliver_at == row.created_at + datetime.timedelta(seconds=6)
    policy = {"PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}
    fast = start_relay("--once", extra=policy, UOW_CLOCK_SKEW="10")
    try:
        assert fast.wait(timeout=60) == 0
    finally:
        stop(fast)
    row.refresh_from_db()
    assert row.status == "pending" and effects("cancelled") == []
    assert wait_for(lambda: database_now("default") >= row.deliver_at, timeout=10)
    with override_settings(DJANGO_UOW=policy):
        assert relay_pending().relayed == 1
    assert effects("cancelled") == [row.event_id]


def test_an_event_is_due_from_its_commit_not_from_when_it_was_recorded() -> None:
    """A unit that records its events, then works a while before committing: an ordinary
    event is due at the commit and a delay counts from there, so no scheduled event of a
    unit committed earlier comes after it by mistake, nor one committed later before it."""
    order = Order.objects.create(total=Decimal("1.00"))
    with UnitOfWork():
        order.record_event(OrderCancelled(order_id=order.pk, reason="ordinary"))
        order.record_event(OrderCancelled(order_id=order.pk, reason="scheduled"), delay=2)
        time.sleep(1.2)
        order.save()
    ordinary, scheduled = OutboxEvent.objects.order_by("id")
    committed = ordinary.created_at
    assert committed - ordinary.occurred_at >= datetime.timedelta(seconds=1.2)
    assert ordinary.available_at == committed and ordinary.deliver_at is None
    assert scheduled.created_at == committed
    assert (
        scheduled.deliver_at == scheduled.available_at == committed + datetime.timedelta(seconds=2)
    )
