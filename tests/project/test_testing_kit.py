"""``django_uow.testing``: capture events, drain the outbox, simulate a version conflict."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from django_uow import ConcurrencyError, UnitOfWork
from django_uow.models import OutboxEvent
from django_uow.testing import CapturedEvents, capture_events, drain_outbox, simulate_conflict
from tests.testapp.events import OrderPaid, OrderPlaced
from tests.testapp.models import Counter, Effect, Order

pytestmark = pytest.mark.django_db


def test_capture_events_sees_typed_events_in_record_order() -> None:
    with capture_events() as captured:
        with UnitOfWork():
            order = Order.objects.create(total=Decimal("4.00"))
            order.place()
            order.pay()
            order.save()
    assert captured.types == ["testapp.OrderPlaced", "testapp.OrderPaid"]
    assert captured.events[0] == OrderPlaced(order_id=order.pk, total=Decimal("4.00"))
    assert captured.of_type(OrderPaid) == [OrderPaid(order_id=order.pk)]
    assert len(captured) == 2


def test_capture_events_sees_nothing_from_a_rolled_back_block() -> None:
    with capture_events() as captured, UnitOfWork() as uow:
        order = Order.objects.create(total=Decimal("1"))
        order.place()
        order.save()
        uow.rollback()
    assert len(captured) == 0


def test_capture_stops_at_the_end_of_the_block() -> None:
    with capture_events() as captured:
        pass
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("1"))
        order.place()
        order.save()
    assert len(captured) == 0


def test_drain_outbox_runs_handlers_synchronously() -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("1"))
        order.place()
        order.save()
    summary = drain_outbox()
    assert (summary.relayed, summary.left) == (1, 0)
    assert Effect.objects.get().aggregate_id == str(order.pk)
    assert OutboxEvent.objects.get().status == "dispatched"


def test_simulate_conflict_makes_the_next_save_fail() -> None:
    counter = Counter.objects.create(name="c")
    simulate_conflict(counter)
    counter.value = 5
    with pytest.raises(ConcurrencyError, match="expected version 1"), transaction.atomic():
        counter.save()
    assert Counter.objects.get().value == 0


def test_simulate_conflict_needs_a_stored_row() -> None:
    with pytest.raises(LookupError, match="save it first"):
        simulate_conflict(Counter(name="never-saved", pk=999))


def test_fixtures(uow_events: CapturedEvents, uow_drain: Any) -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("2"))
        order.place()
        order.save()
    assert uow_events.types == ["testapp.OrderPlaced"]
    assert uow_drain().relayed == 1
