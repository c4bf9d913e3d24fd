"""Async views with units of work under a real ASGI server (uvicorn, in a child process on
loopback) on a database server: many concurrent requests, each its own transaction."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from django_uow.models import OutboxEvent
from tests.relay.test_relay_faults import free_port
from tests.support.processes import running, start_asgi_server, wait_for, wait_for_port
from tests.testapp.models import Counter, Note, Order

httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.server_db, pytest.mark.django_db(transaction=True)]

REQUESTS = 24
APPLICATION = "uow-asgi-test"


@pytest.fixture(scope="module")
def server(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    port = free_port()
    with django_db_blocker.unblock():
        proc = start_asgi_server(port, UOW_PG_APPLICATION_NAME=APPLICATION)
    with running(proc):
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"


def get_all(base: str, paths: list[str]) -> list[Any]:
    """GET every path at once (one connection each) and return the responses in order."""

    async def main() -> list[Any]:
        limits = httpx.Limits(max_connections=len(paths))
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            return list(await asyncio.gather(*(client.get(p) for p in paths)))

    return asyncio.run(main())


def test_concurrent_requests_never_see_each_others_uncommitted_rows(server: str) -> None:
    round_ = uuid.uuid4().hex[:8]
    paths = [f"/async/isolation/{round_}/{n}/?size={REQUESTS}" for n in range(REQUESTS)]
    responses = get_all(server, paths)

    statuses = [r.status_code for r in responses]
    assert statuses == [409 if n % 2 else 200 for n in range(REQUESTS)], responses[0].text
    # Every unit had written when it looked (they met at a barrier): each saw its own row only.
    for n, response in enumerate(responses):
        assert response.json()["seen"] == [f"{round_}:{n}"]
    orders = {n: r.json()["order"] for n, r in enumerate(responses)}
    committed = {str(orders[n]) for n in orders if n % 2 == 0}
    rolled_back = {orders[n] for n in orders if n % 2}
    texts = set(Note.objects.filter(text__startswith=round_).values_list("text", flat=True))
    assert texts == {f"{round_}:{n}" for n in range(0, REQUESTS, 2)}
    assert not Order.objects.filter(pk__in=rolled_back).exists()
    # Every committed change has its event, and no rolled-back one has any.
    events = list(OutboxEvent.objects.values_list("aggregate_id", "event_type"))
    assert sorted(events) == sorted((pk, "testapp.OrderPlaced") for pk in committed)


def test_retries_on_an_async_view_lose_no_update_under_a_real_server(server: str) -> None:
    counter = Counter.objects.create(name="asgi")
    writers = 12
    responses = get_all(server, [f"/async/counters/{counter.pk}/bump/"] * writers)
    assert [r.status_code for r in responses] == [200] * writers
    counter.refresh_from_db()
    assert counter.value == writers
    assert sorted(r.json()["value"] for r in responses) == list(range(1, writers + 1))


@pytest.mark.postgres
def test_a_client_that_goes_away_mid_unit_rolls_it_back(server: str) -> None:
    def sessions(state: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND state LIKE %s",
                [APPLICATION, f"{state}%"],
            )
            return int(cursor.fetchone()[0])

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(b"GET /async/slow/gone/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        # The unit has written its row and waits, its transaction open on its connection.
        assert wait_for(lambda: sessions("idle in transaction") == 1, timeout=20)
    # The client is gone: the server cancels the view, and the unit rolls back.
    assert wait_for(lambda: sessions("idle in transaction") == 0, timeout=20)
    assert not Note.objects.filter(text="gone").exists()
    assert not OutboxEvent.objects.exists()

    (after,) = get_all(server, ["/async/orders/"])
    assert after.status_code == 200
    assert OutboxEvent.objects.filter(aggregate_id=str(after.json()["order"])).count() == 1
