"""``unit_of_work`` decorates any callable: a sync one runs in a unit, an async one in an\nasync unit (``async with UnitOfWork()``); an async generator is refused up front."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import Any

import pytest
from asgiref.sync import markcoroutinefunction, sync_to_async
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.utils.decorators import method_decorator
from django.views import View

from django_uow import current_uow, unit_of_work
from django_uow.testing import simulate_conflict
from django_uow.uow.decorator import callable_name
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db(transaction=True)


def bump(counter_id: int, by: int, attempts: list[int]) -> int:
    """Increment a counter; the first attempt finds its copy stale."""
    attempts.append(1)
    counter = Counter.objects.get(pk=counter_id)
    if len(attempts) == 1:
        simulate_conflict(counter)
    counter.value += by
    counter.save()
    return counter.value


class Bumper:
    def __init__(self) -> None:
        self.attempts: list[int] = []

    def __call__(self, counter_id: int) -> int:
        return bump(counter_id, 1, self.attempts)

    def method(self, counter_id: int) -> int:
        return bump(counter_id, 1, self.attempts)


@pytest.fixture
def counter() -> Counter:
    return Counter.objects.create(name="c")


@pytest.mark.parametrize("kind", ["partial", "callable object", "bound method"])
def test_retries_work_for_any_callable(
    kind: str, counter: Counter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="django_uow.retry")
    bumper = Bumper()
    target: Any = {
        "partial": functools.partial(bump, by=1, attempts=bumper.attempts),
        "callable object": bumper,
        "bound method": bumper.method,
    }[kind]
    wrapped = unit_of_work(retries=2, backoff=(0.0, 0.0))(target)

    assert wrapped(counter.pk) == 1
    assert len(bumper.attempts) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.name == "django_uow.retry"]
    assert line.startswith(f"Retrying {callable_name(target)} (attempt 2 of 3)")


def test_callable_names_are_safe_and_useful() -> None:
    assert callable_name(bump) == "bump"
    assert callable_name(functools.partial(functools.partial(bump, by=1))) == "bump"
    assert callable_name(Bumper()) == "Bumper"
    assert callable_name(Bumper().method) == "Bumper.method"

    assert callable_name(functools.partial(Bumper())) == "Bumper"
    assert callable_name(object()) == "object"


# -- async callables run in an async unit of work ---------------------------------------


async def inside() -> str:
    """What code in the unit sees: an open unit, and its connection in the transaction."""
    uow = current_uow()
    in_block = await sync_to_async(lambda: connection.in_atomic_block)()
    return f"unit={uow is not None and uow.is_active} atomic={in_block}"


class AsyncView(View):
    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(await inside())


class AsyncCallable:
    async def __call__(self) -> str:
        return await inside()


async def async_function() -> str:
    return await inside()


def sync_marked_as_async(request: HttpRequest) -> HttpResponse:
    # Called on the event loop's thread: it may look at the unit, not at the database.
    return HttpResponse(f"unit={current_uow() is not None}")


ASYNC_TARGETS: dict[str, tuple[Any, str]] = {
    "async def": (async_function, "unit=True atomic=True"),
    "partial of async def": (functools.partial(async_function), "unit=True atomic=True"),
    "asgiref-marked": (markcoroutinefunction(sync_marked_as_async), "unit=True"),
    "as_view() of an async view": (AsyncView.as_view(), "unit=True atomic=True"),
    "object with async __call__": (AsyncCallable(), "unit=True atomic=True"),
}


def _text(result: Any) -> str:
    return result.content.decode() if isinstance(result, HttpResponse) else str(result)


@pytest.mark.parametrize("name", list(ASYNC_TARGETS))
def test_async_callables_run_in_an_async_unit(name: str) -> None:
    target, expected = ASYNC_TARGETS[name]
    args = (
        ()
        if name in {"async def", "partial of async def", "object with async __call__"}
        else (RequestFactory().get("/"),)
    )
    for decorated in (unit_of_work(target), unit_of_work(retries=2)(target)):
        assert inspect.iscoroutinefunction(decorated)
        assert _text(asyncio.run(decorated(*args))) == expected
    assert current_uow() is None


def test_method_decorator_on_an_async_views_dispatch_runs_in_an_async_unit() -> None:
    @method_decorator(unit_of_work, name="dispatch")
    class Decorated(AsyncView):
        pass

    response = asyncio.run(Decorated.as_view()(RequestFactory().get("/")))
    assert _text(response) == "unit=True atomic=True"


def test_an_async_generator_is_refused_when_decorated() -> None:
    async def rows() -> Any:
        yield 1

    with pytest.raises(TypeError, match="async generator .*rows\\(\\)"):
        unit_of_work(rows)


def test_method_decorator_on_a_sync_views_dispatch_runs_in_a_unit() -> None:
    seen: list[bool] = []

    @method_decorator(unit_of_work, name="dispatch")
    class SyncView(View):
        def get(self, request: HttpRequest) -> HttpResponse:
            seen.append(connection.in_atomic_block)
            return HttpResponse("ok")

    request = HttpRequest()
    request.method = "GET"
    assert SyncView.as_view()(request).status_code == 200
    assert seen == [True]


def test_one_decorator_object_decorates_many_functions() -> None:
    unit = unit_of_work(retries=1)

    @unit
    def first() -> bool:
        return connection.in_atomic_block

    @unit
    def second() -> bool:
        return first()

    assert second() is True
    assert not connection.in_atomic_block
