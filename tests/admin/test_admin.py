"""The outbox admin: permissions, read-only pages, escaping, big payloads, actions, search."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_uow.models import OutboxEvent, ProcessedEvent

pytestmark = pytest.mark.django_db

Status = OutboxEvent.Status
CHANGELIST = "admin:django_uow_outboxevent_changelist"


def make_event(**fields: Any) -> OutboxEvent:
    defaults: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": "testapp.OrderPlaced",
        "aggregate_type": "testapp.order",
        "aggregate_id": "1",
        "aggregate_version": 1,
        "payload": {"order_id": 1, "total": "9.50"},
        "headers": {"schema_version": 1},
    }
    defaults.update(fields)
    return OutboxEvent.objects.create(**defaults)


def staff(username: str, *codenames: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return user


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(view: str, *args: Any) -> str:
    return reverse(f"admin:django_uow_outboxevent_{view}", args=args)


@pytest.fixture
def viewer() -> Client:
    return client_for(staff("viewer", "view_outboxevent", "view_processedevent"))


@pytest.fixture
def operator() -> Client:
    return client_for(staff("operator", "view_outboxevent", "change_outboxevent"))


def post_action(client: Client, action: str, *events: OutboxEvent) -> Any:
    return client.post(
        url("changelist"),
        {"action": action, "_selected_action": [e.pk for e in events]},
        follow=True,
    )


# -- access ------------------------------------------------------------------------------


def test_anonymous_is_sent_to_login(client: Client) -> None:
    event = make_event()
    for target in (
        url("changelist"),
        url("change", event.pk),
        url("raw", event.pk),
        url("timeline", event.pk),
    ):
        response = client.get(target)
        assert response.status_code == 302, target
        assert response["Location"].startswith(reverse("admin:login")), target


def test_staff_without_view_permission_has_no_access() -> None:
    event = make_event()
    client = client_for(staff("nobody"))
    assert client.get(url("changelist")).status_code == 403
    assert client.get(url("change", event.pk)).status_code == 403
    assert client.get(url("raw", event.pk)).status_code == 403
    assert client.get(url("timeline", event.pk)).status_code == 403
    assert client.post(url("retry", event.pk)).status_code == 403


def test_viewer_sees_list_and_detail_but_no_actions(viewer: Client) -> None:
    event = make_event(status=Status.FAILED, attempts=10, last_error="boom")
    listing = viewer.get(url("changelist"))
    assert listing.status_code == 200
    assert str(event.event_id)[:8] in listing.content.decode()
    assert 'name="action"' not in listing.content.decode()
    assert "action-checkbox" not in listing.content.decode()

    detail = viewer.get(url("change", event.pk))
    assert detail.status_code == 200
    assert "outbox-retry-button" not in detail.content.decode()
    assert 'type="submit" value="Save"' not in detail.content.decode()


def test_viewer_forged_action_post_changes_nothing(viewer: Client) -> None:
    event = make_event(status=Status.FAILED, attempts=10)
    response = post_action(viewer, "retry_now", event)
    assert response.status_code == 200
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.FAILED, 10)
    assert viewer.post(url("retry", event.pk)).status_code == 403
    event.refresh_from_db()
    assert event.status == Status.FAILED
    assert not LogEntry.objects.exists()


def test_no_add_edit_or_delete_even_for_superuser(admin_client: Client) -> None:
    event = make_event(event_type="a.Before")
    assert admin_client.get(reverse("admin:django_uow_outboxevent_add")).status_code == 403
    response = admin_client.post(url("change", event.pk), {"event_type": "a.After"})
    assert response.status_code == 403
    assert admin_client.post(url("delete", event.pk), {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.event_type == "a.Before"
    assert 'value="delete_selected"' not in admin_client.get(url("changelist")).content.decode()


# -- rendering ---------------------------------------------------------------------------


def test_payload_html_is_escaped(admin_client: Client) -> None:
    event = make_event(
        payload={"note": "<script>alert('x')</script>"},
        headers={"correlation_id": "<b>bold</b>"},
        last_error="ValueError: <img src=x onerror=alert(1)>",
    )
    page = admin_client.get(url("change", event.pk)).content.decode()
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<img src=x" not in page
    assert "ValueError: &lt;img src=x onerror=alert(1)&gt;" in page


def test_payload_is_pretty_printed(admin_client: Client) -> None:
    event = make_event(payload={"b": 2, "a": {"nested": True}})
    page = admin_client.get(url("change", event.pk)).content.decode()
    assert (
        "{\n  &quot;a&quot;: {\n    &quot;nested&quot;: true\n  },\n  &quot;b&quot;: 2\n}" in page
    )


def test_huge_payload_is_truncated_with_a_raw_json_link(admin_client: Client) -> None:
    blob = "x" * (1024 * 1024)
    event = make_event(payload={"blob": blob})
    page = admin_client.get(url("change", event.pk))
    assert page.status_code == 200
    assert len(page.content) < 200_000  # the 1 MB value is not in the page
    assert "Showing the first 20,000 of" in page.content.decode()
    raw_url = url("raw", event.pk) + "?field=payload"
    assert raw_url in page.content.decode()

    raw = admin_client.get(raw_url)
    assert raw.status_code == 200
    assert raw["Content-Type"] == "application/json"
    assert json.loads(raw.content) == {"blob": blob}


def test_raw_json_of_headers_and_bad_field(viewer: Client) -> None:
    event = make_event(headers={"traceparent": "00-abc-def-01"})
    raw = viewer.get(url("raw", event.pk) + "?field=headers")
    assert json.loads(raw.content) == {"traceparent": "00-abc-def-01"}
    assert viewer.get(url("raw", event.pk) + "?field=last_error").status_code == 404
    assert viewer.get(url("raw", 999_999)).status_code == 404


def test_status_box_counts_and_lag(admin_client: Client) -> None:
    make_event(status=Status.PENDING, created_at=timezone.now() - timedelta(hours=2, minutes=5))
    make_event(status=Status.PENDING)
    make_event(status=Status.FAILED)
    make_event(status=Status.DISPATCHED, dispatched_at=timezone.now())
    page = admin_client.get(url("changelist")).content.decode()
    assert 'id="outbox-count-pending">2<' in page
    assert 'id="outbox-count-failed">1<' in page
    assert 'id="outbox-count-dispatched">1<' in page
    assert 'id="outbox-lag">2 h 5 min<' in page


def test_list_has_no_per_row_queries_and_skips_big_columns(admin_client: Client) -> None:
    def list_queries() -> list[str]:
        with CaptureQueriesContext(connection) as ctx:
            assert admin_client.get(url("changelist")).status_code == 200
        return [q["sql"] for q in ctx.captured_queries]

    for i in range(3):
        make_event(aggregate_id=str(i))
    few = list_queries()
    for i in range(40):
        make_event(aggregate_id=str(100 + i), status=Status.FAILED)
    many = list_queries()
    assert len(many) == len(few)
    q = connection.ops.quote_name
    listing = [sql for sql in many if f"{q('django_uow_outboxevent')}.{q('event_type')}" in sql]
    assert len(listing) == 1, many
    assert q("payload") not in listing[0] and q("last_error") not in listing[0]
    # No COUNT(*) over the whole table: every count is filtered or capped.
    counts = [sql for sql in many if "COUNT(" in sql.upper() and "django_uow_outboxevent" in sql]
    assert counts
    assert all("WHERE" in sql or "LIMIT 10001" in sql for sql in counts), counts


def test_list_count_is_capped(admin_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import django_uow.admin.changelists

    monkeypatch.setattr(django_uow.admin.changelists, "COUNT_CAP", 2)
    for i in range(4):
        make_event(aggregate_id=str(i))
    page = admin_client.get(url("changelist")).content.decode()
    assert "More than 2 outbox events" in page


# -- filters and search ------------------------------------------------------------------


def test_scheduled_events_are_shown_apart_from_pending_ones(admin_client: Client) -> None:
    now = timezone.now()
    later = now + timedelta(hours=2)
    due = make_event(aggregate_id="1")
    scheduled = make_event(aggregate_id="2", deliver_at=later, available_at=later)
    behind_schedule = make_event(aggregate_id="2")  # recorded after it, due now
    retrying = make_event(aggregate_id="3", attempts=1, available_at=now + timedelta(hours=1))
    page = admin_client.get(url("changelist")).content.decode()
    assert 'id="outbox-count-pending">3<' in page
    assert 'id="outbox-count-scheduled">1<' in page
    assert page.count('class="uow-status uow-status-scheduled"') == 1
    assert page.count('class="uow-status uow-status-pending"') == 3
    assert f"scheduled for {later.isoformat(timespec='seconds')}" in page
    # The event recorded after the scheduled one waits for nothing.
    assert f'behind event <a href="{url("change", scheduled.pk)}"' not in page
    ids = {e: str(e.event_id)[:8] for e in (due, scheduled, behind_schedule, retrying)}
    only = admin_client.get(url("changelist"), {"status__exact": "scheduled"}).content.decode()
    assert [e for e, short in ids.items() if short in only] == [scheduled]
    pending = admin_client.get(url("changelist"), {"status__exact": "pending"}).content.decode()
    assert [e for e, short in ids.items() if short in pending] == [due, behind_schedule, retrying]
    detail = admin_client.get(url("change", scheduled.pk)).content.decode()
    assert "scheduled for" in detail
    blocked = admin_client.get(url("blocked")).content.decode()
    assert str(retrying.event_id) in blocked and str(scheduled.event_id) not in blocked


def test_filters_by_status_event_type_and_aggregate_type(admin_client: Client) -> None:
    failed = make_event(status=Status.FAILED, event_type="testapp.OrderPaid")
    pending = make_event(aggregate_type="testapp.counter")
    page = admin_client.get(url("changelist"), {"status__exact": "failed"}).content.decode()
    assert str(failed.event_id)[:8] in page and str(pending.event_id)[:8] not in page
    page = admin_client.get(url("changelist"), {"event_type": "testapp.OrderPaid"}).content.decode()
    assert str(failed.event_id)[:8] in page and str(pending.event_id)[:8] not in page
    page = admin_client.get(
        url("changelist"), {"aggregate_type": "testapp.counter"}
    ).content.decode()
    assert str(pending.event_id)[:8] in page and str(failed.event_id)[:8] not in page
    # Sidebar choices come from code: the registry and the installed aggregates.
    page = admin_client.get(url("changelist")).content.decode()
    assert "?event_type=testapp.OrderPlaced" in page
    assert "?aggregate_type=testapp.order" in page


def search(client: Client, term: str) -> tuple[str, list[str]]:
    with CaptureQueriesContext(connection) as ctx:
        page = client.get(url("changelist"), {"q": term}).content.decode()
    return page, [q["sql"] for q in ctx.captured_queries]


def test_search_by_full_event_id_is_an_exact_match(admin_client: Client) -> None:
    target = make_event(aggregate_id="7")
    other = make_event(aggregate_id="8")
    page, queries = search(admin_client, str(target.event_id))
    assert str(target.event_id)[:8] in page
    assert str(other.event_id)[:8] not in page
    assert not any(" LIKE " in sql.upper() for sql in queries)
    assert any(f"{connection.ops.quote_name('event_id')} =" in sql for sql in queries)


def test_search_by_aggregate_id(admin_client: Client) -> None:
    first = make_event(aggregate_id="42", aggregate_version=1)
    second = make_event(aggregate_id="42", aggregate_version=2)
    other = make_event(aggregate_id="421")
    page, queries = search(admin_client, "42")
    assert str(first.event_id)[:8] in page and str(second.event_id)[:8] in page
    assert str(other.event_id)[:8] not in page
    assert not any(" LIKE " in sql.upper() for sql in queries)
    page, _ = search(admin_client, "testapp.order:421")
    assert str(other.event_id)[:8] in page and str(first.event_id)[:8] not in page


# -- actions -----------------------------------------------------------------------------


def test_retry_now_resets_failed_events(operator: Client) -> None:
    lease = timezone.now() + timedelta(minutes=1)
    failed = make_event(
        status=Status.FAILED,
        attempts=10,
        last_error="ConnectionError: broker down",
        available_at=timezone.now() + timedelta(days=1),
        claimed_by="relay-1",
        claimed_until=lease,
    )
    dispatched = make_event(status=Status.DISPATCHED, attempts=1, dispatched_at=timezone.now())
    before = timezone.now()
    response = post_action(operator, "retry_now", failed, dispatched)
    text = response.content.decode()
    assert "1 event will be relayed again." in text
    assert "1 event was skipped: it is already dispatched." in text

    failed.refresh_from_db()
    assert failed.status == Status.PENDING
    assert failed.attempts == 0
    assert failed.available_at >= before
    assert (failed.claimed_by, failed.claimed_until) == ("", None)
    assert failed.last_error == "ConnectionError: broker down"  # kept until the next attempt
    dispatched.refresh_from_db()
    assert dispatched.status == Status.DISPATCHED

    entries = list(LogEntry.objects.all())
    assert [(e.object_id, e.action_flag) for e in entries] == [(str(failed.pk), CHANGE)]
    assert entries[0].user.username == "operator"
    assert "Retry now" in entries[0].change_message


def test_retry_now_counts_plural(operator: Client) -> None:
    events = [make_event(status=Status.FAILED, aggregate_id=str(i)) for i in range(3)]
    response = post_action(operator, "retry_now", *events)
    assert "3 events will be relayed again." in response.content.decode()
    assert OutboxEvent.objects.filter(status=Status.PENDING).count() == 3
    assert LogEntry.objects.count() == 3


def test_mark_failed(operator: Client) -> None:
    pending = make_event(claimed_by="relay-1", claimed_until=timezone.now())
    dispatched = make_event(status=Status.DISPATCHED, dispatched_at=timezone.now())
    response = post_action(operator, "mark_failed", pending, dispatched)
    assert "1 event was marked failed." in response.content.decode()
    assert (
        "1 event was skipped: only pending events can be marked failed."
        in response.content.decode()
    )
    pending.refresh_from_db()
    dispatched.refresh_from_db()
    assert (pending.status, pending.claimed_by) == (Status.FAILED, "")
    assert dispatched.status == Status.DISPATCHED


def test_retry_button_on_change_page(operator: Client) -> None:
    event = make_event(status=Status.FAILED, attempts=10)
    page = operator.get(url("change", event.pk)).content.decode()
    assert url("retry", event.pk) in page
    assert operator.get(url("retry", event.pk)).status_code == 405
    response = operator.post(url("retry", event.pk), follow=True)
    assert response.redirect_chain[-1][0] == url("change", event.pk)
    assert "1 event will be relayed again." in response.content.decode()
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.PENDING, 0)


# -- timeline ----------------------------------------------------------------------------


def test_aggregate_timeline_lists_all_events_of_the_aggregate(viewer: Client) -> None:
    first = make_event(aggregate_id="5", aggregate_version=1, status=Status.DISPATCHED)
    second = make_event(aggregate_id="5", aggregate_version=2, status=Status.FAILED)
    stranger = make_event(aggregate_id="6", aggregate_version=1)
    detail = viewer.get(url("change", second.pk)).content.decode()
    assert url("timeline", second.pk) in detail
    page = viewer.get(url("timeline", second.pk)).content.decode()
    assert "Timeline of testapp.order:5 v2" in page
    assert page.index(str(first.event_id)) < page.index(str(second.event_id))
    assert str(stranger.event_id) not in page
    assert "uow-status-failed" in page and "uow-status-dispatched" in page


def test_timeline_of_an_event_without_aggregate(viewer: Client) -> None:
    event = make_event(aggregate_type="", aggregate_id="", aggregate_version=None)
    page = viewer.get(url("timeline", event.pk)).content.decode()
    assert "not tied to an aggregate" in page
    assert str(event.event_id) in page


# -- inbox -------------------------------------------------------------------------------


def test_processed_event_admin_is_read_only(viewer: Client, admin_client: Client) -> None:
    row = ProcessedEvent.objects.create(event_id=uuid.uuid4(), handler="shop.send_mail")
    listing = viewer.get(reverse("admin:django_uow_processedevent_changelist"))
    assert listing.status_code == 200 and "shop.send_mail" in listing.content.decode()
    found = admin_client.get(
        reverse("admin:django_uow_processedevent_changelist"), {"q": str(row.event_id)}
    )
    assert "shop.send_mail" in found.content.decode()
    assert admin_client.get(reverse("admin:django_uow_processedevent_add")).status_code == 403
    change = reverse("admin:django_uow_processedevent_change", args=[row.pk])
    assert admin_client.post(change, {"handler": "x"}).status_code == 403
    row.refresh_from_db()
    assert row.handler == "shop.send_mail"


def test_actions_log_one_line_per_event_with_its_identity(
    operator: Client, caplog: pytest.LogCaptureFixture
) -> None:
    event = make_event(status=Status.FAILED, aggregate_id="77", event_type="testapp.OrderPaid")
    with caplog.at_level("INFO", logger="django_uow.admin"):
        post_action(operator, "retry_now", event)
    records = [r for r in caplog.records if r.name == "django_uow.admin"]
    assert len(records) == 1
    record: Any = records[0]
    message = record.getMessage()
    assert str(event.event_id) in message and "testapp.OrderPaid" in message
    assert "testapp.order:77" in message and "operator" in message
    assert (record.event_id, record.event_type) == (str(event.event_id), "testapp.OrderPaid")
    assert (record.aggregate_type, record.aggregate_id) == ("testapp.order", "77")


@pytest.mark.django_db(transaction=True)
def test_retried_event_is_relayed_and_signalled(operator: Client) -> None:
    from django_uow.relay import relay_pending
    from django_uow.signals import event_dispatched

    event = make_event(
        status=Status.FAILED,
        attempts=10,
        event_type="testapp.Pinged",
        aggregate_type="",
        aggregate_id="",
        aggregate_version=None,
        payload={"note": "hello", "ref": None, "extra": {}},
        available_at=timezone.now() + timedelta(days=1),
    )
    assert relay_pending().relayed == 0  # failed: the relay leaves it alone

    seen: list[Any] = []

    def receiver(sender: Any, envelope: Any, **kwargs: Any) -> None:
        seen.append(envelope.event_id)

    event_dispatched.connect(receiver, dispatch_uid="test-admin-retry")
    try:
        post_action(operator, "retry_now", event)
        summary = relay_pending()
    finally:
        event_dispatched.disconnect(dispatch_uid="test-admin-retry")
    assert summary.relayed == 1
    assert seen == [event.event_id]
    event.refresh_from_db()
    assert event.status == Status.DISPATCHED and event.attempts == 1


def test_retry_all_matching_events_in_chunks(
    operator: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import django_uow.admin.outbox

    monkeypatch.setattr(django_uow.admin.outbox, "ACTION_CHUNK", 2)
    failed = [make_event(status=Status.FAILED, aggregate_id=str(i)) for i in range(5)]
    dispatched = make_event(status=Status.DISPATCHED, dispatched_at=timezone.now())
    response = operator.post(
        url("changelist") + "?status__exact=failed",
        {"action": "retry_now", "select_across": "1", "_selected_action": [failed[0].pk]},
        follow=True,
    )
    assert "5 events will be relayed again." in response.content.decode()
    assert OutboxEvent.objects.filter(status=Status.PENDING).count() == 5
    assert sorted(int(e.object_id) for e in LogEntry.objects.all()) == [e.pk for e in failed]
    dispatched.refresh_from_db()
    assert dispatched.status == Status.DISPATCHED
