"""The fast path after an async unit's commit, through async views: it runs on the unit's
thread (never on the event loop), relays a hot aggregate's events in order without a
sweep, and keeps its broker budget when the broker is down or hung."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import RequestFactory, override_settings

from django_uow.models import OutboxEvent
from django_uow.relay import relay_pending
from django_uow.relay.breaker import breaker
from tests.asyncapp import views
from tests.relay.test_fast_path_budget import (  # noqa: F401 - fixtures
    CELERY_UOW,
    WITHIN_BUDGET,
    Broker,
    broker,
    celery_app,
    expected_handler_tasks,
    handed_off,
    queued,
)
from tests.relay.test_relay_follow_up import INLINE, _assert_all_delivered_in_order
from tests.support.aio import run
from tests.support.processes import wait_for
from tests.testapp import handlers
from tests.testapp.models import Effect, Order

pytestmark = pytest.mark.django_db(transaction=True)

D = "dispatched"


@pytest.mark.server_db
def test_eight_async_writers_on_one_aggregate_inline_no_sweep() -> None:
    handlers.BUMPED.clear()
    order = Order.objects.create()

    async def writer(number: int) -> None:
        for i in range(25):
            request = RequestFactory().get("/", {"seq": number * 25 + i})
            response = await views.bump_order(request, pk=order.pk)
            assert response.status_code == 200

    async def main() -> None:
        await asyncio.gather(*(writer(n) for n in range(8)))

    with override_settings(DJANGO_UOW=INLINE):
        run(main)
    assert list(OutboxEvent.objects.exclude(status=D).values_list("id", "status")) == []
    stored = list(OutboxEvent.objects.values_list("aggregate_version", flat=True))
    _assert_all_delivered_in_order([v for _, v in handlers.BUMPED], stored)
    assert Effect.objects.filter(handler="bumped").count() == 200
    handlers.BUMPED.clear()


async def timed_commits(count: int) -> list[tuple[float, int]]:
    """``count`` async views placing an order, one after another: how long each took, and
    how often a ticker task ran meanwhile (the event loop stayed free while it waited)."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    commits = []
    for _ in range(count):
        started, ticks_before = time.monotonic(), ticks
        response = await views.place_order(RequestFactory().get("/"))
        commits.append((time.monotonic() - started, ticks - ticks_before))
        assert response.status_code == 200
    stop.set()
    await ticking
    return commits


@pytest.fixture
def default_celery_app(celery_app: Any) -> Iterator[Any]:  # noqa: F811 - the fixture
    """The test's Celery app as every thread's default: Celery's current app is per thread,
    and an async unit commits on a thread of its own (as an ASGI request's sync code does)."""
    from celery import _state

    previous = _state.default_app
    celery_app.set_default()
    try:
        yield celery_app
    finally:
        _state.set_default_app(previous)


@pytest.mark.redis
@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_a_broker_outage_never_holds_an_async_views_commit_nor_the_event_loop(
    broker: Broker,  # noqa: F811 - the fixture
    default_celery_app: Any,
    outage: str,
) -> None:
    with override_settings(DJANGO_UOW=CELERY_UOW):
        run(lambda: timed_commits(1))  # healthy: the unit thread's broker connection is live
        # (Its first connect may take longer than the budget on a busy machine: then the
        # send is awaited on a helper thread, and the breaker opened for nothing.)
        assert wait_for(lambda: OutboxEvent.objects.get().status == D, timeout=10)
        breaker.reset()
        before_outage = expected_handler_tasks()
        if outage == "refused":
            broker.stop()
        else:
            broker.hang()
        (took, ticks), *_ = run(lambda: timed_commits(4))
        assert took < WITHIN_BUDGET, f"a commit waited {took:.1f}s on a {outage} broker"
        if outage == "hung":
            # The loop ran other tasks while the commit waited on the broker the whole
            # budget (0.2 s), with the ticker due every 0.01 s.
            assert ticks >= 5
        assert breaker.is_open and breaker.skipped == 3
        assert Order.objects.filter(status="placed").count() == 5  # all committed

        if outage == "refused":
            broker.start()
        else:
            broker.resume()

        def all_dispatched() -> bool:
            relay_pending()  # the sweep, through the app's own pool
            return not OutboxEvent.objects.exclude(status=D).exists()

        assert wait_for(all_dispatched, timeout=20)
    handler_tasks = [
        h["id"] for h in queued(broker) if h["task"] == "django_uow.tasks.handle_event"
    ]
    if handed_off() or outage == "refused":
        assert len(handler_tasks) == len(set(handler_tasks))  # none published twice
    expected = expected_handler_tasks()
    if outage == "refused":  # the restarted broker lost what it held (no persistence)
        expected -= before_outage
    assert set(handler_tasks) == expected
