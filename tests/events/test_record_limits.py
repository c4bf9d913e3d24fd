"""What a database would refuse at COMMIT is refused at ``record_event()``, alike on every
database: too-long event types and aggregate ids, NUL and lone surrogates in headers,
dict keys that collide in JSON; and floats are stored as every database reads them back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from django_uow import DomainEvent, EventSerializationError, UnitOfWork, event_context
from django_uow.events.base import StagedEvent
from django_uow.models import OutboxEvent
from tests.testapp.events import OrderPlaced, Pinged
from tests.testapp.models import Order, Ticket

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class LongNamed(DomainEvent):
    event_type = "limits." + "x" * 300
    needs_handler = False
    n: int = 0


@dataclass(frozen=True)
class Reading(DomainEvent):
    event_type = "limits.Reading"
    needs_handler = False
    value: float
    raw: Any = None


def stored(event_id: Any) -> OutboxEvent:
    row = OutboxEvent.objects.get(event_id=event_id)
    row.refresh_from_db()
    return row


def test_an_event_type_longer_than_its_column_is_refused_before_commit() -> None:
    with pytest.raises(EventSerializationError) as caught, UnitOfWork() as uow:
        Order.objects.create(note="kept?")
        uow.record_event(LongNamed())
    message = str(caught.value)
    assert "its event type is 307 characters long" in message
    assert "limit of 255" in message and "shorter value" in message
    assert not Order.objects.exists() and not OutboxEvent.objects.exists()


def test_an_aggregate_id_longer_than_its_column_is_refused_at_record_event() -> None:
    code = "T" * 300
    with UnitOfWork():
        ticket = Ticket.objects.create(code=code)
        with pytest.raises(EventSerializationError, match=r"its aggregate id is 300 characters"):
            ticket.record_event(Pinged(note="n"))
        assert ticket.pending_events == []  # nothing staged by the refused call
    # Refused before COMMIT: the unit's business change was committed, not lost with it.
    assert Ticket.objects.get().code == code
    assert not OutboxEvent.objects.exists()


def test_a_pk_given_after_record_event_is_checked_before_the_insert() -> None:
    with pytest.raises(EventSerializationError, match=r"its aggregate id is 300 characters"):
        with UnitOfWork():
            ticket = Ticket(code="")
            ticket.code = None  # type: ignore[assignment]
            ticket.record_event(Pinged(note="n"))
            ticket.code = "T" * 300
            ticket.save()
    assert not Ticket.objects.exists() and not OutboxEvent.objects.exists()


@pytest.mark.parametrize(
    ("correlation_id", "problem"),
    [("corr\x00id", "NUL character"), ("corr\udc80id", "lone surrogate")],
)
def test_a_nul_or_lone_surrogate_in_a_correlation_id_is_refused(
    correlation_id: str, problem: str
) -> None:
    with pytest.raises(EventSerializationError) as caught:
        with UnitOfWork(), event_context(correlation_id=correlation_id):
            Order.objects.create().place()
    assert f"its header 'correlation_id' holds text with a {problem}" in str(caught.value)
    assert not Order.objects.exists() and not OutboxEvent.objects.exists()


def test_dict_keys_that_collide_in_json_are_refused() -> None:
    with pytest.raises(EventSerializationError) as caught:
        StagedEvent.from_event(Pinged(note="n", extra={"inner": {1: "int", "1": "str"}}))
    message = str(caught.value)
    assert "'extra', at 'extra.inner'" in message
    assert "has the keys 1 and '1'" in message and "same key '1'" in message
    # Keys of one type, or of types that write differently, are fine.
    StagedEvent.from_event(Pinged(note="n", extra={"a": {1: "x", 2: "y"}, "b": {True: 1, "1": 2}}))


@pytest.mark.parametrize(
    ("value", "text", "back"),
    [
        (1e20, "100000000000000000000", 10**20),
        (-1.5e300, str(int(-1.5e300)), int(-1.5e300)),
        (-0.0, "0.0", 0.0),
        (1e15, "1000000000000000.0", 1e15),
        (0.1, "0.1", 0.1),
    ],
)
def test_floats_come_back_alike_on_every_database(value: float, text: str, back: Any) -> None:
    with UnitOfWork() as uow:
        uow.record_event(Reading(value=value, raw=[value, {"v": value}]))
    row = OutboxEvent.objects.get()
    assert row.payload == {"value": back, "raw": [back, {"v": back}]}
    assert type(row.payload["value"]) is type(back)
    assert json.dumps(row.payload["value"]) == text
    assert Reading.from_payload(row.payload).value == float(value)  # the field is a float again


def test_a_string_that_looks_like_an_exponent_is_left_alone() -> None:
    staged = StagedEvent.from_event(Pinged(note="1e+20 and -0.0", extra={"k": "2e+30"}))
    assert staged.payload == {"note": "1e+20 and -0.0", "ref": None, "extra": {"k": "2e+30"}}


def test_ordinary_events_still_record_and_keep_their_text() -> None:
    with UnitOfWork():
        Order.objects.create(total=Decimal("5")).place()
    row = OutboxEvent.objects.get()
    assert row.payload == {"order_id": row.payload["order_id"], "total": "5"}
    assert OrderPlaced.from_payload(row.payload).total == 5
