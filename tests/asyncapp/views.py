"""Async views, each a unit of work: served by a real ASGI server in the system tests and
called in-process by the others."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View

from django_uow import UnitOfWork, current_uow, unit_of_work
from tests.testapp.events import OrderBumped, Pinged
from tests.testapp.models import Counter, Note, Order

#: Requests of one round wait here until all of them have written (the server's loop).
_BARRIERS: dict[str, asyncio.Barrier] = {}


def _failed(response: HttpResponse) -> bool:
    return response.status_code >= 400


@unit_of_work(rollback_if=_failed)
async def isolation(request: HttpRequest, round_: str, number: int) -> JsonResponse:
    """Write a note and an order's event, wait until every request of the round has
    written, look at the round's notes, and wait until every request has looked: none
    has committed yet, so each must see its own note only. Odd numbers then roll back
    (409)."""
    size = int(request.GET["size"])
    written = _BARRIERS.setdefault(f"{round_}:written", asyncio.Barrier(size))
    read = _BARRIERS.setdefault(f"{round_}:read", asyncio.Barrier(size))
    await Note.objects.acreate(text=f"{round_}:{number}")
    order = await Order.objects.acreate(total=Decimal(number))
    order.place()
    await order.asave()
    async with asyncio.timeout(20):
        await written.wait()  # every unit of the round has written, none has committed
    seen = [
        text
        async for text in Note.objects.filter(text__startswith=f"{round_}:").values_list(
            "text", flat=True
        )
    ]
    async with asyncio.timeout(20):
        await read.wait()  # every unit has looked before any commits
    status = 409 if number % 2 else 200
    return JsonResponse({"order": order.pk, "seen": seen}, status=status)


@unit_of_work(retries=30, backoff=(0.001, 0.02))
async def bump_counter(request: HttpRequest, pk: int) -> JsonResponse:
    """Read, wait a moment (other writers read the same version), write: a lost update
    unless the version check and ``retries=`` re-run it."""
    counter = await Counter.objects.aget(pk=pk)
    await asyncio.sleep(0.005)
    counter.value += 1
    await counter.asave()
    return JsonResponse({"value": counter.value})


@unit_of_work(retries=500, backoff=(0.001, 0.05))
async def bump_order(request: HttpRequest, pk: int) -> JsonResponse:
    """One ``OrderBumped`` on a hot aggregate (many writers on one order)."""
    order = await Order.objects.aget(pk=pk)
    order.record_event(OrderBumped(order_id=order.pk, seq=int(request.GET.get("seq", 0))))
    await order.asave()
    return JsonResponse({"version": order.version})


@unit_of_work
async def place_order(request: HttpRequest) -> JsonResponse:
    order = await Order.objects.acreate(total=Decimal("5"))
    order.place()
    await order.asave()
    return JsonResponse({"order": order.pk})


async def slow(request: HttpRequest, text: str) -> HttpResponse:
    """A unit that outlives its client: a disconnect cancels it mid-unit."""
    async with UnitOfWork() as uow:
        uow.record_event(Pinged(note=text))
        await Note.objects.acreate(text=text)
        await asyncio.sleep(30)
    return HttpResponse("finished")


def _in_unit() -> dict[str, Any]:
    uow = current_uow()
    return {"unit": uow is not None and uow.is_active}


class CounterView(View):
    """An async class-based view whose handler is decorated."""

    @unit_of_work(retries=30, backoff=(0.001, 0.02))
    async def post(self, request: HttpRequest, pk: int) -> JsonResponse:
        counter = await Counter.objects.aget(pk=pk)
        await asyncio.sleep(0.005)
        counter.value += 1
        await counter.asave()
        return JsonResponse({"value": counter.value, **_in_unit()})


@method_decorator(unit_of_work(retries=30, backoff=(0.001, 0.02)), name="dispatch")
class DispatchCounterView(View):
    """An async class-based view whose dispatch is decorated with ``method_decorator``."""

    async def post(self, request: HttpRequest, pk: int) -> JsonResponse:
        counter = await Counter.objects.aget(pk=pk)
        await asyncio.sleep(0.005)
        counter.value += 1
        await counter.asave()
        return JsonResponse({"value": counter.value, **_in_unit()})


def sync_place_order(request: HttpRequest) -> JsonResponse:
    """The sync twin of ``place_order`` (the benchmark compares the two)."""
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("5"))
        order.place()
        order.save()
    return JsonResponse({"order": order.pk})
