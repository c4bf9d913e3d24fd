"""Who did it: EventContextMiddleware puts the actor and a request id into every event's
headers, and handlers carry them into the events they record, inline and under Celery."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from django_uow import UnitOfWork
from django_uow.models import OutboxEvent
from django_uow.relay import relay_pending
from tests.publishers.test_publishers import celery_worker  # noqa: F401 - the module's real worker
from tests.testapp.models import Effect, Order

INLINE = {
    "RELAY_ON_COMMIT": "inline",
    "PUBLISHERS": ["django_uow.publishers.InlinePublisher"],
}
CELERY = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.CeleryPublisher"]}


def new_order() -> Order:
    with UnitOfWork():
        return Order.objects.create(total=Decimal("5"))


def note(client: Client, order: Order, **headers: str) -> Any:
    return client.post(f"/orders/{order.pk}/note/", {"text": "hi"}, headers=headers)


def row(event_type: str) -> OutboxEvent:
    return OutboxEvent.objects.get(event_type=event_type)


@pytest.mark.django_db
def test_a_logged_in_request_attributes_its_events(client: Client) -> None:
    user = User.objects.create_user("ada")
    client.force_login(user)
    order = new_order()
    response = note(client, order, x_request_id="req-42.a:b")
    assert response.status_code == 200
    assert response["X-Request-ID"] == "req-42.a:b"
    noted = row("testapp.OrderNoted")
    assert noted.headers["actor"] == user.pk
    assert noted.headers["request_id"] == "req-42.a:b"


@pytest.mark.django_db
def test_an_anonymous_request_has_a_null_actor_and_a_new_request_id(client: Client) -> None:
    response = note(client, new_order())
    noted = row("testapp.OrderNoted")
    assert noted.headers["actor"] is None
    assert str(uuid.UUID(noted.headers["request_id"])) == response["X-Request-ID"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "forged",
    ["abc\r\nSet-Cookie: x=1", "x" * 10_000, "../../etc", "", "a b", "-leading-dash"],
)
def test_a_forged_or_oversized_request_id_is_replaced(client: Client, forged: str) -> None:
    environ = {"HTTP_X_REQUEST_ID": forged}  # raw, as a hostile client would send it
    response = client.post(f"/orders/{new_order().pk}/note/", {"text": "hi"}, **environ)
    request_id = row("testapp.OrderNoted").headers["request_id"]
    assert request_id != forged and uuid.UUID(request_id)
    assert response["X-Request-ID"] == request_id


@pytest.mark.django_db
def test_outside_a_request_the_actor_is_null_and_there_is_no_request_id() -> None:
    order = new_order()
    from tests.testapp.events import OrderNoted

    with UnitOfWork():
        order.record_event(OrderNoted(order_id=order.pk, text="from a command"))
        order.save()
    noted = row("testapp.OrderNoted")
    assert noted.headers["actor"] is None
    assert "request_id" not in noted.headers


@pytest.mark.django_db(transaction=True)
def test_follow_up_events_of_a_handler_carry_the_actor_inline(client: Client) -> None:
    user = User.objects.create_user("grace")
    client.force_login(user)
    order = new_order()
    with override_settings(DJANGO_UOW=INLINE):
        note(client, order, x_request_id="req-inline")
    noted, acknowledged = row("testapp.OrderNoted"), row("testapp.NoteAcknowledged")
    assert noted.status == "dispatched"
    assert acknowledged.headers["actor"] == user.pk
    assert acknowledged.headers["request_id"] == "req-inline"
    assert acknowledged.headers["causation_id"] == str(noted.event_id)


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.celery
@pytest.mark.server_db  # the worker's threads need a real server (in-memory SQLite locks tables)
@pytest.mark.django_db(transaction=True)
def test_follow_up_events_of_a_handler_carry_the_actor_under_celery(
    client: Client,
    celery_worker: Any,  # noqa: F811 - the imported fixture
) -> None:
    user = User.objects.create_user("linus")
    client.force_login(user)
    order = new_order()
    with override_settings(DJANGO_UOW=CELERY):
        note(client, order, x_request_id="req-celery")
        assert relay_pending().relayed == 1  # OrderNoted -> a handler task on the worker
        assert wait_for(
            lambda: OutboxEvent.objects.filter(event_type="testapp.NoteAcknowledged").exists()
        )
        acknowledged = row("testapp.NoteAcknowledged")
        assert acknowledged.headers["actor"] == user.pk
        assert acknowledged.headers["request_id"] == "req-celery"
        assert acknowledged.headers["causation_id"] == str(row("testapp.OrderNoted").event_id)
        assert relay_pending().relayed == 1  # the follow-up goes out too
        assert wait_for(lambda: Effect.objects.filter(handler="acknowledged").exists())


@pytest.fixture
def staff(client: Client) -> Client:
    admin_user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_the_admin_filters_events_by_actor_and_request(staff: Client) -> None:
    ada, bob = User.objects.create_user("ada"), User.objects.create_user("bob")
    for user, request_id in ((ada, "req-ada"), (bob, "req-bob")):
        other = Client()
        other.force_login(user)
        note(other, new_order(), x_request_id=request_id)
    events = {r.headers["request_id"]: str(r.event_id) for r in OutboxEvent.objects.order_by("id")}
    url = "/admin/django_uow/outboxevent/"
    by_ada = staff.get(url, {"actor": ada.pk}).content.decode()
    assert events["req-ada"][:8] in by_ada and events["req-bob"][:8] not in by_ada
    by_request = staff.get(url, {"request_id": "req-bob"}).content.decode()
    assert events["req-bob"][:8] in by_request and events["req-ada"][:8] not in by_request
    nobody = staff.get(url, {"actor": "none"})
    assert nobody.status_code == 200
    assert events["req-ada"][:8] not in nobody.content.decode()


@pytest.mark.django_db
def test_the_timeline_shows_who_caused_each_event(staff: Client) -> None:
    ada = User.objects.create_user("ada")
    other = Client()
    other.force_login(ada)
    order = new_order()
    note(other, order, x_request_id="req-<b>")  # not well formed: replaced by a UUID
    note(other, order, x_request_id="req-2")
    first = OutboxEvent.objects.order_by("id").first()
    assert first is not None
    page = staff.get(f"/admin/django_uow/outboxevent/{first.pk}/timeline/").content.decode()
    assert f'?actor={ada.pk}"' in page
    assert "?request_id=req-2" in page
    assert "<b>" not in page


@pytest.mark.django_db
def test_a_user_admin_links_to_the_events_the_user_caused(staff: Client) -> None:
    from django_uow.admin import EventsCausedAdminMixin

    ada = User.objects.create_user("ada")
    link = EventsCausedAdminMixin().events_caused(ada)
    assert f'href="/admin/django_uow/outboxevent/?actor={ada.pk}"' in link
    assert staff.get(f"/admin/django_uow/outboxevent/?actor={ada.pk}").status_code == 200


@pytest.mark.django_db
def test_the_admin_search_finds_events_by_actor_and_request(staff: Client) -> None:
    ada = User.objects.create_user("ada")
    other = Client()
    other.force_login(ada)
    note(other, new_order(), x_request_id="req-search")
    note(Client(), new_order(), x_request_id="req-anon")
    events = {
        r.headers["request_id"]: str(r.event_id)[:8] for r in OutboxEvent.objects.order_by("id")
    }
    url = "/admin/django_uow/outboxevent/"
    by_actor = staff.get(url, {"q": f"actor:{ada.pk}"}).content.decode()
    assert events["req-search"] in by_actor and events["req-anon"] not in by_actor
    by_request = staff.get(url, {"q": "request:req-anon"}).content.decode()
    assert events["req-anon"] in by_request and events["req-search"] not in by_request
    anonymous = staff.get(url, {"q": "actor:none"}).content.decode()
    assert events["req-anon"] in anonymous and events["req-search"] not in anonymous
