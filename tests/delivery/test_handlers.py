"""``@event_handler``: registry, typed events, envelopes, idempotency, causation chains."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_uow import DomainEvent, Envelope, UnitOfWork
from django_uow.delivery.handlers import event_handler, handlers_for, registry
from django_uow.delivery.running import run_handler
from django_uow.models import OutboxEvent, ProcessedEvent
from tests.testapp.events import CustomerRenamed, OrderPlaced, Pinged
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db


@pytest.fixture
def temp_handlers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


def envelope_for(event: DomainEvent, **overrides: Any) -> Envelope:
    values: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "event_type": type(event).event_type,
        "aggregate_type": "testapp.order",
        "aggregate_id": "7",
        "aggregate_version": 2,
        "occurred_at": timezone.now(),
        "payload": event.to_payload(),
        "headers": {"schema_version": type(event).event_version, "correlation_id": "corr-1"},
    }
    values.update(overrides)
    return Envelope(**values)


def test_handlers_of_installed_apps_are_discovered() -> None:
    names = {h.name for h in handlers_for(OrderPlaced.event_type)}
    assert names == {"testapp.record_placed"}


def test_default_name_is_module_and_qualname(temp_handlers: list[str]) -> None:
    @event_handler(Pinged)
    def noop(event: Pinged) -> None: ...

    handler = noop.event_handler  # type: ignore[attr-defined]
    temp_handlers.append(handler.name)
    assert handler.name == f"{__name__}.test_default_name_is_module_and_qualname.<locals>.noop"
    assert handler.idempotent and handler.queue is None and not handler.wants_envelope


def test_duplicate_names_are_refused(temp_handlers: list[str]) -> None:
    @event_handler(Pinged, name="dup.handler")
    def first(event: Pinged) -> None: ...

    temp_handlers.append("dup.handler")
    with pytest.raises(ImproperlyConfigured, match="Two event handlers are named 'dup.handler'"):

        @event_handler(Pinged, name="dup.handler")
        def second(event: Pinged) -> None: ...


def test_event_handler_needs_an_event_class() -> None:
    with pytest.raises(TypeError, match="DomainEvent subclass"):
        event_handler("testapp.OrderPlaced")  # type: ignore[arg-type]


def test_handler_receives_the_typed_event_and_envelope(temp_handlers: list[str]) -> None:
    got: list[Any] = []

    @event_handler(OrderPlaced, name="t.typed", idempotent=False)
    def typed(event: OrderPlaced, envelope: Envelope) -> None:
        got.append((event, envelope))

    temp_handlers.append("t.typed")
    env = envelope_for(OrderPlaced(order_id=7, total=Decimal("9.50")))
    run_handler(registry.get("t.typed"), env)
    ((event, envelope),) = got
    assert event == OrderPlaced(order_id=7, total=Decimal("9.50"))
    assert isinstance(event.total, Decimal)
    assert envelope is env


def test_old_schema_versions_are_upcast(temp_handlers: list[str]) -> None:
    got: list[CustomerRenamed] = []

    @event_handler(CustomerRenamed, name="t.upcast", idempotent=False)
    def renamed(event: CustomerRenamed) -> None:
        got.append(event)

    temp_handlers.append("t.upcast")
    env = envelope_for(
        CustomerRenamed(customer_id=1, full_name="x"),
        payload={"customer_id": 1, "name": "Ada Lovelace"},
        headers={"schema_version": 1},
    )
    run_handler(registry.get("t.upcast"), env)
    assert got == [CustomerRenamed(customer_id=1, full_name="Ada Lovelace")]


def test_idempotent_handler_has_its_effect_once() -> None:
    env = envelope_for(OrderPlaced(order_id=7, total=Decimal("1")))
    handler = registry.get("testapp.record_placed")
    assert run_handler(handler, env) is True
    assert run_handler(handler, env) is False  # redelivery
    assert Effect.objects.filter(event_id=env.event_id).count() == 1
    assert ProcessedEvent.objects.filter(
        event_id=env.event_id, handler="testapp.record_placed"
    ).exists()


def test_a_handler_that_raises_keeps_no_effect_and_its_row_says_retrying(
    temp_handlers: list[str],
) -> None:
    calls = []

    @event_handler(Pinged, name="t.flaky")
    def flaky(event: Pinged, envelope: Envelope) -> None:
        calls.append(1)
        Effect.objects.create(event_id=envelope.event_id, handler="flaky")
        if len(calls) == 1:
            raise RuntimeError("first time fails")

    temp_handlers.append("t.flaky")
    env = envelope_for(Pinged(note="x"), aggregate_type="", aggregate_id="")
    with pytest.raises(RuntimeError):
        run_handler(registry.get("t.flaky"), env)
    assert not Effect.objects.exists()
    # The failure is written outside the rolled-back transaction; nothing says succeeded.
    row = ProcessedEvent.objects.get()
    assert (row.status, row.attempts, row.processed_at) == ("retrying", 1, None)
    assert row.last_error == "RuntimeError: first time fails"
    assert "first time fails" in row.traceback and "flaky" in row.traceback
    assert run_handler(registry.get("t.flaky"), env) is True
    assert Effect.objects.count() == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("succeeded", 2)
    assert row.processed_at is not None and row.first_attempt_at is not None


def test_non_idempotent_handler_runs_every_time() -> None:
    from tests.testapp.events import OrderPaid

    env = envelope_for(OrderPaid(order_id=3))
    handler = registry.get("testapp.record_paid")
    run_handler(handler, env)
    run_handler(handler, env)
    assert Effect.objects.filter(handler="paid").count() == 2
    # Not idempotent: no skip, but its outcome is recorded after each run.
    row = ProcessedEvent.objects.get()
    assert (row.handler, row.status, row.attempts) == ("testapp.record_paid", "succeeded", 2)


def test_events_recorded_by_a_handler_point_back_to_their_cause(
    temp_handlers: list[str],
) -> None:
    @event_handler(OrderPlaced, name="t.chain")
    def chain(event: OrderPlaced) -> None:
        with UnitOfWork() as uow:
            uow.record_event(Pinged(note="follow-up"))

    temp_handlers.append("t.chain")
    env = envelope_for(OrderPlaced(order_id=7, total=Decimal("1")))
    run_handler(registry.get("t.chain"), env)
    follow_up = OutboxEvent.objects.get(event_type=Pinged.event_type)
    assert follow_up.headers["causation_id"] == str(env.event_id)
    assert follow_up.headers["correlation_id"] == "corr-1"


def test_unknown_handler_name_is_a_clear_error() -> None:
    with pytest.raises(LookupError, match="No event handler is registered under the name 'x.y'"):
        registry.get("x.y")


@dataclass(frozen=True)
class _Local(DomainEvent):
    event_type = "tests.local_event"
    at: datetime.datetime


def test_handlers_for_an_event_without_handlers_is_empty() -> None:
    assert handlers_for(_Local.event_type) == []


def test_inbox_fallback_without_on_conflict_returning(monkeypatch: pytest.MonkeyPatch) -> None:
    # Databases without INSERT ... ON CONFLICT ... RETURNING use a savepoint instead.
    from django_uow.delivery import rows as deliveries

    monkeypatch.setattr(deliveries, "_can_upsert", lambda connection: False)
    env = envelope_for(OrderPlaced(order_id=7, total=Decimal("1")))
    handler = registry.get("testapp.record_placed")
    assert run_handler(handler, env) is True
    assert run_handler(handler, env) is False
    assert Effect.objects.filter(event_id=env.event_id).count() == 1
