"""``outbox_status()`` and ``manage.py outbox_status``: counts per status and relay lag."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import django_uow.ops.status
from django_uow.models import OutboxEvent
from django_uow.ops.status import outbox_status

pytestmark = pytest.mark.django_db

Status = OutboxEvent.Status


@pytest.fixture
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> datetime:
    now = timezone.now().replace(microsecond=0)
    monkeypatch.setattr(django_uow.ops.status.timezone, "now", lambda: now)
    return now


def make_event(status: str, created_at: datetime, using: str = "default", **kw: Any) -> OutboxEvent:
    return OutboxEvent.objects.using(using).create(
        event_id=uuid.uuid4(),
        event_type="testapp.OrderPlaced",
        status=status,
        created_at=created_at,
        **kw,
    )


def test_empty_outbox(frozen_now: datetime) -> None:
    assert outbox_status() == {
        "database": "default",
        "counts": {"pending": 0, "dispatched": 0, "failed": 0, "discarded": 0},
        "dispatched_capped": False,
        "discarded_capped": False,
        "oldest_pending_created_at": None,
        "lag_seconds": 0.0,
        "scheduled": 0,
    }


def test_counts_and_lag_from_the_oldest_pending_event(frozen_now: datetime) -> None:
    oldest_pending = frozen_now - timedelta(minutes=90)
    make_event(Status.FAILED, frozen_now - timedelta(days=3))  # older, but not owed by the relay
    make_event(Status.DISPATCHED, frozen_now - timedelta(days=2), dispatched_at=frozen_now)
    make_event(Status.PENDING, oldest_pending)
    make_event(Status.PENDING, frozen_now - timedelta(minutes=1))
    make_event(Status.DISCARDED, frozen_now - timedelta(days=4), discarded_at=frozen_now)
    status = outbox_status()
    assert status["counts"] == {"pending": 2, "dispatched": 1, "failed": 1, "discarded": 1}
    assert status["lag_seconds"] == 5400.0
    assert status["oldest_pending_created_at"] == oldest_pending.isoformat()


def test_one_cheap_statement_reads_counts_and_the_oldest_pending() -> None:
    make_event(Status.PENDING, timezone.now())
    with CaptureQueriesContext(connection) as ctx:
        outbox_status()
    sql = [q["sql"] for q in ctx.captured_queries]
    assert len(sql) == 1, sql  # one statement: one snapshot
    # pending, scheduled (pending, not due yet), failed, dispatched and discarded ...
    assert sql[0].count("COUNT(*)") == 5
    assert sql[0].count("LIMIT 10001") == 2  # ... the last two capped
    assert "MIN(" in sql[0] and "LIMIT 100000" in sql[0]  # the oldest, through the due order


def test_a_scheduled_event_is_counted_apart_and_adds_no_lag_until_it_is_due(
    frozen_now: datetime,
) -> None:
    later = frozen_now + timedelta(hours=3)
    make_event(Status.PENDING, frozen_now - timedelta(days=1), deliver_at=later, available_at=later)
    status = outbox_status()
    assert (status["counts"]["pending"], status["scheduled"]) == (1, 1)
    assert status["lag_seconds"] == 0.0  # recorded a day ago, but owed only in 3 hours
    # Once due, its lag counts from its due time, not from when it was recorded.
    due = frozen_now - timedelta(minutes=10)
    OutboxEvent.objects.update(deliver_at=due, available_at=due)
    status = outbox_status()
    assert (status["counts"]["pending"], status["scheduled"]) == (1, 0)
    assert status["lag_seconds"] == 600.0
    assert status["oldest_pending_created_at"] == due.isoformat()


def test_nothing_pending_is_read_in_the_same_statement(frozen_now: datetime) -> None:
    make_event(Status.FAILED, frozen_now)
    with CaptureQueriesContext(connection) as ctx:
        status = outbox_status()
    assert len(ctx.captured_queries) == 1
    assert status["counts"] == {"pending": 0, "dispatched": 0, "failed": 1, "discarded": 0}
    assert (status["oldest_pending_created_at"], status["lag_seconds"]) == (None, 0.0)


def test_inside_a_callers_transaction_it_is_still_one_statement(
    django_assert_num_queries: Any,
) -> None:
    from django.db import transaction

    make_event(Status.PENDING, timezone.now())
    with transaction.atomic(), django_assert_num_queries(1):
        assert outbox_status()["counts"]["pending"] == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_concurrent_relay_never_makes_pending_and_lag_disagree() -> None:
    """A writer flips events between pending and dispatched as fast as it can (a relay
    acknowledging, new commits arriving); every status read must be self-consistent:
    pending > 0 has the created_at of a pending row, and nothing pending has no lag."""
    import threading

    from django.db import connections

    created = timezone.now() - timedelta(minutes=5)
    ids = [make_event(Status.PENDING, created).pk for _ in range(3)]
    stop = threading.Event()
    flips = [0]

    def churn() -> None:
        try:
            events = OutboxEvent.objects.filter(pk__in=ids)
            while not stop.is_set():
                events.update(status=Status.DISPATCHED)
                events.update(status=Status.PENDING)
                flips[0] += 1
        finally:
            connections.close_all()

    writer = threading.Thread(target=churn)
    writer.start()
    seen: set[tuple[bool, bool]] = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status = outbox_status()
            pending = status["counts"]["pending"]
            oldest = status["oldest_pending_created_at"]
            assert pending in (0, 3), status  # one UPDATE flips all three at once
            assert (pending > 0) == (oldest is not None), status
            if pending:
                assert oldest == created.isoformat() and status["lag_seconds"] >= 300, status
            seen.add((pending > 0, oldest is not None))
    finally:
        stop.set()
        writer.join(timeout=10)
    assert flips[0] > 50, "the writer hardly ran: the test proved nothing"
    assert seen == {(True, True), (False, False)}, "both states were observed"


def test_dispatched_count_is_capped() -> None:
    for _ in range(3):
        make_event(Status.DISPATCHED, timezone.now(), dispatched_at=timezone.now())
    capped = outbox_status(dispatched_cap=2)
    assert capped["counts"]["dispatched"] == 2 and capped["dispatched_capped"] is True
    exact = outbox_status(dispatched_cap=None)
    assert exact["counts"]["dispatched"] == 3 and exact["dispatched_capped"] is False


def test_command_text_output(frozen_now: datetime) -> None:
    make_event(Status.PENDING, frozen_now - timedelta(seconds=30))
    make_event(Status.FAILED, frozen_now)
    out = StringIO()
    call_command("outbox_status", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "outbox events       pending: 1  failed: 1  dispatched: 0  discarded: 0"
    assert lines[1] == "handler deliveries  owed: 0  failed: 0  blocked: 0"
    assert lines[2].startswith("relay lag: 30.0s (oldest pending: ")


def test_command_json_output(frozen_now: datetime) -> None:
    make_event(Status.PENDING, frozen_now - timedelta(seconds=12))
    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["counts"] == {"pending": 1, "dispatched": 0, "failed": 0, "discarded": 0}
    assert data["lag_seconds"] == 12.0
    assert data["database"] == "default"


@pytest.mark.django_db(databases=["default", "other"])
def test_command_database_option() -> None:
    make_event(Status.PENDING, timezone.now())
    make_event(Status.FAILED, timezone.now(), using="other")
    out = StringIO()
    call_command("outbox_status", "--json", "--database", "other", stdout=out)
    data = json.loads(out.getvalue())
    assert data["database"] == "other"
    assert data["counts"] == {"pending": 0, "dispatched": 0, "failed": 1, "discarded": 0}


def test_command_unknown_database() -> None:
    with pytest.raises(CommandError, match="Unknown database alias 'nope'"):
        call_command("outbox_status", "--database", "nope")
