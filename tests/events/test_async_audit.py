"""``EventContextMiddleware`` in an async request: events recorded on the event loop's
thread carry the logged-in user and the request id, without a database call there."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from django_uow.models import OutboxEvent
from tests.support.aio import run

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_async_views_events_carry_the_logged_in_actor_and_the_request_id() -> None:
    user = User.objects.create_user("ada", password="x")
    client = AsyncClient()
    client.force_login(user)

    async def main() -> tuple[int, str]:
        response = await client.get("/async/orders/", headers={"X-Request-ID": "req-42"})
        return response.status_code, response.headers["X-Request-ID"]

    assert run(main) == (200, "req-42")
    (event,) = OutboxEvent.objects.all()
    assert (event.headers["actor"], event.headers["request_id"]) == (user.pk, "req-42")


def test_an_anonymous_async_request_is_attributed_to_nobody() -> None:
    async def main() -> int:
        return (await AsyncClient().get("/async/orders/")).status_code

    assert run(main) == 200
    (event,) = OutboxEvent.objects.all()
    assert event.headers["actor"] is None and event.headers["request_id"]
