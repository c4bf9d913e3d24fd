"""``@unit_of_work`` on async views: function views, an async class-based view's handler,
``method_decorator`` on its dispatch; ``retries=`` re-runs the coroutine on a conflict,
so several writers on one versioned row lose no update."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from django_uow import ConcurrencyError, unit_of_work
from tests.asyncapp import views
from tests.support.aio import run
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)

WRITERS = 6

VIEWS: dict[str, Any] = {
    "function view": views.bump_counter,
    "class-based view, decorated handler": views.CounterView.as_view(),
    "class-based view, method_decorator on dispatch": views.DispatchCounterView.as_view(),
}


@pytest.mark.server_db
@pytest.mark.parametrize("kind", list(VIEWS))
def test_retries_on_an_async_view_lose_no_update_under_contention(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_uow.retry")
    counter = Counter.objects.create(name="hot")
    view = VIEWS[kind]

    async def writers() -> list[HttpResponse]:
        requests = [RequestFactory().post("/") for _ in range(WRITERS)]
        return list(await asyncio.gather(*(view(r, pk=counter.pk) for r in requests)))

    responses = run(writers)
    assert [r.status_code for r in responses] == [200] * WRITERS
    counter.refresh_from_db()
    assert counter.value == WRITERS  # every writer's +1 is there
    assert sorted(json.loads(r.content)["value"] for r in responses) == list(range(1, WRITERS + 1))
    retried = [r for r in caplog.records if r.getMessage().startswith("Retrying")]
    assert retried, "the writers never met: the test proves nothing"
    if kind != "function view":
        assert all(json.loads(r.content)["unit"] for r in responses)


def test_without_retries_the_conflict_reaches_the_caller_and_nothing_is_written() -> None:
    counter = Counter.objects.create(name="stale")

    @unit_of_work
    async def stale_write() -> None:
        copy = await Counter.objects.aget(pk=counter.pk)
        await Counter.objects.filter(pk=counter.pk).aupdate(version=copy.version + 1)
        copy.value = 99
        await copy.asave()

    with pytest.raises(ConcurrencyError):
        run(stale_write)
    counter.refresh_from_db()
    assert counter.value == 0


def test_rollback_if_on_an_async_view_rolls_back_and_returns_the_response() -> None:
    counter = Counter.objects.create(name="kept")

    @unit_of_work(rollback_if=lambda response: response.status_code >= 400)
    async def refuse() -> HttpResponse:
        copy = await Counter.objects.aget(pk=counter.pk)
        copy.value = 5
        await copy.asave()
        return HttpResponse(status=409)

    assert run(refuse).status_code == 409
    counter.refresh_from_db()
    assert (counter.value, counter.version) == (0, 1)
