"""The relay's direct mode: claim, publish and mark dispatched in one transaction.

The fault tests (outage, SIGKILL, concurrent relays) run in both modes in
test_relay_faults.py; here: which mode is chosen, what a batch writes, and how failures
are settled inside the transaction.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from django_uow import RelayError
from django_uow.checks import check_settings
from django_uow.models import OutboxEvent
from django_uow.publishers import CeleryPublisher, InlinePublisher, RedisStreamPublisher
from django_uow.relay import relay_batch
from django_uow.relay.batch import relay_mode
from tests.support.relay import RaisingPublisher, RecordingPublisher, interleaved, make_rows

pytestmark = pytest.mark.django_db


@pytest.fixture
def direct(settings: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_MODE": "direct"}


def writes_rows(sql: str) -> bool:
    """An UPDATE statement, or the one-statement claim (``WITH ... UPDATE ... RETURNING``);
    not a ``SELECT ... FOR UPDATE``."""
    text = sql.lstrip().upper()
    return text.startswith("UPDATE") or (text.startswith("WITH") and ") UPDATE " in text)


def test_auto_relays_directly_only_for_fast_publishers_on_databases_that_skip_locks() -> None:
    skip_locked = connection.features.has_select_for_update_skip_locked
    assert relay_mode([RedisStreamPublisher()], "default") == ("direct" if skip_locked else "lease")
    assert relay_mode([CeleryPublisher()], "default") == "lease"
    assert relay_mode([InlinePublisher()], "default") == "lease"
    # One slow publisher among fast ones keeps the lease for the batch.
    assert relay_mode([RedisStreamPublisher(), CeleryPublisher()], "default") == "lease"


@pytest.mark.parametrize("mode", ["lease", "direct"])
def test_the_setting_overrides_the_publishers(settings: Any, mode: str) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_MODE": mode}
    assert relay_mode([RedisStreamPublisher()], "default") == mode
    assert relay_mode([CeleryPublisher()], "default") == mode


@pytest.mark.parametrize("value", ["fast", "", None, True])
def test_a_bad_relay_mode_is_refused_by_its_check(settings: Any, value: Any) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_MODE": value}
    assert "django_uow.E080" in {m.id for m in check_settings()}


@pytest.mark.parametrize(("mode", "writes"), [("lease", 2), ("direct", 1)])
def test_a_published_batch_writes_each_row_once_in_the_direct_mode(
    settings: Any, mode: str, writes: int
) -> None:
    """Lease: the claim's UPDATE and the acknowledgement's. Direct: the claim marks the
    rows dispatched, and a batch that fully succeeds writes nothing more."""
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "RELAY_MODE": mode}
    make_rows(interleaved(3, 4))
    publisher = RecordingPublisher()
    with CaptureQueriesContext(connection) as queries:
        assert relay_batch(publishers=[publisher]).dispatched == 12
    updates = [q["sql"] for q in queries.captured_queries if writes_rows(q["sql"])]
    assert len(updates) == writes, updates
    rows = OutboxEvent.objects.all()
    assert {(r.status, r.attempts, r.claimed_by, r.claimed_until) for r in rows} == {
        ("dispatched", 1, "", None)
    }
    assert all(r.dispatched_at is not None for r in rows)


def test_direct_failures_are_written_back_in_the_same_transaction(direct: None) -> None:
    make_rows([("1", "a"), ("1", "b"), ("2", "c")])
    publisher = RecordingPublisher(fail={"a": ValueError("refused")})
    result = relay_batch(publishers=[publisher])
    assert (result.dispatched, result.retried, result.handed_back) == (1, 1, 1)
    by_reason = {r.payload["reason"]: r for r in OutboxEvent.objects.all()}
    failed, follower, other = by_reason["a"], by_reason["b"], by_reason["c"]
    assert (failed.status, failed.attempts, failed.dispatched_at) == ("pending", 1, None)
    assert "refused" in failed.last_error and failed.available_at > failed.created_at
    # The follower went out but must not be marked before its head: back, attempt refunded.
    assert (follower.status, follower.attempts, follower.dispatched_at) == ("pending", 0, None)
    assert (other.status, other.attempts) == ("dispatched", 1)


def test_a_direct_outage_rolls_the_claim_back(direct: None) -> None:
    make_rows(interleaved(2, 3))
    with pytest.raises(RelayError, match="Could not reach the broker"):
        relay_batch(publishers=[RaisingPublisher(ConnectionError("refused"))])
    rows = OutboxEvent.objects.all()
    assert {(r.status, r.attempts, r.claimed_by, r.dispatched_at) for r in rows} == {
        ("pending", 0, "", None)
    }
