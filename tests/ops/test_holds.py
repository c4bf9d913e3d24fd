"""Why a pending event waits, and which aggregates a failing event blocks: in the library,
in ``manage.py outbox_status`` and in the admin."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_uow.models import OutboxEvent
from django_uow.ops.holds import blocked_summary, failing_heads, wait_reasons
from django_uow.ops.status import outbox_report

pytestmark = pytest.mark.django_db

Status = OutboxEvent.Status


def event(aggregate_id: str = "1", **fields: Any) -> OutboxEvent:
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": "testapp.OrderPlaced",
        "aggregate_type": "testapp.order",
        "aggregate_id": aggregate_id,
        "payload": {"n": 1},
    }
    values.update(fields)
    return OutboxEvent.objects.create(**values)


def reason_of(target: OutboxEvent, now: datetime | None = None) -> Any:
    target.refresh_from_db()
    return wait_reasons([target], "default", now=now)[target.pk]


# -- reasons -----------------------------------------------------------------------------


def test_due_now_when_nothing_holds_it_back() -> None:
    first = event()
    assert reason_of(first).kind == "due"
    assert reason_of(first).text == "due now"


def test_backing_off_names_the_next_try() -> None:
    later = timezone.now() + timedelta(minutes=5)
    waiting = event(attempts=2, available_at=later, last_error="boom")
    reason = reason_of(waiting)
    assert reason.kind == "backing_off"
    assert reason.until == later
    assert reason.text == f"next try at {later.isoformat(timespec='seconds')} (backing off)"


def test_leased_names_the_relay_and_the_lease_end() -> None:
    until = timezone.now() + timedelta(seconds=30)
    leased = event(claimed_by="relay-7", claimed_until=until, attempts=1)
    reason = reason_of(leased)
    assert (reason.kind, reason.relay, reason.until) == ("leased", "relay-7", until)
    assert "leased by relay relay-7 until" in reason.text


def test_an_expired_lease_is_not_a_reason() -> None:
    expired = event(claimed_by="dead-relay", claimed_until=timezone.now() - timedelta(seconds=1))
    assert reason_of(expired).kind == "due"


def test_behind_a_failed_event_of_its_aggregate() -> None:
    head = event(status=Status.FAILED, attempts=10, last_error="ValueError: no")
    event(aggregate_id="1")  # a pending event between them
    waiting = event()
    other_aggregate = event(aggregate_id="2")
    reason = reason_of(waiting)
    assert reason.kind == "blocked"
    assert reason.blocker_event_id == head.event_id and reason.blocker_pk == head.pk
    assert reason.text == f"behind failed event {head.event_id} of its aggregate"
    assert reason_of(other_aggregate).kind == "due"


def test_behind_an_earlier_event_that_is_backing_off() -> None:
    next_try = timezone.now() + timedelta(minutes=1)
    head = event(attempts=1, available_at=next_try)
    waiting = event()
    reason = reason_of(waiting)
    assert (reason.kind, reason.blocker_event_id, reason.until) == (
        "behind",
        head.event_id,
        next_try,
    )
    assert "whose next try is at" in reason.text


def test_behind_an_earlier_event_leased_to_a_relay() -> None:
    head = event(claimed_by="r1", claimed_until=timezone.now() + timedelta(seconds=20))
    waiting = event()
    reason = reason_of(waiting)
    assert (reason.kind, reason.blocker_event_id, reason.relay) == ("behind", head.event_id, "r1")


def test_a_failed_event_later_in_the_aggregate_does_not_block_earlier_ones() -> None:
    first = event()
    event(status=Status.FAILED)
    assert reason_of(first).kind == "due"


def test_dispatched_predecessors_do_not_hold_anything_back() -> None:
    event(status=Status.DISPATCHED, dispatched_at=timezone.now())
    assert reason_of(event()).kind == "due"


def test_events_without_aggregate_and_non_pending_events() -> None:
    loose = event(aggregate_id="", aggregate_type="")
    failed = event(status=Status.FAILED)
    reasons = wait_reasons(
        [OutboxEvent.objects.get(pk=loose.pk), OutboxEvent.objects.get(pk=failed.pk)], "default"
    )
    assert reasons == {loose.pk: reasons[loose.pk]}
    assert reasons[loose.pk].kind == "due"


def test_reasons_for_many_events_take_two_queries(
    django_assert_num_queries: Callable[..., Any],
) -> None:
    for agg in range(30):
        event(aggregate_id=str(agg), status=Status.FAILED)
        event(aggregate_id=str(agg))
        event(aggregate_id=str(agg), attempts=1, available_at=timezone.now() + timedelta(hours=1))
    rows = list(OutboxEvent.objects.all())
    with django_assert_num_queries(2):
        reasons = wait_reasons(rows, "default")
    assert len(reasons) == 60
    assert {r.kind for r in reasons.values()} == {"blocked"}


# -- blocked aggregates ------------------------------------------------------------------


def make_blocked_outbox() -> dict[str, OutboxEvent]:
    """Two blocked aggregates, and rows that look failing but block nothing."""
    soon = timezone.now() + timedelta(minutes=10)
    dead = event("A", status=Status.FAILED, attempts=10, last_error="KeyError: 'sku'")
    for _ in range(3):
        event("A")
    event("A", status=Status.FAILED)  # behind the head: counted as waiting, not a head
    retrying = event("B", attempts=3, available_at=soon, last_error="TimeoutError")
    event("B")
    event("C", status=Status.DISPATCHED, dispatched_at=timezone.now())
    event("C", attempts=2)  # failed once, due again now: not blocking
    event("D")  # due head
    event("D", status=Status.FAILED)  # failed, but behind a due event: not a head yet
    event("", aggregate_type="", status=Status.FAILED)  # no aggregate: blocks nothing
    return {"dead": dead, "retrying": retrying}


def test_a_scheduled_event_not_due_yet_waits_for_its_time_and_holds_nothing_back() -> None:
    later = timezone.now() + timedelta(hours=1)
    scheduled = event(deliver_at=later, available_at=later)
    after = event()  # recorded after it, due now
    reason = reason_of(scheduled)
    assert (reason.kind, reason.until) == ("scheduled", later)
    assert reason.text == f"scheduled for {later.isoformat(timespec='seconds')}"
    assert reason_of(after).kind == "due"
    # Once it is due, it is an owed event like any other, recorded before "after".
    assert reason_of(after, now=later + timedelta(seconds=1)).kind == "behind"


def test_a_scheduled_event_not_due_yet_hides_no_failing_head() -> None:
    later = timezone.now() + timedelta(hours=1)
    event(deliver_at=later, available_at=later)
    head = event(status=Status.FAILED, attempts=5)
    event()
    event(deliver_at=later + timedelta(hours=1), available_at=later + timedelta(hours=1))
    (found,) = failing_heads("default")
    assert found.pk == head.pk
    assert found.waiting == 1  # the scheduled events wait for their time, not for it


def test_failing_heads_and_how_many_wait_behind_each() -> None:
    rows = make_blocked_outbox()
    heads = list(failing_heads("default"))
    assert [(h.pk, h.waiting) for h in heads] == [(rows["dead"].pk, 4), (rows["retrying"].pk, 1)]


def test_blocked_summary_lists_the_top_heads() -> None:
    rows = make_blocked_outbox()
    summary = blocked_summary("default", top=1)
    assert summary["blocked_aggregates"] == 2
    [head] = summary["blocking_heads"]
    assert head == {
        "event_id": str(rows["dead"].event_id),
        "event_type": "testapp.OrderPlaced",
        "aggregate_type": "testapp.order",
        "aggregate_id": "A",
        "aggregate_version": None,
        "status": "failed",
        "attempts": 10,
        "next_try_at": None,
        "waiting": 4,
        "last_error": "KeyError: 'sku'",
    }


def test_blocked_summary_caps_the_error_text() -> None:
    event("A", status=Status.FAILED, last_error="x" * 1_000_000)
    [head] = blocked_summary("default")["blocking_heads"]
    assert len(head["last_error"]) == 500 and head["last_error"].endswith("\u2026")


# -- outbox_status -----------------------------------------------------------------------


def test_report_json_says_why_the_oldest_waits_and_what_blocks() -> None:
    rows = make_blocked_outbox()
    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["counts"] == {"pending": 7, "dispatched": 1, "failed": 4, "discarded": 0}
    assert data["blocked_aggregates"] == 2
    assert [h["event_id"] for h in data["blocking_heads"]] == [
        str(rows["dead"].event_id),
        str(rows["retrying"].event_id),
    ]
    assert [h["waiting"] for h in data["blocking_heads"]] == [4, 1]
    assert data["blocking_heads"][1]["next_try_at"] is not None
    oldest = data["oldest_pending"]
    first_pending = OutboxEvent.objects.filter(status=Status.PENDING).order_by("id").first()
    assert first_pending is not None
    assert oldest["event_id"] == str(first_pending.event_id)
    assert oldest["waiting_reason"]["kind"] == "blocked"
    assert oldest["waiting_reason"]["blocker_event_id"] == str(rows["dead"].event_id)


def test_report_of_an_empty_outbox() -> None:
    report = outbox_report()
    assert report["oldest_pending"] is None
    assert report["blocked_aggregates"] == 0 and report["blocking_heads"] == []


def test_report_text_names_blocked_aggregates() -> None:
    rows = make_blocked_outbox()
    out = StringIO()
    call_command("outbox_status", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[4].startswith("oldest pending: ") and "behind failed event" in lines[4]
    assert lines[5] == "blocked aggregates: 2"
    assert lines[6].startswith(
        f"  testapp.order:A: 4 waiting behind failed event {rows['dead'].event_id}"
    )
    assert lines[6].endswith("(testapp.OrderPlaced, 10 attempts): KeyError: 'sku'")
    assert "next try at" in lines[7]


def test_report_text_keeps_control_characters_out_of_the_terminal() -> None:
    event("A", status=Status.FAILED, last_error="boom\x1b[2J\nsecond line")
    out = StringIO()
    call_command("outbox_status", stdout=out)
    text = out.getvalue()
    assert "\x1b" not in text and "second line" not in text
    [head] = [line for line in text.splitlines() if line.startswith("  testapp.order:A: ")]
    assert head.endswith(": boom?[2J")


# -- admin -------------------------------------------------------------------------------


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user(f"u{uuid.uuid4().hex[:8]}", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_list_column_says_why_with_a_link_to_the_blocker(admin_client: Client) -> None:
    head = event(status=Status.FAILED, attempts=10)
    behind = event()
    page = admin_client.get(reverse("admin:django_uow_outboxevent_changelist")).content.decode()
    link = reverse("admin:django_uow_outboxevent_change", args=[head.pk])
    assert f'behind failed event <a href="{link}">{str(head.event_id)[:8]}</a>' in page
    assert str(behind.event_id)[:8] in page
    assert 'id="outbox-count-blocked">1<' in page


def test_change_page_says_why_it_waits(admin_client: Client) -> None:
    head = event(attempts=1, available_at=timezone.now() + timedelta(minutes=3))
    behind = event()
    page = admin_client.get(
        reverse("admin:django_uow_outboxevent_change", args=[behind.pk])
    ).content.decode()
    assert f">{head.event_id}</a> of its aggregate, whose next try is at" in page
    own = admin_client.get(reverse("admin:django_uow_outboxevent_change", args=[head.pk]))
    assert "(backing off)" in own.content.decode()


def test_list_queries_stay_constant_with_reasons(
    admin_client: Client, django_assert_num_queries: Callable[..., Any]
) -> None:
    changelist = reverse("admin:django_uow_outboxevent_changelist")
    event("0", status=Status.FAILED)
    event("0")
    admin_client.get(changelist)  # session and content types warm
    with django_assert_num_queries(9):
        assert admin_client.get(changelist).status_code == 200
    for agg in range(1, 31):  # 92 rows: one page
        event(str(agg), status=Status.FAILED, last_error="x")
        event(str(agg), attempts=1, available_at=timezone.now() + timedelta(minutes=1))
        event(str(agg), claimed_by="r", claimed_until=timezone.now() + timedelta(minutes=1))
    with django_assert_num_queries(9):
        page = admin_client.get(changelist).content.decode()
    assert page.count("behind failed event") == 61


def test_blocked_view_lists_heads_with_counts_and_links() -> None:
    rows = make_blocked_outbox()
    viewer = staff_client("view_outboxevent")
    response = viewer.get(reverse("admin:django_uow_outboxevent_blocked"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "2 blocked aggregates" in page
    dead_link = reverse("admin:django_uow_outboxevent_change", args=[rows["dead"].pk])
    assert f'<a href="{dead_link}">{rows["dead"].event_id}</a>' in page
    assert '?q=testapp.order%3AA">4</a>' in page
    assert '?q=testapp.order%3AB">1</a>' in page
    assert page.index(str(rows["dead"].event_id)) < page.index(str(rows["retrying"].event_id))
    assert "KeyError: &#x27;sku&#x27;" in page


def test_blocked_view_needs_the_view_permission() -> None:
    url = reverse("admin:django_uow_outboxevent_blocked")
    assert staff_client().get(url).status_code == 403
    assert Client().get(url).status_code == 302


def test_blocked_view_escapes_and_caps_hostile_error_text(admin_client: Client) -> None:
    hostile = "<script>alert(1)</script>\ufffd" + "y" * 1_000_000
    event(status=Status.FAILED, last_error=hostile, aggregate_id="<b>x</b>")
    event(aggregate_id="<b>x</b>")
    page = admin_client.get(reverse("admin:django_uow_outboxevent_blocked")).content.decode()
    assert "<script>alert" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\ufffd" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert len(page) < 50_000


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_report_reads_one_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing event committed by another connection mid-report is not half-seen."""
    import threading

    from django.db import connection as conn

    import django_uow.ops.status

    real = django_uow.ops.status.blocked_summary

    def commit_elsewhere_then_read(*args: Any, **kwargs: Any) -> dict[str, Any]:
        def write() -> None:
            try:
                event("Z", status=Status.FAILED)
                event("Z")
            finally:
                conn.close()

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        return real(*args, **kwargs)

    monkeypatch.setattr(django_uow.ops.status, "blocked_summary", commit_elsewhere_then_read)
    report = outbox_report()
    assert report["counts"] == {"pending": 0, "dispatched": 0, "failed": 0, "discarded": 0}
    assert report["blocked_aggregates"] == 0
    assert OutboxEvent.objects.count() == 2  # committed, and seen by the next read
    assert outbox_report()["blocked_aggregates"] == 1


def test_event_page_escapes_and_caps_its_own_last_error(admin_client: Client) -> None:
    hostile = "<script>alert(1)</script>\ufffd" + "q" * 1_000_000
    failed = event(status=Status.FAILED, last_error=hostile)
    page = admin_client.get(
        reverse("admin:django_uow_outboxevent_change", args=[failed.pk])
    ).content.decode()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\ufffd" in page
    assert len(page) < 60_000
