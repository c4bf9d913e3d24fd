"""Dead-letter groups in the admin: grouping by cause, retry all, discard all."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_uow.models import DeliveryStatus, OutboxEvent, ProcessedEvent
from django_uow.ops.deadletters import dead_letter_groups, fingerprint, mask
from tests.admin.test_admin import client_for, make_event, staff, url

pytestmark = pytest.mark.django_db

Status = OutboxEvent.Status


def failed(aggregate_id: str, error: str, **fields: Any) -> OutboxEvent:
    return make_event(
        status=Status.FAILED,
        aggregate_id=aggregate_id,
        last_error=error,
        attempts=10,
        available_at=fields.pop("seen", timezone.now()),
        **fields,
    )


def delivery(handler: str, error: str, **fields: Any) -> ProcessedEvent:
    return ProcessedEvent.objects.create(
        event_id=fields.pop("event_id", uuid.uuid4()),
        handler=handler,
        status=fields.pop("status", DeliveryStatus.FAILED),
        attempts=3,
        last_error=error,
        event_type="testapp.OrderPlaced",
        aggregate_type="testapp.order",
        aggregate_id="1",
        processed_at=None,
        last_attempt_at=timezone.now(),
        **fields,
    )


# -- fingerprints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("KeyError: 'sku-1'", "KeyError: '<value>'"),
        ('ValueError: order 42 of "ada" failed', "ValueError: order <n> of '<value>' failed"),
        (
            "LookupError: event 0b7c1e0a-5f1a-4c2e-9d1b-1234567890ab not found",
            "LookupError: event <uuid> not found",
        ),
        ("RuntimeError: object at 0x7f3a2b1c is gone", "RuntimeError: object at <hex> is gone"),
        ("RuntimeError: commit deadbeef1234 missing", "RuntimeError: commit <hex> missing"),
        ("TimeoutError: took 1.5 s\nTraceback ...", "TimeoutError: took <n> s"),
        ("something odd", "something odd"),
    ],
)
def test_fingerprint_masks_what_differs_between_rows(error: str, expected: str) -> None:
    assert fingerprint(error) == expected


def test_mask_keeps_words_with_digits_in_names() -> None:
    assert mask("utf8 codec at position 17") == "utf8 codec at position <n>"


def test_groups_by_kind_type_handler_and_fingerprint() -> None:
    now = timezone.now()
    first = failed("1", "KeyError: 'sku-1'", seen=now - timedelta(hours=2))
    second = failed("2", "KeyError: 'sku-2'", seen=now - timedelta(hours=1))
    failed("3", "KeyError: 'sku-3'", event_type="testapp.OrderPaid")
    failed("4", "ValueError: bad total 12")
    make_event(status=Status.PENDING, aggregate_id="1")  # behind first: not a dead letter
    delivery("testapp.handlers.send_mail", "SMTPError: 550 mailbox 1 full")
    delivery("testapp.handlers.send_mail", "SMTPError: 550 mailbox 2 full")
    delivery("testapp.handlers.other", "SMTPError: 550 mailbox 3 full")
    delivery("testapp.handlers.send_mail", "x", status=DeliveryStatus.SUCCEEDED)
    groups, truncated = dead_letter_groups()
    assert not truncated
    shape = {(g.kind, g.event_type, g.handler, g.fingerprint): g.count for g in groups}
    assert shape == {
        ("event", "testapp.OrderPlaced", "", "KeyError: '<value>'"): 2,
        ("event", "testapp.OrderPaid", "", "KeyError: '<value>'"): 1,
        ("event", "testapp.OrderPlaced", "", "ValueError: bad total <n>"): 1,
        (
            "delivery",
            "testapp.OrderPlaced",
            "testapp.handlers.send_mail",
            "SMTPError: <n> mailbox <n> full",
        ): 2,
        (
            "delivery",
            "testapp.OrderPlaced",
            "testapp.handlers.other",
            "SMTPError: <n> mailbox <n> full",
        ): 1,
    }
    biggest = groups[0] if groups[0].kind == "event" else groups[1]
    assert set(biggest.ids) == {first.pk, second.pk}
    assert biggest.first_seen == first.available_at and biggest.last_seen == second.available_at
    assert biggest.sample_error == "KeyError: 'sku-2'"  # the latest
    assert biggest.blocks == [("testapp.order", "1"), ("testapp.order", "2")]


def test_groups_cost_two_queries_and_read_only_the_start_of_errors(
    django_assert_num_queries: Any,
) -> None:
    failed("1", "ValueError: " + "z" * 100_000)
    delivery("h", "E: 1")
    with django_assert_num_queries(2) as captured:
        groups, _ = dead_letter_groups()
    assert all("SUBSTR" in q["sql"].upper() for q in captured.captured_queries)
    assert len(groups[0].sample_error) <= 1000


# -- the page ----------------------------------------------------------------------------


def groups_url() -> str:
    return url("deadletters")


def action_url(key: str, action: str) -> str:
    return url("deadletter_action", key, action)


def event_group_key() -> str:
    (group,) = [g for g in dead_letter_groups()[0] if g.kind == "event"]
    return group.key


def test_the_page_shows_each_group_escaped_and_capped(admin_client: Client) -> None:
    failed("1", "ValueError: <script>alert(1)</script> " + "q" * 5000)
    failed("2", "ValueError: <script>alert(2)</script> " + "q" * 5000)
    page = admin_client.get(groups_url()).content.decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(2)" in page
    assert "q" * 600 not in page  # the sample is capped
    assert 'class="uow-count">2<' in page
    assert "?q=testapp.order%3A1" in page  # the aggregates it blocks, linked
    assert "Retry all" in page and "Discard all" in page
    changelist = admin_client.get(url("changelist")).content.decode()
    assert groups_url() in changelist


def test_a_viewer_sees_the_groups_without_actions_and_cannot_act() -> None:
    rows = [failed("1", "KeyError: 'a'"), failed("2", "KeyError: 'b'")]
    viewer = client_for(staff("viewer", "view_outboxevent"))
    page = viewer.get(groups_url()).content.decode()
    assert 'class="uow-count">2<' in page and "Discard all" not in page
    key = event_group_key()
    assert viewer.get(action_url(key, "discard")).status_code == 403
    response = viewer.post(action_url(key, "discard"), {"confirm": "yes"})
    assert response.status_code == 403
    assert viewer.post(action_url(key, "retry"), {"confirm": "yes"}).status_code == 403
    assert {r.status for r in OutboxEvent.objects.filter(pk__in=[r.pk for r in rows])} == {
        Status.FAILED
    }
    assert not LogEntry.objects.exists()
    nobody = client_for(staff("nobody"))
    assert nobody.get(groups_url()).status_code == 403


def test_discard_all_asks_first_then_discards_and_unblocks(admin_client: Client) -> None:
    rows = [failed("1", "KeyError: 'a'"), failed("2", "KeyError: 'b'")]
    behind = make_event(aggregate_id="1")
    other = failed("3", "ValueError: other cause")
    key = event_group_key_for("KeyError: '<value>'")
    confirm = admin_client.get(action_url(key, "discard"))
    assert confirm.status_code == 200 and b"Yes, discard them" in confirm.content
    assert OutboxEvent.objects.filter(status=Status.DISCARDED).count() == 0  # GET changes nothing
    response = admin_client.post(action_url(key, "discard"), {"confirm": "yes"}, follow=True)
    assert "2 failed events were discarded." in response.content.decode()
    for row in rows:
        row.refresh_from_db()
        assert row.status == Status.DISCARDED and row.discarded_at is not None
    other.refresh_from_db()
    assert other.status == Status.FAILED
    assert set(LogEntry.objects.values_list("object_id", flat=True)) == {str(r.pk) for r in rows}
    from django_uow.ops.holds import wait_reasons

    behind.refresh_from_db()
    assert wait_reasons([behind], "default")[behind.pk].kind == "due"


def event_group_key_for(fp: str) -> str:
    (group,) = [g for g in dead_letter_groups()[0] if g.fingerprint == fp]
    return group.key


def test_retry_all_makes_the_group_pending_again(admin_client: Client) -> None:
    rows = [failed("1", "KeyError: 'a'"), failed("2", "KeyError: 'b'")]
    key = event_group_key()
    response = admin_client.post(action_url(key, "retry"), {"confirm": "yes"}, follow=True)
    assert "2 failed events will be relayed again." in response.content.decode()
    for row in rows:
        row.refresh_from_db()
        assert (row.status, row.attempts) == (Status.PENDING, 0)
    assert LogEntry.objects.count() == 2
    # The group is gone: acting on it again does nothing and says so.
    again = admin_client.post(action_url(key, "retry"), {"confirm": "yes"}, follow=True)
    assert "nothing was done" in again.content.decode()


def test_discard_a_delivery_group_needs_the_inbox_change_permission() -> None:
    rows = [delivery("h.mail", "SMTPError: 1"), delivery("h.mail", "SMTPError: 2")]
    (group,) = dead_letter_groups()[0]
    outbox_only = client_for(staff("o", "view_outboxevent", "change_outboxevent"))
    assert outbox_only.post(action_url(group.key, "discard"), {"confirm": "yes"}).status_code == 403
    both = client_for(staff("b", "view_outboxevent", "change_outboxevent", "change_processedevent"))
    response = both.post(action_url(group.key, "discard"), {"confirm": "yes"}, follow=True)
    assert "2 failed handler deliveries were discarded." in response.content.decode()
    assert {r.status for r in ProcessedEvent.objects.filter(pk__in=[r.pk for r in rows])} == {
        DeliveryStatus.DISCARDED
    }
    assert LogEntry.objects.count() == 2
    assert dead_letter_groups()[0] == []


def test_an_unknown_action_is_404(admin_client: Client) -> None:
    failed("1", "KeyError: 'a'")
    assert admin_client.get(action_url(event_group_key(), "delete")).status_code == 404
    assert reverse("admin:django_uow_outboxevent_deadletters").endswith("/dead-letters/")


def test_retry_all_reruns_failed_deliveries_with_redeliver(admin_client: Client) -> None:
    from tests.testapp.models import Effect

    events = [
        make_event(
            event_type="testapp.Pinged",
            aggregate_type="",
            aggregate_id="",
            payload={"note": f"n{i}"},
            status=Status.DISPATCHED,
        )
        for i in range(2)
    ]
    rows = [
        delivery("testapp.on_ping", f"OperationalError: lock {i} timed out", event_id=e.event_id)
        for i, e in enumerate(events)
    ]
    (group,) = dead_letter_groups()[0]
    assert group.kind == "delivery" and group.count == 2
    page = admin_client.get(action_url(group.key, "retry")).content.decode()
    assert "Yes, retry them" in page
    response = admin_client.post(action_url(group.key, "retry"), {"confirm": "yes"}, follow=True)
    assert "2 failed handler deliveries were retried (2 succeeded)." in response.content.decode()
    statuses = set(
        ProcessedEvent.objects.filter(pk__in=[r.pk for r in rows]).values_list("status", flat=True)
    )
    assert statuses == {DeliveryStatus.SUCCEEDED}
    assert set(Effect.objects.filter(handler="pinged").values_list("event_id", flat=True)) == {
        e.event_id for e in events
    }
    assert LogEntry.objects.count() == 2
