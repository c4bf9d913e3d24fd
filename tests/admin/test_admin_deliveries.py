"""Handler deliveries for an operator: the event page, the deliveries list, consumer lag and
failed deliveries in the admin and in ``manage.py outbox_status``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_uow.delivery.rows import record_failure, record_published, record_success
from django_uow.models import DeliveryStatus, OutboxEvent, ProcessedEvent

pytestmark = pytest.mark.django_db

DELIVERIES = "admin:django_uow_processedevent_changelist"


def outbox_event(event_type: str = "testapp.OrderPlaced", **fields: Any) -> OutboxEvent:
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": event_type,
        "aggregate_type": "testapp.order",
        "aggregate_id": "7",
        "aggregate_version": 1,
        "payload": {"order_id": 7},
        "status": OutboxEvent.Status.DISPATCHED,
        "dispatched_at": timezone.now(),
    }
    values.update(fields)
    return OutboxEvent.objects.create(**values)


def fail(event: OutboxEvent, handler: str, exc: BaseException, *, dead: bool = True) -> None:
    try:
        raise exc
    except BaseException as raised:  # a real traceback, as a handler leaves it
        record_failure(
            handler, event.to_envelope(), raised, using="default", max_attempts=3, dead=dead
        )


def staff_client(*codenames: str) -> Client:
    user = User.objects.create_user(f"u{uuid.uuid4().hex[:8]}", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


HOSTILE = "<script>alert(1)</script> nul:\x00 surrogate:\udcff " + "z" * 1_000_000


# -- the event page ----------------------------------------------------------------------


def test_event_page_lists_each_handler_delivery(admin_client: Client) -> None:
    event = outbox_event()
    envelope = event.to_envelope()
    record_success("testapp.record_placed", envelope, using="default")
    fail(event, "testapp.mailer", ValueError("SMTP said no"))
    record_published([(envelope, "testapp.audit")], using="default")
    page = admin_client.get(
        reverse("admin:django_uow_outboxevent_change", args=[event.pk])
    ).content.decode()
    assert page.count('<tr><td><a href="/admin/django_uow/processedevent/') == 3
    for handler, status in (
        ("testapp.record_placed", "succeeded"),
        ("testapp.mailer", "failed"),
        ("testapp.audit", "published"),
    ):
        assert f'>{handler}</a></td><td><span class="uow-status uow-delivery-{status}">' in page
    assert "ValueError: SMTP said no" in page
    assert '<details class="uow-traceback"><summary>Traceback</summary>' in page
    assert "Traceback (most recent call last)" in page


def test_event_page_escapes_and_caps_hostile_handler_errors(admin_client: Client) -> None:
    event = outbox_event()
    fail(event, "testapp.mailer", RuntimeError(HOSTILE))
    row = ProcessedEvent.objects.get()
    assert "\x00" not in row.last_error and "\ufffd" in row.last_error  # stored readable
    for target in (
        reverse("admin:django_uow_outboxevent_change", args=[event.pk]),
        reverse("admin:django_uow_processedevent_change", args=[row.pk]),
        reverse(DELIVERIES),
    ):
        page = admin_client.get(target).content.decode()
        assert "<script>alert(1)" not in page, target
        assert "&lt;script&gt;alert(1)&lt;/script&gt; nul:\ufffd surrogate:\ufffd" in page, target
        assert len(page) < 60_000, (target, len(page))


def test_event_without_deliveries_says_so(admin_client: Client) -> None:
    event = outbox_event()
    page = admin_client.get(
        reverse("admin:django_uow_outboxevent_change", args=[event.pk])
    ).content.decode()
    assert "No handler delivery is recorded for this event yet." in page


# -- the deliveries list -----------------------------------------------------------------


def make_deliveries(n: int) -> list[OutboxEvent]:
    events = []
    for i in range(n):
        event = outbox_event(event_type="testapp.OrderPaid" if i % 2 else "testapp.OrderPlaced")
        events.append(event)
        record_success("testapp.record_placed", event.to_envelope(), using="default")
        fail(event, "testapp.record_paid", KeyError(f"missing {i}"))
    return events


def test_deliveries_list_filters(admin_client: Client) -> None:
    make_deliveries(4)
    listing = reverse(DELIVERIES)

    failed_page = admin_client.get(listing, {"status__exact": "failed"}).content.decode()
    assert failed_page.count('uow-delivery-failed">') == 4
    assert "uow-delivery-succeeded" not in failed_page.split('id="result_list"')[1]
    by_handler = admin_client.get(listing, {"handler": "testapp.record_placed"}).content.decode()
    assert by_handler.count('uow-delivery-succeeded">') == 4
    assert 'uow-delivery-failed">' not in by_handler.split('id="result_list"')[1]
    paid = admin_client.get(
        listing, {"event_type": "testapp.OrderPaid", "status__exact": "failed"}
    ).content.decode()
    assert paid.count('uow-delivery-failed">') == 2
    midnight = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = admin_client.get(
        listing,
        {
            "last_attempt_at__gte": str(midnight - timedelta(days=1)),
            "last_attempt_at__lt": str(midnight),
        },
    ).content.decode()
    assert '<td class="field-status_label">' not in yesterday
    today = admin_client.get(
        listing,
        {
            "last_attempt_at__gte": str(midnight),
            "last_attempt_at__lt": str(midnight + timedelta(days=1)),
        },
    ).content.decode()
    assert today.count('<td class="field-status_label">') == 8
    assert "KeyError: &#x27;missing 3&#x27;" in failed_page


def test_deliveries_list_makes_no_per_row_query(
    admin_client: Client, django_assert_num_queries: Callable[..., Any]
) -> None:
    listing = reverse(DELIVERIES)
    make_deliveries(2)
    admin_client.get(listing)
    with django_assert_num_queries(5) as few:
        admin_client.get(listing, {"status__exact": "failed"})
    make_deliveries(40)
    with django_assert_num_queries(len(few)) as many:
        page = admin_client.get(listing, {"status__exact": "failed"}).content.decode()
    assert page.count('uow-delivery-failed">') == 42
    q = connection.ops.quote_name
    listing_sql = [sql["sql"] for sql in many.captured_queries if q("handler") in sql["sql"]]
    assert listing_sql and all(q("traceback") not in sql for sql in listing_sql)


def test_deliveries_permissions() -> None:
    make_deliveries(1)
    row = ProcessedEvent.objects.filter(status=DeliveryStatus.FAILED).get()
    viewer = staff_client("view_processedevent")
    assert viewer.get(reverse(DELIVERIES)).status_code == 200
    page = viewer.get(reverse("admin:django_uow_processedevent_change", args=[row.pk]))
    assert page.status_code == 200 and "KeyError" in page.content.decode()
    nobody = staff_client()
    assert nobody.get(reverse(DELIVERIES)).status_code == 403
    assert (
        nobody.get(reverse("admin:django_uow_processedevent_change", args=[row.pk])).status_code
        == 403
    )


def test_deliveries_header_shows_consumer_lag(admin_client: Client) -> None:
    event = outbox_event()
    record_published([(event.to_envelope(), "testapp.audit")], using="default")
    ProcessedEvent.objects.update(published_at=timezone.now() - timedelta(minutes=3, seconds=5))
    make_deliveries(1)
    page = admin_client.get(reverse(DELIVERIES)).content.decode()
    assert 'id="delivery-count-owed">1<' in page
    assert 'id="delivery-lag">3 min 5 s<' in page
    assert 'id="delivery-count-failed">1<' in page
    outbox = admin_client.get(reverse("admin:django_uow_outboxevent_changelist")).content.decode()
    assert 'id="outbox-consumer-lag">3 min 5 s<' in outbox
    assert "1 delivery waiting" in outbox
    assert 'id="outbox-count-failed-deliveries">1<' in outbox


# -- outbox_status -----------------------------------------------------------------------


def test_outbox_status_json_reports_failures_and_consumer_lag() -> None:
    events = make_deliveries(7)
    waiting = outbox_event()
    record_published([(waiting.to_envelope(), "testapp.audit")], using="default")
    ProcessedEvent.objects.filter(handler="testapp.audit").update(
        published_at=timezone.now() - timedelta(seconds=90)
    )
    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert data["handler_failures"]["count"] == 7
    recent = data["handler_failures"]["recent"]
    assert len(recent) == 5
    newest = events[-1]
    assert recent[0] == {
        "event_id": str(newest.event_id),
        "event_type": "testapp.OrderPlaced",
        "handler": "testapp.record_paid",
        "attempts": 1,
        "last_attempt_at": recent[0]["last_attempt_at"],
        "last_error": "KeyError: 'missing 6'",
    }
    assert [r["event_id"] for r in recent] == [str(e.event_id) for e in events[::-1][:5]]
    lag = data["consumer_lag"]
    assert lag["owed"] == 1
    assert 90 <= lag["age_seconds"] < 200
    assert lag["oldest_published_at"] is not None


def test_outbox_status_caps_and_flattens_hostile_errors() -> None:
    event = outbox_event()
    fail(event, "testapp.mailer", RuntimeError("\x1b[31mred\nline two " + HOSTILE))
    out = StringIO()
    call_command("outbox_status", "--json", stdout=out)
    [failure] = json.loads(out.getvalue())["handler_failures"]["recent"]
    assert len(failure["last_error"]) == 500
    text = StringIO()
    call_command("outbox_status", stdout=text)
    [line] = [x for x in text.getvalue().splitlines() if "testapp.mailer" in x]
    assert line.endswith("1 attempts: RuntimeError: ?[31mred")
    assert "\x1b" not in text.getvalue()


def test_outbox_status_text_with_nothing_owed() -> None:
    out = StringIO()
    call_command("outbox_status", stdout=out)
    lines = out.getvalue().splitlines()
    assert "handler deliveries  owed: 0  failed: 0  blocked: 0" in lines
    assert "consumer lag: 0.0s (oldest delivery not handled yet, first published: -)" in lines
    assert "failed handler deliveries: 0" in lines


# -- re-run ------------------------------------------------------------------------------


@pytest.fixture
def behaviour() -> Iterator[dict[Any, Any]]:
    from tests.testapp import handlers

    handlers.BEHAVIOUR.clear()
    yield handlers.BEHAVIOUR
    handlers.BEHAVIOUR.clear()


def failed_order_delivery(behaviour: dict[Any, Any]) -> ProcessedEvent:
    """A real dead letter: the inline relay ran a handler that failed for good."""
    from decimal import Decimal

    from django_uow import UnitOfWork
    from django_uow.relay import relay_batch
    from tests.testapp.models import Order

    with UnitOfWork():
        order = Order.objects.create(total=Decimal("9.50"))
        order.place()
        order.save()
    behaviour[order.pk] = "permanent"
    relay_batch()
    delivery = ProcessedEvent.objects.get(handler="testapp.record_placed")
    assert delivery.status == DeliveryStatus.FAILED
    behaviour.clear()  # the cause is fixed
    return delivery


def rerun(client: Client, *rows: ProcessedEvent) -> Any:
    return client.post(
        reverse(DELIVERIES),
        {"action": "rerun", "_selected_action": [r.pk for r in rows]},
        follow=True,
    )


@pytest.fixture
def operator_client() -> Client:
    return staff_client("view_processedevent", "change_processedevent")


def test_rerun_runs_the_failed_handler_again(
    operator_client: Client, behaviour: dict[Any, Any]
) -> None:
    from tests.testapp.models import Effect

    delivery = failed_order_delivery(behaviour)
    response = rerun(operator_client, delivery)
    assert "1 delivery ran again and succeeded." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert Effect.objects.filter(event_id=delivery.event_id, handler="placed").count() == 1
    entry = LogEntry.objects.get()
    assert (entry.object_id, entry.action_flag) == (str(delivery.pk), CHANGE)
    assert entry.change_message == "Re-run: succeeded."

    again = rerun(operator_client, delivery)  # idempotent: no second effect
    assert "1 delivery was skipped: its handler already succeeded." in again.content.decode()
    assert Effect.objects.filter(event_id=delivery.event_id).count() == 1


def test_rerun_that_fails_again_says_so(operator_client: Client, behaviour: dict[Any, Any]) -> None:
    delivery = failed_order_delivery(behaviour)
    event = OutboxEvent.objects.get(event_id=delivery.event_id)
    behaviour[event.payload["order_id"]] = "raise"
    page = rerun(operator_client, delivery).content.decode()
    assert "1 delivery ran again and failed." in page
    assert "ValueError: handler refused order" in page
    delivery.refresh_from_db()
    assert delivery.status != DeliveryStatus.SUCCEEDED and delivery.attempts >= 2


def test_rerun_button_on_the_delivery_page(
    operator_client: Client, behaviour: dict[Any, Any]
) -> None:
    delivery = failed_order_delivery(behaviour)
    change = reverse("admin:django_uow_processedevent_change", args=[delivery.pk])
    assert "delivery-rerun-button" in operator_client.get(change).content.decode()
    rerun_url = reverse("admin:django_uow_processedevent_rerun", args=[delivery.pk])
    assert operator_client.get(rerun_url).status_code == 405
    response = operator_client.post(rerun_url, follow=True)
    assert response.redirect_chain[-1][0] == change
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SUCCEEDED


def test_viewer_cannot_rerun(behaviour: dict[Any, Any]) -> None:
    delivery = failed_order_delivery(behaviour)
    viewer = staff_client("view_processedevent")
    listing = viewer.get(reverse(DELIVERIES)).content.decode()
    assert 'name="action"' not in listing
    change = reverse("admin:django_uow_processedevent_change", args=[delivery.pk])
    assert "delivery-rerun-button" not in viewer.get(change).content.decode()
    assert rerun(viewer, delivery).status_code == 200  # the action is not offered: ignored
    rerun_url = reverse("admin:django_uow_processedevent_rerun", args=[delivery.pk])
    assert viewer.post(rerun_url).status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert not LogEntry.objects.exists()


def test_rerun_refuses_a_large_selection(
    operator_client: Client, behaviour: dict[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import django_uow.admin.deliveries

    monkeypatch.setattr(django_uow.admin.deliveries, "RERUN_LIMIT", 1)
    delivery = failed_order_delivery(behaviour)
    other = ProcessedEvent.objects.create(
        event_id=uuid.uuid4(), handler="testapp.gone", status=DeliveryStatus.FAILED
    )
    page = rerun(operator_client, delivery, other).content.decode()
    assert "Select at most 1 deliveries to re-run at once" in page
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert not LogEntry.objects.exists()


def test_rerun_of_a_delivery_whose_event_is_gone(operator_client: Client) -> None:
    orphan = ProcessedEvent.objects.create(
        event_id=uuid.uuid4(), handler="testapp.record_placed", status=DeliveryStatus.FAILED
    )
    page = rerun(operator_client, orphan).content.decode()
    assert "1 delivery could not be re-run: its event or handler is gone." in page
    assert "is not in the outbox" in page
