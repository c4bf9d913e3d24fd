"""Domain events: stable names, the registry, JSON payloads, envelopes, schema evolution."""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_uow import (
    DomainEvent,
    Envelope,
    EventSerializationError,
    UnitOfWork,
    UnknownEventType,
    event_context,
)
from django_uow.events.base import StagedEvent, registry
from django_uow.models import OutboxEvent
from tests.testapp.events import CustomerRenamed, OrderCancelled, OrderPaid, OrderPlaced, Pinged
from tests.testapp.models import Order


def test_default_event_type_is_app_label_and_class_name() -> None:
    assert OrderPlaced.event_type == "testapp.OrderPlaced"
    assert registry.get("testapp.OrderPlaced") is OrderPlaced


def test_explicit_event_type_is_kept() -> None:
    assert OrderCancelled.event_type == "orders.cancelled"
    assert registry.get("orders.cancelled") is OrderCancelled


def test_two_classes_claiming_one_name_is_an_error() -> None:
    with pytest.raises(
        ImproperlyConfigured, match=r"Two DomainEvent classes claim event type 'orders.cancelled'"
    ):

        @dataclass(frozen=True)
        class Impostor(DomainEvent):
            event_type = "orders.cancelled"

    assert registry.get("orders.cancelled") is OrderCancelled


def test_unknown_event_type_names_itself_and_the_remedy() -> None:
    with pytest.raises(UnknownEventType, match=r"'shop.Vanished'.*Import the module"):
        registry.get("shop.Vanished")


def test_payload_uses_django_json_rules_and_round_trips_typed() -> None:
    when = timezone.now().replace(microsecond=0)
    ref = uuid.uuid4()
    staged = StagedEvent.from_event(OrderPaid(order_id=7, paid_at=when))
    assert staged.payload == {"order_id": 7, "paid_at": when.isoformat().replace("+00:00", "Z")}
    assert OrderPaid.from_payload(staged.payload) == OrderPaid(order_id=7, paid_at=when)

    placed = StagedEvent.from_event(OrderPlaced(order_id=1, total=Decimal("9.50")))
    assert placed.payload == {"order_id": 1, "total": "9.50"}
    rebuilt = OrderPlaced.from_payload(placed.payload)
    assert rebuilt.total == Decimal("9.50") and isinstance(rebuilt.total, Decimal)

    pinged = Pinged.from_payload(StagedEvent.from_event(Pinged(note="n", ref=ref)).payload)
    assert pinged.ref == ref


@pytest.mark.django_db(transaction=True)
def test_unserializable_field_fails_at_record_time_and_nothing_commits() -> None:
    order = Order.objects.create(total=1)
    with pytest.raises(EventSerializationError) as excinfo, UnitOfWork():
        order.status = "placed"
        order.save()
        order.record_event(Pinged(note="x", extra={"when": object()}))
    message = str(excinfo.value)
    assert "'testapp.Pinged'" in message and "'extra'" in message
    assert excinfo.value.event_type == "testapp.Pinged"
    assert excinfo.value.field == "extra"
    assert order.pending_events == []
    order.refresh_from_db()
    assert order.status == "new"
    assert OutboxEvent.objects.count() == 0


def test_model_instance_in_a_field_is_refused_with_advice() -> None:
    with pytest.raises(EventSerializationError, match=r"field 'note' holds a Order .*pk instead"):
        StagedEvent.from_event(Pinged(note=Order(total=1)))  # type: ignore[arg-type]


def test_record_event_requires_a_dataclass_domain_event() -> None:
    class NotADataclass(DomainEvent):
        event_type = "tests.NotADataclass"

    with pytest.raises(TypeError, match="must be a dataclass"):
        StagedEvent.from_event(NotADataclass())
    with pytest.raises(TypeError, match="takes a DomainEvent instance, got dict"):
        StagedEvent.from_event({"order_id": 1})  # type: ignore[arg-type]


def test_headers_carry_schema_version_correlation_and_causation() -> None:
    cause = str(uuid.uuid4())
    with event_context(correlation_id="corr-1", causation_id=cause):
        staged = StagedEvent.from_event(CustomerRenamed(customer_id=1, full_name="Ada"))
    assert staged.headers["schema_version"] == 2
    assert staged.headers["correlation_id"] == "corr-1"
    assert staged.headers["causation_id"] == cause


def test_upcaster_turns_an_old_payload_into_the_current_shape() -> None:
    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type=CustomerRenamed.event_type,
        aggregate_type="crm.customer",
        aggregate_id="1",
        aggregate_version=3,
        occurred_at=timezone.now(),
        payload={"customer_id": 1, "name": "Ada Lovelace"},
        headers={"schema_version": 1},
    )
    assert envelope.to_event() == CustomerRenamed(customer_id=1, full_name="Ada Lovelace")


def test_old_payload_without_an_upcaster_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"OrderPaid is at schema version 1 .* define OrderPaid.upcast"
    ):
        OrderPaid.from_payload({"order_id": 1}, version=0)


def test_envelope_message_round_trip() -> None:
    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type="testapp.OrderPaid",
        aggregate_type="testapp.order",
        aggregate_id="5",
        aggregate_version=2,
        occurred_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        payload={"order_id": 5, "paid_at": None},
        headers={"schema_version": 1, "correlation_id": "c"},
    )
    assert Envelope.from_message(envelope.to_message()) == envelope
    assert envelope.to_event() == OrderPaid(order_id=5)
    assert envelope.correlation_id == "c"
