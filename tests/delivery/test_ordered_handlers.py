"""Handlers that run in aggregate order: ``@event_handler(EventType, ordered=True)``.

The unit tests drive the handler task's body (``run_handler_task``) with a stand-in task,
so a re-queue is seen as the call to ``task.retry``; the proof runs a real Celery worker
with four threads over 200 events of 10 aggregates.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from django_uow.delivery.handlers import Handler, event_handler, registry
from django_uow.delivery.running import run_handler
from django_uow.events.base import Envelope
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.outbox.writing import write_events
from django_uow.publishers import CeleryPublisher
from django_uow.relay import prune_inbox, relay_batch, relay_pending
from django_uow.tasks import ORDERED_POLL, celery_retry_limit, ordered_polls, run_handler_task
from tests.testapp import handlers
from tests.testapp.events import OrderSequenced
from tests.testapp.models import Effect

SEQUENCED = OrderSequenced.event_type
HANDLER = "testapp.sequence"
INLINE = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}


class Requeued(Exception):
    """What the stand-in task's ``retry`` returns (the real one returns celery's Retry)."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__("requeued")
        self.options = options


class StandInTask:
    """The parts of a bound Celery task that ``run_handler_task`` uses."""

    def __init__(self, retries: int = 0) -> None:
        self.request = SimpleNamespace(retries=retries)
        self.app = None

    def retry(self, **options: Any) -> Requeued:
        return Requeued(options)


@pytest.fixture(autouse=True)
def no_jitter() -> Iterator[None]:
    handlers.SEQUENCE_JITTER[0] = 0.0
    yield
    handlers.SEQUENCE_JITTER[0] = 0.005


@pytest.fixture
def temp_handlers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


@contextmanager
def swapped(func: Callable[..., Any]) -> Iterator[Handler]:
    """The ordered handler with another body for the duration."""
    original = registry.get(HANDLER)
    registry.unregister(HANDLER)
    registry.register(replace(original, func=func))
    try:
        yield original
    finally:
        registry.unregister(HANDLER)
        registry.register(original)


def write(specs: Sequence[tuple[str, int]], *, status: str = "dispatched") -> list[OutboxEvent]:
    """One ``orders.sequenced`` event per ``(aggregate id, version)``, in that order."""
    rows = [
        OutboxEvent(
            event_id=uuid.uuid4(),
            event_type=SEQUENCED,
            aggregate_type="testapp.order",
            aggregate_id=agg,
            aggregate_version=version,
            payload={"order_id": int(agg), "seq": version},
            headers={"schema_version": 1},
            status=status,
        )
        for agg, version in specs
    ]
    write_events(rows, "default")
    stored = {
        r.event_id: r for r in OutboxEvent.objects.filter(event_id__in=[r.event_id for r in rows])
    }
    return [stored[r.event_id] for r in rows]


def message(row: OutboxEvent) -> dict[str, Any]:
    return row.to_envelope().to_message()


def sequenced() -> list[uuid.UUID]:
    return list(
        Effect.objects.filter(handler="sequenced").order_by("id").values_list("event_id", flat=True)
    )


def delivery(row: OutboxEvent, handler: str = HANDLER) -> ProcessedEvent | None:
    return ProcessedEvent.objects.filter(event_id=row.event_id, handler=handler).first()


# ----------------------------------------------------------------------- waiting


@pytest.mark.django_db
def test_a_follower_waits_without_spending_an_attempt_then_runs_after_its_predecessor() -> None:
    first, second = write([("1", 1), ("1", 2)])

    with pytest.raises(Requeued) as requeued:
        run_handler_task(StandInTask(), message(second), HANDLER)
    options = requeued.value.options
    assert options["countdown"] == ORDERED_POLL[0]
    # Its own limit, never None (Celery's None means its default of 3 retries).
    assert options["max_retries"] == celery_retry_limit(10, ordered_polls(timedelta(minutes=1)))
    assert options["kwargs"] == {"waits": 1, "waited": 1}
    assert delivery(second) is None  # no row: nothing recorded, no attempt spent
    assert sequenced() == []

    assert run_handler_task(StandInTask(), message(first), HANDLER) is True
    # The re-queued copy runs now; Celery counts its one retry, which is no failure.
    assert run_handler_task(StandInTask(retries=1), message(second), HANDLER, **options["kwargs"])
    assert sequenced() == [first.event_id, second.event_id]
    row = delivery(second)
    assert row is not None and (row.status, row.attempts) == ("succeeded", 1)


@pytest.mark.django_db
def test_the_re_queue_delay_grows_to_its_cap() -> None:
    _, second = write([("1", 1), ("1", 2)])
    countdowns = []
    for waits in range(8):
        with pytest.raises(Requeued) as requeued:
            run_handler_task(
                StandInTask(retries=waits), message(second), HANDLER, None, waits, waits
            )
        countdowns.append(requeued.value.options["countdown"])
    assert countdowns == sorted(countdowns)
    assert countdowns[0] == ORDERED_POLL[0] and countdowns[-1] == ORDERED_POLL[1]


@pytest.mark.django_db
def test_events_without_an_aggregate_and_first_events_are_not_held() -> None:
    (first,) = write([("1", 1)])
    assert run_handler_task(StandInTask(), message(first), HANDLER) is True
    loose = OutboxEvent.objects.create(
        event_id=uuid.uuid4(),
        event_type=SEQUENCED,
        payload={"order_id": 0, "seq": 5},
        headers={"schema_version": 1},
    )
    assert run_handler_task(StandInTask(), message(loose), HANDLER) is True
    assert sequenced() == [first.event_id, loose.event_id]


@pytest.mark.django_db
def test_the_predecessor_is_the_previous_event_this_handler_handles() -> None:
    # Version 2 is another event type: the handler's predecessor of v3 is v1.
    first, third = write([("1", 1), ("1", 3)])
    OutboxEvent.objects.create(
        event_id=uuid.uuid4(),
        event_type="orders.cancelled",
        aggregate_type="testapp.order",
        aggregate_id="1",
        aggregate_version=2,
        payload={"order_id": 1},
    )
    assert run_handler_task(StandInTask(), message(first), HANDLER) is True
    assert run_handler_task(StandInTask(), message(third), HANDLER) is True
    # Two events of one version: record order decides.
    same_a, same_b = write([("1", 4), ("1", 4)])
    with pytest.raises(Requeued):
        run_handler_task(StandInTask(), message(same_b), HANDLER)
    assert run_handler_task(StandInTask(), message(same_a), HANDLER) is True
    assert run_handler_task(StandInTask(), message(same_b), HANDLER) is True
    assert sequenced() == [first.event_id, third.event_id, same_a.event_id, same_b.event_id]


# ----------------------------------------------------------------------- blocked


@pytest.mark.django_db
def test_after_ordered_wait_the_delivery_is_blocked_and_its_predecessor_wakes_it(
    settings: Any,
) -> None:
    settings.DJANGO_UOW = {"ORDERED_WAIT": 30}
    first, second, third = write([("1", 1), ("1", 2), ("1", 3)])
    # Waited its ORDERED_WAIT: as many re-queues as add up to 30 s (counted, not timed).
    waited = ordered_polls(timedelta(seconds=30))
    for row in (third, second):
        task = StandInTask(retries=waited)
        assert run_handler_task(task, message(row), HANDLER, None, waited, waited) is False
    for row, before in ((second, first), (third, second)):
        blocked = delivery(row)
        assert blocked is not None
        assert (blocked.status, blocked.attempts) == ("blocked", 0)
        assert str(before.event_id) in blocked.last_error
    assert sequenced() == []

    woken: list[tuple[str, Envelope]] = []
    assert run_handler(
        registry.get(HANDLER), first.to_envelope(), wake=lambda h, e: woken.append((h.name, e))
    )
    # One follower at a time: the next blocked one, taken back as published.
    assert [(name, e.event_id) for name, e in woken] == [(HANDLER, second.event_id)]
    assert delivery(second).status == "published"  # type: ignore[union-attr]
    assert delivery(third).status == "blocked"  # type: ignore[union-attr]

    # In-process (no wake callback), the woken delivery runs, then the chain behind it.
    assert run_handler(registry.get(HANDLER), second.to_envelope())
    assert sequenced() == [first.event_id, second.event_id, third.event_id]
    assert delivery(third).status == "succeeded"  # type: ignore[union-attr]


@pytest.mark.django_db
def test_inline_predecessor_success_runs_the_blocked_chain() -> None:
    first, second, third = write([("1", 1), ("1", 2), ("1", 3)])
    handler = registry.get(HANDLER)
    assert run_handler(handler, third.to_envelope()) is False
    assert run_handler(handler, second.to_envelope()) is False
    assert [delivery(r).status for r in (second, third)] == ["blocked", "blocked"]  # type: ignore[union-attr]
    assert run_handler(handler, first.to_envelope())
    assert sequenced() == [first.event_id, second.event_id, third.event_id]


@pytest.mark.django_db
def test_a_dead_predecessor_blocks_only_this_handler_and_this_aggregate(
    admin_client: Client, temp_handlers: list[str], settings: Any
) -> None:
    settings.DJANGO_UOW = {"ORDERED_WAIT": 30, "MAX_ATTEMPTS": 1}
    a1, a2, b1, b2 = write([("1", 1), ("1", 2), ("2", 1), ("2", 2)])
    other: list[uuid.UUID] = []

    @event_handler(OrderSequenced, name="t.unordered")
    def unordered(event: OrderSequenced, envelope: Envelope) -> None:
        other.append(envelope.event_id)

    temp_handlers.append("t.unordered")

    def failing(event: OrderSequenced, envelope: Envelope) -> None:
        raise ValueError("sequence store is down")

    with swapped(failing), pytest.raises(ValueError, match="sequence store is down"):
        run_handler_task(StandInTask(), message(a1), HANDLER)
    assert delivery(a1).status == "failed"  # type: ignore[union-attr]

    waited = ordered_polls(timedelta(seconds=30))
    assert run_handler_task(StandInTask(), message(a2), HANDLER, None, waited, waited) is False
    assert delivery(a2).status == "blocked"  # type: ignore[union-attr]
    # The other aggregate and the other handler go on.
    for row in (b1, b2):
        assert run_handler_task(StandInTask(), message(row), HANDLER) is True
    for row in (a1, a2):
        assert run_handler_task(StandInTask(), message(row), "t.unordered") is True
    assert sequenced() == [b1.event_id, b2.event_id]
    assert other == [a1.event_id, a2.event_id]

    listing = reverse("admin:django_uow_processedevent_changelist")
    page = admin_client.get(listing, {"status__exact": "blocked"}).content.decode()
    assert page.count('uow-delivery-blocked">') == 1
    assert str(a2.event_id)[:8] in page
    detail = admin_client.get(
        reverse("admin:django_uow_processedevent_change", args=[delivery(a2).pk])  # type: ignore[union-attr]
    ).content.decode()
    assert str(a1.event_id) in detail and "aggregate order" in detail


@pytest.mark.django_db
def test_inline_relay_runs_an_ordered_handler_in_order(settings: Any) -> None:
    settings.DJANGO_UOW = {**INLINE}
    specs = [(str(agg), version) for version in (1, 2, 3) for agg in (1, 2)]
    rows = write(specs, status="pending")
    relay_batch()
    assert sequenced() == [r.event_id for r in rows]
    assert set(ProcessedEvent.objects.values_list("status", flat=True)) == {"succeeded"}


# ----------------------------------------------------------------------- the race


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_a_follower_never_passes_a_predecessor_whose_success_is_not_committed() -> None:
    """v1's handler holds its transaction open (its row already says succeeded) while v2
    runs: v2 must not run before v1 commits."""
    import threading

    first, second = write([("7", 1), ("7", 2)])
    inside = threading.Event()
    release = threading.Event()
    body = registry.get(HANDLER).func

    def slow(event: OrderSequenced, envelope: Envelope) -> None:
        if envelope.event_id == first.event_id:
            inside.set()
            release.wait(10)
        body(event, envelope)

    outcome: list[Any] = []

    def run_first() -> None:
        try:
            outcome.append(run_handler(registry.get(HANDLER), first.to_envelope()))
        finally:
            connection.close()

    worker = threading.Thread(target=run_first)
    with swapped(slow):
        worker.start()
        assert inside.wait(10)
        follower: list[Any] = []

        def run_second() -> None:
            try:
                follower.append(run_handler_task(StandInTask(), message(second), HANDLER))
            except Requeued as exc:
                follower.append(exc)
            finally:
                connection.close()

        racer = threading.Thread(target=run_second)
        racer.start()
        racer.join(0.5)  # it either waits on v1's row lock or re-queues
        assert sequenced() == []
        release.set()
        worker.join(10)
        racer.join(10)
    assert outcome == [True]
    done = sequenced()
    assert done[0] == first.event_id
    if isinstance(follower[0], Requeued):
        assert done == [first.event_id]
    else:  # it waited on the lock and ran after v1's commit
        assert done == [first.event_id, second.event_id]


# ----------------------------------------------------------------------- the proof

AGGREGATES = 10
PER_AGGREGATE = 20


def start_worker() -> subprocess.Popen[bytes]:
    """A real worker, four threads, importing only what a deployed worker imports."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.worker_subprocess",
            connection.settings_dict["NAME"],
            "--pool=threads",
            "--concurrency=4",
            "--prefetch-multiplier=4",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=WARNING",
        ],
        env={**os.environ, "UOW_SEQUENCE_JITTER": "0.01"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_four_worker_threads_run_each_aggregate_in_version_order(celery_app: Any) -> None:
    # Each aggregate's versions in order, the aggregates shuffled together: neighbouring
    # tasks are often two versions of one aggregate, which four threads would reorder.
    shuffle = random.Random(14)
    queues = {agg: list(range(1, PER_AGGREGATE + 1)) for agg in range(1, AGGREGATES + 1)}
    specs: list[tuple[str, int]] = []
    while queues:
        agg = shuffle.choice(sorted(queues))
        specs.append((str(agg), queues[agg].pop(0)))
        if not queues[agg]:
            del queues[agg]
    rows = write(specs, status="pending")
    version_of = {r.event_id: (r.aggregate_id, r.aggregate_version) for r in rows}

    worker = start_worker()
    try:
        with override_settings(DJANGO_UOW={"RELAY_ON_COMMIT": False}):
            assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == len(rows)
            assert wait_for(lambda: len(sequenced()) >= len(rows), timeout=90), (
                f"{len(sequenced())} of {len(rows)} events handled"
            )
            time.sleep(1.0)  # a duplicate run would show up here
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)

    handled = sequenced()
    assert Counter(handled) == Counter({r.event_id: 1 for r in rows})  # each once
    runs: dict[str, list[int]] = defaultdict(list)
    for event_id in handled:
        agg, version = version_of[event_id]
        runs[agg].append(version)  # type: ignore[arg-type]
    assert dict(runs) == {
        str(a): list(range(1, PER_AGGREGATE + 1)) for a in range(1, AGGREGATES + 1)
    }
    statuses = Counter(
        ProcessedEvent.objects.filter(handler=HANDLER).values_list("status", flat=True)
    )
    assert statuses == {"succeeded": len(rows)}
    assert set(
        ProcessedEvent.objects.filter(handler=HANDLER).values_list("attempts", flat=True)
    ) == {1}


# ----------------------------------------------------------------------- backfill


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_backfill_while_the_relay_runs_applies_each_event_once_in_order(settings: Any) -> None:
    """A new ordered handler is backfilled over retained events while a relay delivers
    the events writers keep committing: every event is applied once, each aggregate's
    in version order."""
    import io
    import threading

    from django.core.management import call_command

    settings.DJANGO_UOW = {**INLINE}
    aggregates, retained, fresh = 5, 6, 6
    # Retained events, relayed before the handler existed: no delivery row for it.
    old = write([(str(a), v) for v in range(1, retained + 1) for a in range(1, aggregates + 1)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def relay() -> None:
        try:
            while not stop.is_set():
                relay_pending()
                time.sleep(0.01)
            relay_pending()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    def writer() -> None:
        try:
            for version in range(retained + 1, retained + fresh + 1):
                for agg in range(1, aggregates + 1):
                    write([(str(agg), version)], status="pending")
                    time.sleep(0.005)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=relay), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("redeliver", "--handler", HANDLER, stdout=out, stderr=err)
    finally:
        threads[1].join(60)
        # Let the relay drain what the writer committed, then stop it.
        wait_for(lambda: not OutboxEvent.objects.filter(status="pending").exists(), timeout=60)
        stop.set()
        threads[0].join(60)
    assert errors == []

    rows = list(OutboxEvent.objects.filter(event_type=SEQUENCED))
    assert len(rows) == aggregates * (retained + fresh)
    assert {r.status for r in rows} == {"dispatched"}
    deliveries = Counter(
        ProcessedEvent.objects.filter(handler=HANDLER).values_list("status", flat=True)
    )
    assert deliveries == {"succeeded": len(rows)}
    handled = sequenced()
    assert Counter(handled) == Counter({r.event_id: 1 for r in rows})  # each applied once
    version_of = {r.event_id: (r.aggregate_id, r.aggregate_version) for r in rows}
    runs: dict[str, list[int]] = defaultdict(list)
    for event_id in handled:
        agg, version = version_of[event_id]
        runs[agg].append(version)  # type: ignore[arg-type]
    expected = list(range(1, retained + fresh + 1))
    assert dict(runs) == {str(a): expected for a in range(1, aggregates + 1)}

    # The command listed the retained events (and any new one already relayed), showed
    # its progress and ended with a summary.
    lines = out.getvalue().splitlines()
    listed = len(lines) - 1
    assert listed >= len(old)
    assert lines[-1].startswith(f"redelivered {listed}: ")
    assert err.getvalue().splitlines()[-1] == f"progress: {listed}/{listed} (100%)"
    # Run again: everything is done, nothing is applied twice.
    again = io.StringIO()
    call_command("redeliver", "--handler", HANDLER, stdout=again, stderr=io.StringIO())
    assert again.getvalue().splitlines()[-1] == f"redelivered {len(rows)}: {len(rows)} skipped"
    assert len(sequenced()) == len(rows)


@pytest.mark.django_db
def test_blocked_deliveries_are_counted_and_keep_their_event(settings: Any) -> None:
    from django_uow.delivery.rows import consumer_lag
    from django_uow.relay import prune_outbox

    _, second = write([("1", 1), ("1", 2)])
    assert run_handler(registry.get(HANDLER), second.to_envelope()) is False
    assert consumer_lag().blocked == 1
    long_ago = timezone.now() - timedelta(days=30)
    OutboxEvent.objects.update(dispatched_at=long_ago)
    prune_outbox(older_than=timedelta(days=1))
    # The blocked delivery's event stays (it still has to run); its predecessor has no
    # delivery row, so nothing holds it back from retention.
    assert list(OutboxEvent.objects.values_list("event_id", flat=True)) == [second.event_id]


@pytest.mark.django_db
def test_retention_keeps_an_ordered_predecessors_row_while_its_event_is_in_the_outbox() -> None:
    first, second = write([("1", 1), ("1", 2)])
    # Events kept longer than their inbox rows (RETENTION None for an audit log).
    OutboxEvent.objects.filter(pk=first.pk).update(created_at=timezone.now() - timedelta(days=31))
    # An old predecessor without a delivery row has not been delivered: it is waited for.
    with pytest.raises(Requeued):
        run_handler_task(StandInTask(), message(second), HANDLER)
    assert run_handler_task(StandInTask(), message(first), HANDLER) is True
    ProcessedEvent.objects.filter(event_id=first.event_id).update(
        processed_at=timezone.now() - timedelta(days=31)
    )
    other = ProcessedEvent.objects.create(
        event_id=uuid.uuid4(),
        handler="testapp.record_cancelled",
        processed_at=timezone.now() - timedelta(days=31),
    )
    # The unordered handler's old row goes; the ordered one's stays while its event does.
    assert prune_inbox() == 1
    assert not ProcessedEvent.objects.filter(pk=other.pk).exists()
    assert delivery(first).status == "succeeded"  # type: ignore[union-attr]
    assert run_handler_task(StandInTask(), message(second), HANDLER) is True
    assert sequenced() == [first.event_id, second.event_id]
    OutboxEvent.objects.filter(pk=first.pk).delete()
    assert prune_inbox() == 1  # its event is gone: nothing waits on it any more
    assert delivery(first) is None


@pytest.mark.django_db
def test_a_scheduled_event_due_later_is_not_waited_for() -> None:
    first, second, third = write([("1", 1), ("1", 2), ("1", 3)])
    # v2 was recorded with a due time an hour away: the relay delivers v3 before it.
    OutboxEvent.objects.filter(pk=second.pk).update(
        deliver_at=timezone.now() + timedelta(hours=1), status="pending"
    )
    assert run_handler_task(StandInTask(), message(first), HANDLER) is True
    assert run_handler_task(StandInTask(), message(third), HANDLER) is True
    # When v2 comes due, it waits only for what was due before it.
    assert run_handler_task(StandInTask(), message(second), HANDLER) is True
    assert sequenced() == [first.event_id, third.event_id, second.event_id]
    # A scheduled event due before a later one is waited for like any other.
    fourth, fifth = write([("1", 4), ("1", 5)])
    OutboxEvent.objects.filter(pk=fourth.pk).update(
        deliver_at=fifth.occurred_at - timedelta(seconds=1)
    )
    with pytest.raises(Requeued):
        run_handler_task(StandInTask(), message(fifth), HANDLER)
