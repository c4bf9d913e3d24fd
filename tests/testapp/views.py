"""Views for the optimistic-locking HTTP helpers (``tests/locking/test_http.py``)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.generic import DetailView

from django_uow import unit_of_work
from django_uow.http import VersionedViewMixin, conflict_as_409, versioned_view

from .models import Counter


def counter_json(counter: Counter) -> dict[str, Any]:
    return {"name": counter.name, "value": counter.value, "version": counter.version}


def apply_and_respond(request: HttpRequest, counter: Counter) -> HttpResponse:
    """GET shows the counter, PUT sets its value, DELETE deletes it."""
    if request.method == "PUT":
        counter.value = json.loads(request.body)["value"]
        if request.GET.get("race"):
            # Simulates a writer committing between our precondition check and our save.
            Counter.objects.filter(pk=counter.pk).update_versioned(value=-1)
        unit_of_work(counter.save)()
    elif request.method == "DELETE":
        counter.delete()
        return HttpResponse(status=204)
    return JsonResponse(counter_json(counter))


@versioned_view(Counter)
def counter_resource(request: HttpRequest, counter: Counter) -> HttpResponse:
    return apply_and_respond(request, counter)


@versioned_view(Counter, require_if_match=True)
def strict_counter_resource(request: HttpRequest, counter: Counter) -> HttpResponse:
    return apply_and_respond(request, counter)


@versioned_view(Counter.objects.filter(value__gte=0), url_kwarg="name", lookup_field="name")
def counter_by_name(request: HttpRequest, counter: Counter) -> HttpResponse:
    return apply_and_respond(request, counter)


@conflict_as_409
def save_stale_copy(request: HttpRequest, pk: int) -> HttpResponse:
    """Loads the counter, lets someone else save it, then saves the stale copy."""
    stale = Counter.objects.get(pk=pk)
    fresh = Counter.objects.get(pk=pk)
    fresh.save()
    stale.value += 1
    unit_of_work(stale.save)()
    return HttpResponse("unreachable")


class CounterView(VersionedViewMixin, DetailView):  # type: ignore[type-arg]
    model = Counter

    def get(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return JsonResponse(counter_json(self.get_object()))

    def put(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return apply_and_respond(request, self.get_object())


class StrictCounterView(CounterView):
    require_if_match = True


@unit_of_work
def note_order(request: HttpRequest, pk: int) -> HttpResponse:
    """Record an OrderNoted event on an order (the audit tests)."""
    from .events import OrderNoted
    from .models import Order

    order = Order.objects.get(pk=pk)
    order.record_event(OrderNoted(order_id=order.pk, text=request.POST.get("text", "")))
    order.save()
    return HttpResponse("noted")
