"""The smaller breaks, each where the product meets something it does not own.

- RedisStream: a later event of an aggregate never follows a failed one in a batch.
- A relay that lost its lease does not count the rows as relayed.
- A broker outage of one publisher does not stop the handlers run in this process.
- The delivery rows are part of the acknowledgement: a batch the broker took but whose
  rows could not be written is not marked dispatched.
- The direct mode (no lease: row locks) holds others back no longer than ``LEASE`` when
  its relay is stopped mid-publish.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings

from django_uow import signals
from django_uow.exceptions import RelayError
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.publishers import CeleryPublisher, RedisStreamPublisher
from django_uow.relay import relay_batch, relay_pending
from tests.support.delivery import CELERY, effects, outbox_rows, queued
from tests.support.processes import start_relay, stop, wait_for
from tests.support.relay import RecordingPublisher, make_rows, take_list

INLINE = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


@pytest.mark.django_db
def test_a_redis_stream_batch_never_publishes_past_a_failed_event_of_its_aggregate(
    redis_server: str,
) -> None:
    import redis

    prefix = f"uow_order_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server)
    client.set(f"{prefix}:orders.cancelled", "not a stream")  # XADD here fails: WRONGTYPE
    first = outbox_rows("orders.cancelled", [{"order_id": 1, "reason": "a"}], aggregate_id="1")
    later = outbox_rows("testapp.OrderPaid", [{"order_id": 1}], aggregate_id="1")
    other = outbox_rows("testapp.OrderPaid", [{"order_id": 2}], aggregate_id="2")
    publisher = RedisStreamPublisher(redis_server, key=prefix + ":{event_type}")
    try:
        result = relay_batch(publishers=[publisher])
        stream = [
            json.loads(fields[b"message"])["event_id"]
            for _, fields in client.xrange(f"{prefix}:testapp.OrderPaid")
        ]
    finally:
        client.delete(f"{prefix}:orders.cancelled", f"{prefix}:testapp.OrderPaid")
    assert stream == [str(other[0].event_id)]  # the later event of aggregate 1 stayed out
    assert (result.dispatched, result.retried, result.handed_back) == (1, 1, 1)
    statuses = dict(OutboxEvent.objects.values_list("event_id", "status"))
    assert statuses[later[0].event_id] == "pending" and statuses[first[0].event_id] == "pending"
    later[0].refresh_from_db()
    assert later[0].attempts == 0


@pytest.mark.django_db
def test_a_relay_that_lost_its_lease_does_not_count_the_rows_as_relayed() -> None:
    make_rows([("1", "a"), ("2", "b")])
    dispatched: list[Any] = []

    class StolenWhilePublishing(RecordingPublisher):
        def publish(self, envelopes: Any) -> Any:
            # Another relay took these leases while this one was publishing.
            OutboxEvent.objects.update(claimed_by="another-relay")
            return super().publish(envelopes)

    def seen(sender: Any, envelope: Any, **kwargs: Any) -> None:
        dispatched.append(envelope.event_id)

    signals.event_dispatched.connect(seen)
    try:
        result = relay_batch(publishers=[StolenWhilePublishing()])
    finally:
        signals.event_dispatched.disconnect(seen)
    assert (result.claimed, result.dispatched, result.relayed) == (2, 0, 0)
    assert dispatched == []
    assert set(OutboxEvent.objects.values_list("status", "claimed_by")) == {
        ("pending", "another-relay")
    }


@pytest.mark.django_db
def test_a_broker_outage_does_not_stop_the_handlers_run_in_this_process() -> None:
    (row,) = make_rows([("1", "a")])
    down = RedisStreamPublisher("redis://127.0.0.1:1/0")  # nothing listens on port 1
    with override_settings(DJANGO_UOW=INLINE):
        from django_uow.publishers import InlinePublisher

        with pytest.raises(RelayError, match="Could not reach the broker"):
            relay_batch(publishers=[down, InlinePublisher()])
    assert effects("cancelled") == [row.event_id]  # the in-process handler ran
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("pending", 0)  # the broker gets it later


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_delivery_rows_cannot_be_written_is_not_acknowledged(
    celery_app: Any,
) -> None:
    queue = f"uow_rows_{uuid.uuid4().hex[:8]}"
    (row,) = make_rows([("1", "a")])
    table = ProcessedEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION uow_refuse() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'the inbox is read-only'; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            f"CREATE TRIGGER uow_refuse BEFORE INSERT OR UPDATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION uow_refuse()"
        )
    try:
        with override_settings(DJANGO_UOW={**CELERY, "CELERY_QUEUE": queue}):
            publisher = CeleryPublisher(celery_app)
            with pytest.raises(RelayError, match="delivery rows could not be written"):
                relay_batch(publishers=[publisher])
            row.refresh_from_db()
            assert (row.status, row.attempts) == ("pending", 0)  # handed back, not marked
            assert queued(celery_app, queue) == 1  # the broker took it
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER uow_refuse ON {table}")
            cursor.execute("DROP FUNCTION uow_refuse()")
    with override_settings(DJANGO_UOW={**CELERY, "CELERY_QUEUE": queue}):
        assert relay_batch(publishers=[CeleryPublisher(celery_app)]).dispatched == 1
    row.refresh_from_db()
    assert row.status == "dispatched"
    assert ProcessedEvent.objects.get(event_id=row.event_id).status == "published"


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_direct_relay_stopped_mid_publish_holds_others_back_no_longer_than_lease(
    redis_server: str,
) -> None:
    key = f"uow_direct_{uuid.uuid4().hex[:8]}"
    rows = make_rows([(str(agg), str(seq)) for seq in range(3) for agg in (1, 2)])
    policy = {"RELAY_MODE": "direct", "PUBLISHERS": ["tests.support.relay.SlowListPublisher"]}
    stalled = start_relay(
        "--once", extra=policy, UOW_LEASE="3", UOW_LIST_KEY=key, UOW_PUBLISH_SLEEP="1.5"
    )
    try:
        # It holds the batch's row locks while it publishes: stop it there.
        assert wait_for(lambda: handler_running_outbox(rows[0]), timeout=30)
        os.killpg(stalled.pid, signal.SIGSTOP)
        other = RecordingPublisher()
        assert wait_for(
            lambda: relay_pending(publishers=[other]).relayed >= 0 and len(other.published) == 6,
            timeout=15,
            step=0.25,
        ), f"{len(other.published)} of 6 delivered while the first relay is stopped"
        assert stalled.poll() is None  # still stopped: its locks went, not the process
    finally:
        stop(stalled)
    assert [e.payload["reason"] for e in other.published if e.aggregate_id == "1"] == [
        "0",
        "1",
        "2",
    ]
    assert set(OutboxEvent.objects.values_list("status", flat=True)) == {"dispatched"}
    take_list(redis_server, key)


def handler_running_outbox(row: OutboxEvent) -> bool:
    """True while another transaction holds ``row``'s lock."""
    from django.db import DatabaseError, transaction

    try:
        with transaction.atomic():
            list(OutboxEvent.objects.select_for_update(nowait=True).filter(pk=row.pk))
    except DatabaseError:
        return True
    return False
