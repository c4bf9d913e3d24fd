"""The relay engine: claim, publish, acknowledge, retries, dead letters, ordering, leases."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_uow import PermanentFailure, RelayError, RetryAfter, UnitOfWork
from django_uow.conf import uow_settings
from django_uow.db.clock import DatabaseNow
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.relay import (
    claims,
    prune_outbox,
    relay_batch,
    relay_events,
    relay_pending,
)
from django_uow.retry import backoff_delay
from django_uow.signals import event_dispatched, event_failed
from tests.support.relay import (
    RaisingPublisher,
    RecordingPublisher,
    interleaved,
    make_rows,
    select_claim,
)
from tests.testapp import handlers
from tests.testapp.models import Effect, Order

pytestmark = pytest.mark.django_db

P, D, F = "pending", "dispatched", "failed"


@pytest.fixture(autouse=True, params=["one-statement", "portable"])
def claim_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test through the one-statement claim and the portable (MySQL...) claim."""
    return select_claim(str(request.param), monkeypatch)


@pytest.fixture(autouse=True)
def _reset_handlers() -> Iterator[None]:
    handlers.BEHAVIOUR.clear()
    handlers.SEEN.clear()
    yield
    handlers.BEHAVIOUR.clear()
    handlers.SEEN.clear()


def statuses() -> dict[str, tuple[str, int]]:
    return {r.payload["reason"]: (r.status, r.attempts) for r in OutboxEvent.objects.order_by("id")}


def place_order(total: str = "9.50") -> Order:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal(total))
        order.place()
        order.save()
    return order


# ----------------------------------------------------------------------- happy path


def test_committed_events_reach_their_handlers_and_are_marked_dispatched() -> None:
    order = place_order()
    seen: list[Any] = []
    event_dispatched.connect(
        lambda sender, envelope, **kw: seen.append(envelope), weak=False, dispatch_uid="t1"
    )
    try:
        summary = relay_pending()
    finally:
        event_dispatched.disconnect(dispatch_uid="t1")
    assert (summary.relayed, summary.failed, summary.left) == (1, 0, 0)
    row = OutboxEvent.objects.get()
    assert row.status == D and row.dispatched_at is not None
    assert row.claimed_by == "" and row.claimed_until is None
    assert row.attempts == 1  # attempts are counted at claim time
    effect = Effect.objects.get()
    assert (effect.event_id, effect.aggregate_id) == (row.event_id, str(order.pk))
    assert ProcessedEvent.objects.filter(event_id=row.event_id).count() == 1
    assert [e.event_id for e in seen] == [row.event_id]


def test_nothing_due_claims_nothing() -> None:
    result = relay_batch()
    assert (result.claimed, result.dispatched) == (0, 0)


def test_sweep_delivers_what_the_fast_path_missed(settings: Any) -> None:
    # RELAY_ON_COMMIT=False stands for "the process died between COMMIT and the relay".
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_ON_COMMIT": False}
    place_order()
    place_order()
    assert OutboxEvent.objects.filter(status=P).count() == 2
    assert relay_pending().relayed == 2
    assert Effect.objects.count() == 2


def test_inline_fast_path_relays_right_after_commit(
    settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_ON_COMMIT": "inline"}
    with django_capture_on_commit_callbacks(execute=True):
        place_order()
    assert OutboxEvent.objects.get().status == D
    assert Effect.objects.count() == 1


def test_relay_events_relays_exactly_the_given_events() -> None:
    a, _b, c = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    publisher = RecordingPublisher()
    result = relay_events([a.event_id, c.event_id], publishers=[publisher])
    assert result.dispatched == 2
    assert publisher.reasons() == ["a", "c"]
    assert statuses() == {"a": (D, 1), "b": (P, 0), "c": (D, 1)}


def test_relay_events_respects_aggregate_order() -> None:
    _first, second = make_rows([("1", "first"), ("1", "second")])
    publisher = RecordingPublisher()
    # The earlier event of the aggregate is still owed and not in the set: wait for the sweep.
    assert relay_events([second.event_id], publishers=[publisher]).dispatched == 0
    assert publisher.published == []
    assert statuses() == {"first": (P, 0), "second": (P, 0)}
    assert relay_pending(publishers=[publisher]).relayed == 2
    assert publisher.reasons() == ["first", "second"]


# ----------------------------------------------------------------------- statements


@pytest.mark.parametrize("count", [3, 120])
def test_one_claim_and_one_ack_statement_per_batch(count: int, claim_mode: str) -> None:
    make_rows(interleaved(3, count // 3))
    with CaptureQueriesContext(connection) as ctx:
        result = relay_batch(batch_size=500, publishers=[RecordingPublisher()])
    assert result.dispatched == count
    sql = [q["sql"] for q in ctx.captured_queries]
    if claim_mode == "portable":
        # SAVEPOINT, SELECT ... FOR UPDATE, blockers, lease UPDATE, SELECT, RELEASE; ack.
        assert len(sql) == 7, sql
        assert sql[3].startswith("UPDATE") and sql[6].startswith("UPDATE")
        if connection.features.has_select_for_update_skip_locked:
            assert "FOR UPDATE SKIP LOCKED" in sql[1]
        return
    assert len(sql) == 2, sql
    assert sql[0].startswith("WITH cand AS MATERIALIZED") and "RETURNING" in sql[0]
    assert sql[1].startswith("UPDATE") and "dispatched" in sql[1]
    if connection.features.has_select_for_update_skip_locked:
        assert "FOR UPDATE SKIP LOCKED" in sql[0]


def test_failures_of_a_batch_are_written_with_one_update(claim_mode: str) -> None:
    make_rows([("1", "ok"), ("2", "bad"), ("3", "bad")])
    publisher = RecordingPublisher(fail={"bad": ValueError("nope")})
    with CaptureQueriesContext(connection) as ctx:
        relay_batch(publishers=[publisher])
    sql = [q["sql"] for q in ctx.captured_queries]
    claim_statements = 6 if claim_mode == "portable" else 1
    assert len(sql) == claim_statements + 2, sql  # claim, ack, one UPDATE for both failures
    assert "CASE WHEN" in sql[-1]


def test_batches_are_bounded_by_batch_size() -> None:
    make_rows(interleaved(5, 5))
    publisher = RecordingPublisher()
    summary = relay_pending(batch_size=7, publishers=[publisher])
    assert (summary.relayed, summary.batches, summary.left) == (25, 4, 0)
    assert publisher.calls == 4


# ----------------------------------------------------------------------- failures


def test_failing_handler_is_retried_with_backoff_then_dead_lettered(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "MAX_ATTEMPTS": 3, "BACKOFF": (30.0, 60.0)}
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "raise"
    failed: list[tuple[str, bool]] = []
    event_failed.connect(
        lambda sender, envelope, error, dead, **kw: failed.append((str(error), dead)),
        weak=False,
        dispatch_uid="t-failed",
    )
    try:
        before = timezone.now()
        first = relay_batch()
        row = OutboxEvent.objects.get()
        assert (first.retried, row.status, row.attempts) == (1, P, 1)
        assert "ValueError: handler refused order" in row.last_error
        # Full jitter: somewhere in [now, now + base * 2**0].
        assert before <= row.available_at <= timezone.now() + datetime.timedelta(seconds=30)
        assert relay_batch().claimed == 0  # backing off: not due
        for attempt in (2, 3):
            OutboxEvent.objects.update(available_at=DatabaseNow())  # the relay reads the database clock
            relay_batch()
            row.refresh_from_db()
            assert row.attempts == attempt
        assert row.status == F
        assert "handler refused" in row.last_error
        assert relay_batch().claimed == 0
    finally:
        event_failed.disconnect(dispatch_uid="t-failed")
    assert [dead for _, dead in failed] == [False, False, True]
    assert Effect.objects.count() == 0
    # The inbox holds the handler's dead letter, not a success.
    delivery = ProcessedEvent.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "ValueError: handler refused order" in delivery.last_error
    assert "Traceback (most recent call last)" in delivery.traceback
    assert delivery.processed_at is None


def test_backoff_grows_and_is_capped(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "BACKOFF": (1.0, 8.0)}
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (30, 8.0)]:
        delays = [backoff_delay(attempts, *uow_settings.BACKOFF) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 4  # jitter spans the range, not a constant


def test_permanent_failure_dead_letters_at_once() -> None:
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = "permanent"
    result = relay_batch()
    row = OutboxEvent.objects.get()
    assert (result.failed, row.status, row.attempts) == (1, F, 1)
    assert row.last_error.startswith("PermanentFailure: order")


def test_retry_after_sets_the_next_attempt() -> None:
    order = place_order()
    handlers.BEHAVIOUR[order.pk] = 120
    before = timezone.now()
    relay_batch()
    row = OutboxEvent.objects.get()
    assert row.status == P and row.attempts == 1
    assert row.available_at >= before + datetime.timedelta(seconds=119)
    assert "RetryAfter" in row.last_error


def test_unknown_event_type_is_marked_failed_and_the_relay_continues() -> None:
    make_rows([("1", "ghost")], event_type="billing.Vanished")
    make_rows([("2", "fine")])
    summary = relay_pending()
    assert (summary.relayed, summary.failed) == (1, 1)
    ghost = OutboxEvent.objects.get(event_type="billing.Vanished")
    assert ghost.status == F
    assert "UnknownEventType" in ghost.last_error and "'billing.Vanished'" in ghost.last_error
    assert OutboxEvent.objects.get(event_type="orders.cancelled").status == D


def test_a_poisoned_event_blocks_only_its_own_aggregate(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "MAX_ATTEMPTS": 2, "BACKOFF": (0.0, 0.0)}
    make_rows([("1", "a1-poison"), ("2", "b1"), ("1", "a2"), ("2", "b2")])
    publisher = RecordingPublisher(fail={"a1-poison": ValueError("poison")})
    relay_batch(publishers=[publisher])
    # a2 followed a failed event of its aggregate in the same batch: handed back unspent.
    assert statuses() == {"a1-poison": (P, 1), "b1": (D, 1), "a2": (P, 0), "b2": (D, 1)}
    relay_batch(publishers=[publisher])
    assert statuses()["a1-poison"] == (F, 2)
    make_rows([("2", "b3"), ("1", "a3")])
    summary = relay_pending(publishers=[publisher])
    assert summary.relayed == 1
    assert publisher.reasons() == ["b1", "b2", "b3"]
    assert statuses() == {
        "a1-poison": (F, 2),
        "b1": (D, 1),
        "a2": (P, 0),
        "b2": (D, 1),
        "b3": (D, 1),
        "a3": (P, 0),
    }


def test_a_blocked_aggregate_never_fills_the_batch(settings: Any) -> None:
    make_rows([("1", "dead")])
    OutboxEvent.objects.update(status=F)
    make_rows([("1", f"stuck{i}") for i in range(10)] + [("2", "free")])
    publisher = RecordingPublisher()
    assert relay_batch(batch_size=3, publishers=[publisher]).dispatched == 1
    assert publisher.reasons() == ["free"]


def test_events_without_aggregate_are_not_ordered() -> None:
    make_rows([("", "x1"), ("", "x2")])
    publisher = RecordingPublisher(fail={"x1": ValueError("no")})
    relay_batch(publishers=[publisher])
    assert statuses() == {"x1": (P, 1), "x2": (D, 1)}


def test_relay_never_marks_what_follows_a_failure_even_if_the_publisher_sent_it() -> None:
    make_rows([("1", "a1"), ("1", "a2"), ("2", "b1")])
    publisher = RecordingPublisher(fail={"a1": ValueError("no")}, well_behaved=False)
    result = relay_batch(publishers=[publisher])
    assert (result.retried, result.dispatched, result.handed_back) == (1, 1, 1)
    assert statuses() == {"a1": (P, 1), "a2": (P, 0), "b1": (D, 1)}


def test_ordering_none_lets_later_events_overtake(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "ORDERING": "none"}
    make_rows([("1", "a1"), ("1", "a2")])
    publisher = RecordingPublisher(fail={"a1": ValueError("no")}, well_behaved=False)
    relay_batch(publishers=[publisher])
    assert statuses() == {"a1": (P, 1), "a2": (D, 1)}


def test_publisher_raising_fails_the_whole_batch() -> None:
    make_rows([("1", "a"), ("2", "b")])
    result = relay_batch(publishers=[RaisingPublisher(RuntimeError("bad serializer"))])
    assert result.retried == 2
    assert statuses() == {"a": (P, 1), "b": (P, 1)}
    assert all("RuntimeError: bad serializer" in r.last_error for r in OutboxEvent.objects.all())


def test_broker_outage_pauses_without_spending_attempts() -> None:
    make_rows([("1", "a"), ("2", "b")])
    with pytest.raises(RelayError, match="Could not reach the broker") as info:
        relay_batch(publishers=[RaisingPublisher(ConnectionRefusedError(111, "refused"))])
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert statuses() == {"a": (P, 0), "b": (P, 0)}
    assert set(OutboxEvent.objects.values_list("claimed_by", flat=True)) == {""}
    assert relay_pending(publishers=[RecordingPublisher()]).relayed == 2


def test_per_event_broker_errors_are_handed_back_and_reported() -> None:
    make_rows([("1", "a"), ("2", "b")])
    publisher = RecordingPublisher(fail={"b": ConnectionError("reset")})
    with pytest.raises(RelayError, match="refused part of a batch"):
        relay_batch(publishers=[publisher])
    assert statuses() == {"a": (D, 1), "b": (P, 0)}


def test_several_publishers_all_must_succeed() -> None:
    make_rows([("1", "a"), ("2", "b")])
    good, picky = RecordingPublisher(), RecordingPublisher(fail={"b": ValueError("no")})
    relay_batch(publishers=[good, picky])
    assert statuses() == {"a": (D, 1), "b": (P, 1)}


def test_log_lines_name_event_type_and_aggregate(caplog: pytest.LogCaptureFixture) -> None:
    (row,) = make_rows([("7", "bad")])
    with caplog.at_level(logging.WARNING, logger="django_uow.relay"):
        relay_batch(publishers=[RecordingPublisher(fail={"bad": ValueError("nope")})])
    (record,) = [r for r in caplog.records if r.name == "django_uow.relay"]
    message = record.getMessage()
    assert str(row.event_id) in message and "orders.cancelled" in message
    assert "testapp.order 7" in message
    assert record.event_id == str(row.event_id)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------- leases


def test_claimed_events_are_invisible_to_other_relays_until_the_lease_expires() -> None:
    make_rows([("1", "a"), ("2", "b")])
    mine = claims.claim_batch(using="default", relay_id="r1", limit=10, lease=60, ordered=True)
    assert [r.payload["reason"] for r in mine] == ["a", "b"]
    assert relay_batch(relay_id="r2", publishers=[RecordingPublisher()]).claimed == 0
    # r1 stalls past its lease; r2 takes over and publishes.
    OutboxEvent.objects.update(claimed_until=timezone.now() - datetime.timedelta(seconds=1))
    publisher = RecordingPublisher()
    result = relay_batch(relay_id="r2", publishers=[publisher])
    assert result.dispatched == 2 and publisher.reasons() == ["a", "b"]
    assert statuses() == {"a": (D, 2), "b": (D, 2)}


def test_a_relay_that_lost_its_lease_cannot_acknowledge() -> None:
    make_rows([("1", "a")])
    (row,) = claims.claim_batch(using="default", relay_id="r1", limit=10, lease=60, ordered=True)
    OutboxEvent.objects.update(claimed_until=timezone.now() - datetime.timedelta(seconds=1))
    (again,) = claims.claim_batch(using="default", relay_id="r2", limit=10, lease=60, ordered=True)
    assert claims.acknowledge(using="default", relay_id="r1", ids=[row.id]) == set()
    assert claims.give_back(using="default", relay_id="r1", ids=[row.id]) == 0
    assert OutboxEvent.objects.get().claimed_by == "r2"
    assert claims.acknowledge(using="default", relay_id="r2", ids=[again.id]) == {again.id}


def test_an_event_whose_relays_keep_dying_is_dead_lettered(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "MAX_ATTEMPTS": 2}
    make_rows([("1", "a")])
    for relay in ("r1", "r2"):
        claims.claim_batch(using="default", relay_id=relay, limit=1, lease=60, ordered=True)
        OutboxEvent.objects.update(claimed_until=timezone.now() - datetime.timedelta(seconds=1))
    publisher = RecordingPublisher()
    result = relay_batch(publishers=[publisher])
    assert result.failed == 1 and publisher.published == []
    row = OutboxEvent.objects.get()
    assert row.status == F and "without being acknowledged" in row.last_error


def test_later_event_waits_while_an_earlier_one_is_leased_elsewhere() -> None:
    make_rows([("1", "a1")])
    claims.claim_batch(using="default", relay_id="r1", limit=1, lease=60, ordered=True)
    make_rows([("1", "a2"), ("2", "b1")])
    publisher = RecordingPublisher()
    relay_batch(relay_id="r2", publishers=[publisher])
    assert publisher.reasons() == ["b1"]
    assert statuses()["a2"] == (P, 0)


# ----------------------------------------------------------------------- retention


def test_prune_deletes_only_old_dispatched_events_in_bounded_batches(settings: Any) -> None:
    rows = make_rows([(str(i), f"r{i}") for i in range(7)])
    old = timezone.now() - datetime.timedelta(days=8)
    OutboxEvent.objects.filter(id__in=[r.id for r in rows[:5]]).update(status=D, dispatched_at=old)
    OutboxEvent.objects.filter(id=rows[5].id).update(status=F, created_at=old)
    with CaptureQueriesContext(connection) as ctx:
        deleted = prune_outbox(batch_size=2)
    assert deleted == 5
    deletes = [q["sql"] for q in ctx.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1
    assert sorted(statuses()) == ["r5", "r6"]  # the failed and the pending one stay
    # A recent dispatched event is kept until it ages past RETENTION.
    OutboxEvent.objects.filter(id=rows[6].id).update(status=D, dispatched_at=timezone.now())
    assert prune_outbox() == 0
    assert prune_outbox(older_than=datetime.timedelta(0)) == 1


def test_permanent_failure_from_a_publisher_mapping() -> None:
    make_rows([("1", "a")])
    relay_batch(publishers=[RecordingPublisher(fail={"a": PermanentFailure("bad")})])
    assert statuses() == {"a": (F, 1)}


def test_retry_after_from_a_publisher_mapping() -> None:
    make_rows([("1", "a")])
    relay_batch(publishers=[RecordingPublisher(fail={"a": RetryAfter(3600)})])
    row = OutboxEvent.objects.get()
    assert row.status == P
    assert row.available_at > timezone.now() + datetime.timedelta(seconds=3000)


# ----------------------------------------------------------------------- tracing


def test_one_span_per_batch_and_handler_spans_continue_the_trace() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs opentelemetry-sdk (the dev extra)")
    from opentelemetry import trace

    from tests.project.test_tracing import _EXPORTER, _install_exporter

    _install_exporter()
    _EXPORTER.clear()
    try:
        with trace.get_tracer("tests").start_as_current_span("POST /orders") as request:
            place_order()
        make_rows([("71", "a"), ("72", "b")])
        assert relay_pending(batch_size=2).batches == 2
        spans = _EXPORTER.get_finished_spans()
    finally:
        _EXPORTER.clear()
    batches = [s for s in spans if s.name == "django_uow.relay.batch"]
    assert [dict(s.attributes or {})["claimed"] for s in batches] == [2, 1]
    (handled,) = [s for s in spans if s.name == "handle testapp.OrderPlaced"]
    assert handled.context.trace_id == request.get_span_context().trace_id
    assert dict(handled.attributes or {})["handler"] == "testapp.record_placed"


def test_a_retried_head_due_after_its_follower_does_not_stall_the_relay() -> None:
    # The claim scans oldest-due first: the follower a2 sorts before its head a1 here.
    a1, a2 = make_rows([("1", "a1"), ("1", "a2")])
    now = timezone.now()
    OutboxEvent.objects.filter(id=a1.id).update(available_at=now - datetime.timedelta(seconds=1))
    OutboxEvent.objects.filter(id=a2.id).update(available_at=now - datetime.timedelta(hours=1))
    publisher = RecordingPublisher()
    summary = relay_pending(batch_size=1, publishers=[publisher])
    assert (summary.relayed, summary.left) == (2, 0)
    assert publisher.reasons() == ["a1", "a2"]
