"""The ``discarded`` status: terminal, never relayed, blocks nothing, pruned, counted."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from django_uow.models import OutboxEvent
from django_uow.ops.health import outbox_health
from django_uow.ops.holds import failing_heads, wait_reasons
from django_uow.ops.status import outbox_status
from django_uow.relay import claims as statements
from django_uow.relay.retention import prune_outbox
from tests.support.relay import make_rows

pytestmark = pytest.mark.django_db

Status = OutboxEvent.Status


def discard(row: OutboxEvent, when: datetime.datetime | None = None) -> None:
    OutboxEvent.objects.filter(pk=row.pk).update(
        status=Status.DISCARDED, discarded_at=when or timezone.now()
    )


def claim(portable: bool, **kw: Any) -> list[OutboxEvent]:
    now = timezone.now() + datetime.timedelta(seconds=1)
    if portable:
        return statements.claim_portable(
            using="default",
            relay_id="r",
            limit=10,
            lease=60,
            ordered=True,
            event_ids=None,
            now=now,
            **kw,
        )
    return statements.claim_batch(
        using="default", relay_id="r", limit=10, lease=60, ordered=True, now=now, **kw
    )


@pytest.mark.parametrize("portable", [False, True], ids=["one-statement", "portable"])
def test_a_discarded_event_is_never_claimed_and_blocks_nothing(portable: bool) -> None:
    if not portable and not statements.one_statement("default"):
        pytest.skip("this database has no one-statement claim")
    head, follower = make_rows([("1", "a"), ("1", "b")])
    OutboxEvent.objects.filter(pk=head.pk).update(status=Status.FAILED)
    assert claim(portable) == []  # a failed head blocks its aggregate
    discard(head)
    claimed = claim(portable)
    assert [row.pk for row in claimed] == [follower.pk]
    head.refresh_from_db()
    assert head.status == Status.DISCARDED and head.claimed_by == ""


def test_a_discarded_event_is_no_reason_to_wait_and_no_blocking_head() -> None:
    head, follower = make_rows([("1", "a"), ("1", "b")])
    OutboxEvent.objects.filter(pk=head.pk).update(status=Status.FAILED)
    assert failing_heads("default").count() == 1
    discard(head)
    assert failing_heads("default").count() == 0
    follower.refresh_from_db()
    assert wait_reasons([follower], "default")[follower.pk].kind == "due"


def test_discarded_events_are_pruned_by_retention_from_their_discard_time() -> None:
    old, recent, failed = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    now = timezone.now()
    discard(old, now - datetime.timedelta(days=8))
    discard(recent, now - datetime.timedelta(days=1))
    OutboxEvent.objects.filter(pk=failed.pk).update(status=Status.FAILED)
    assert prune_outbox(older_than=datetime.timedelta(days=7)) == 1
    assert set(OutboxEvent.objects.values_list("pk", flat=True)) == {recent.pk, failed.pk}


def test_discarded_events_are_counted_by_status_and_health() -> None:
    rows = make_rows([("1", "a"), ("2", "b"), ("3", "c")])
    discard(rows[0])
    discard(rows[1])
    status = outbox_status()
    assert status["counts"]["discarded"] == 2 and status["counts"]["pending"] == 1
    assert status["discarded_capped"] is False
    capped = outbox_status(dispatched_cap=1)
    assert capped["counts"]["discarded"] == 1 and capped["discarded_capped"] is True
    numbers = outbox_health()
    assert (numbers.pending, numbers.failed, numbers.discarded) == (1, 0, 2)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL index predicates")
def test_the_owed_index_covers_pending_and_failed_rows_only() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'uow_outbox_owed_idx'")
        (definition,) = cursor.fetchone()
    assert "'pending'" in definition and "'failed'" in definition
    assert "dispatched" not in definition and "discarded" not in definition
