"""Typed decode from the dataclass annotations: every supported type survives a real commit
and relay; a payload that does not fit is a permanent failure with a clear message."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Optional

import pytest
from django.utils import timezone

from django_uow import (
    DomainEvent,
    Envelope,
    EventDecodeError,
    PermanentFailure,
    UnitOfWork,
    UnitOfWorkError,
    UnknownEventType,
)
from django_uow.delivery.handlers import event_handler, registry
from django_uow.events.base import registry as event_registry
from django_uow.models import OutboxEvent
from django_uow.testing import drain_outbox
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


class Colour(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling, decoded too
    RED = "red"
    GREEN = "green"


class Size(enum.StrEnum):
    S = "s"
    L = "l"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Shape(enum.Enum):
    """A plain Enum (no str/int mixin) is stored as its value too."""

    ROUND = "round"
    SQUARE = 4


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int
    price: Decimal


@dataclass(frozen=True)
class Address:
    street: str
    postcode: str | None = None
    lines: tuple[Line, ...] = ()


@dataclass(frozen=True)
class EverythingHappened(DomainEvent):
    event_type = "payloads.EverythingHappened"

    amount: Decimal
    amounts: list[Decimal]
    ref: uuid.UUID
    refs: tuple[uuid.UUID, ...]
    pair: tuple[int, str]
    tags: set[str]
    codes: frozenset[int]
    by_sku: dict[str, Decimal]
    by_number: dict[int, datetime.date]
    at: datetime.datetime
    on: datetime.date
    clock: datetime.time
    took: datetime.timedelta
    colour: Colour
    size: Size
    priority: Priority
    shape: Shape
    colours: list[Colour]
    address: Address
    lines: list[Line]
    line_by_sku: dict[str, Line]
    maybe_amount: Decimal | None
    maybe_line: Optional[Line]  # noqa: UP045 - the typing spelling is decoded too
    either: int | str
    mode: Literal["fast", "slow"]
    count: int
    ratio: float
    flag: bool
    anything: Any
    note: str | None = None
    nested_lists: list[list[int]] = field(default_factory=list)


AT = datetime.datetime(2026, 3, 4, 5, 6, 7, 123000, tzinfo=datetime.UTC)
EVERYTHING = EverythingHappened(
    amount=Decimal("19.99"),
    amounts=[Decimal("1.10"), Decimal("0.000001"), Decimal("-3")],
    ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    refs=(uuid.UUID(int=1), uuid.UUID(int=2)),
    pair=(7, "seven"),
    tags={"b", "a", "c"},
    codes=frozenset({3, 1, 2}),
    by_sku={"CHAIR": Decimal("10.50"), "LAMP": Decimal("0")},
    by_number={1: datetime.date(2026, 1, 1), 20: datetime.date(2026, 12, 31)},
    at=AT,
    on=datetime.date(2026, 2, 28),
    clock=datetime.time(13, 14, 15, 250000),
    took=datetime.timedelta(days=2, hours=3, microseconds=17),
    colour=Colour.GREEN,
    size=Size.L,
    priority=Priority.HIGH,
    shape=Shape.SQUARE,
    colours=[Colour.RED, Colour.GREEN],
    address=Address("1 Main St", None, (Line("X", 1, Decimal("1.00")),)),
    lines=[Line("A", 2, Decimal("3.50")), Line("B", 1, Decimal("0.99"))],
    line_by_sku={"A": Line("A", 2, Decimal("3.50"))},
    maybe_amount=None,
    maybe_line=Line("M", 5, Decimal("5")),
    either="forty-two",
    mode="slow",
    count=3,
    ratio=0.25,
    flag=True,
    anything={"free": ["form", 1]},
    note="café \U0001f600",
    nested_lists=[[1, 2], [], [3]],
)

RECEIVED: list[tuple[DomainEvent, Envelope]] = []


@pytest.fixture
def receiving() -> Iterator[list[tuple[DomainEvent, Envelope]]]:
    RECEIVED.clear()
    names = []
    for event_class in (EverythingHappened, Charged, Versioned):

        @event_handler(event_class, idempotent=False, name=f"payloads.{event_class.__name__}")
        def receive(event: DomainEvent, envelope: Envelope) -> None:
            RECEIVED.append((event, envelope))

        names.append(f"payloads.{event_class.__name__}")
    yield RECEIVED
    for name in names:
        registry.unregister(name)
    RECEIVED.clear()


# ----------------------------------------------------------------------- round trips


def test_every_supported_type_round_trips_through_commit_and_relay(
    receiving: list[tuple[DomainEvent, Envelope]],
) -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork():
        order.record_event(EVERYTHING)
        order.save()
    summary = drain_outbox()
    assert (summary.relayed, summary.failed) == (1, 0)
    [(event, envelope)] = receiving
    assert event == EVERYTHING
    assert isinstance(event, EverythingHappened)
    # Types, not just equal values (a str-Enum equals its str, an IntEnum its int).
    assert type(event.colour) is Colour and type(event.size) is Size
    assert type(event.priority) is Priority and type(event.shape) is Shape
    assert all(type(c) is Colour for c in event.colours)
    assert all(type(a) is Decimal for a in event.amounts)
    assert type(event.refs) is tuple and all(type(r) is uuid.UUID for r in event.refs)
    assert type(event.tags) is set and type(event.codes) is frozenset
    assert all(type(k) is int for k in event.by_number)
    assert all(type(v) is datetime.date for v in event.by_number.values())
    assert type(event.address) is Address and type(event.address.lines[0]) is Line
    assert type(event.address.lines) is tuple
    assert all(type(line.price) is Decimal for line in event.lines)
    assert type(event.line_by_sku["A"]) is Line and type(event.maybe_line) is Line
    assert event.at == AT and event.at.tzinfo is not None
    # Stored shape: enums as their values, sets as sorted lists, nested dataclasses as objects.
    stored = OutboxEvent.objects.get().payload
    assert envelope.payload == stored
    assert (stored["colour"], stored["size"], stored["priority"], stored["shape"]) == (
        "green",
        "l",
        2,
        4,
    )
    assert stored["tags"] == ["a", "b", "c"] and stored["codes"] == [1, 2, 3]
    assert stored["lines"][0] == {"sku": "A", "qty": 2, "price": "3.50"}
    assert stored["by_number"] == {"1": "2026-01-01", "20": "2026-12-31"}


def test_the_unit_of_works_record_event_round_trips_too(
    receiving: list[tuple[DomainEvent, Envelope]],
) -> None:
    with UnitOfWork() as uow:
        uow.record_event(EVERYTHING)
    drain_outbox()
    assert [event for event, _ in receiving] == [EVERYTHING]


def test_from_payload_accepts_values_that_are_already_typed() -> None:
    payload = dataclasses.asdict(EVERYTHING)
    assert EverythingHappened.from_payload(payload) == EVERYTHING


# ----------------------------------------------------------------------- strictness


@dataclass(frozen=True)
class Charged(DomainEvent):
    event_type = "payloads.Charged"

    amount: Decimal
    count: int
    at: datetime.datetime | None = None
    lines: list[Line] = field(default_factory=list)
    colour: Colour = Colour.RED


def charged(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"amount": "9.50", "count": 2, "at": None, "lines": []}
    payload.update(changes)
    return payload


MISFITS: list[tuple[str, dict[str, Any], str]] = [
    (
        "garbage Decimal",
        charged(amount="abc"),
        "payload field 'amount' is not a valid Decimal: 'abc'",
    ),
    ("NaN Decimal", charged(amount="NaN"), "payload field 'amount' is not a valid Decimal: 'NaN'"),
    ("str for an int", charged(count="1"), "payload field 'count' is not a valid int: '1'"),
    ("float for an int", charged(count=1.5), "payload field 'count' is not a valid int: 1.5"),
    ("bool for an int", charged(count=True), "payload field 'count' is not a valid int: True"),
    ("null for an int", charged(count=None), "payload field 'count' is not a valid int: None"),
    (
        "garbage datetime",
        charged(at="yesterday-ish"),
        "payload field 'at' is not a valid datetime: 'yesterday-ish'",
    ),
    (
        "impossible datetime",
        charged(at="2026-02-30T10:00:00Z"),
        "payload field 'at' is not a valid datetime: '2026-02-30T10:00:00Z'",
    ),
    ("missing field", {"amount": "1"}, "payload has no field 'count'"),
    ("not a list", charged(lines={"sku": "A"}), "payload field 'lines' is not a valid list"),
    (
        "bad nested value",
        charged(
            lines=[{"sku": "A", "qty": 1, "price": "1"}, {"sku": "B", "qty": "x", "price": "1"}]
        ),
        "payload field 'lines[1].qty' is not a valid int: 'x'",
    ),
    (
        "nested field missing",
        charged(lines=[{"sku": "A", "price": "1"}]),
        "payload has no field 'lines[0].qty'",
    ),
    (
        "unknown enum value",
        charged(colour="blue"),
        "payload field 'colour' is not a valid Colour: 'blue'",
    ),
    ("payload not an object", ["amount"], "payload is not a JSON object"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("case", "payload", "message"), MISFITS, ids=[c for c, _, _ in MISFITS])
def test_a_payload_that_does_not_fit_is_a_clear_permanent_error(
    case: str, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(EventDecodeError) as excinfo:
        Charged.from_payload(payload)
    error = excinfo.value
    assert message in str(error)
    assert "'payloads.Charged'" in str(error)
    assert error.event_type == "payloads.Charged"
    assert isinstance(error, PermanentFailure) and isinstance(error, UnitOfWorkError)


def test_unknown_extra_fields_are_ignored_by_the_event_and_kept_in_the_envelope() -> None:
    payload = {
        **charged(),
        "coupon": "SPRING",
        "lines": [{"sku": "A", "qty": 1, "price": "2", "x": 1}],
    }
    envelope = Envelope(
        event_id=uuid.uuid4(),
        event_type=Charged.event_type,
        aggregate_type="",
        aggregate_id="",
        aggregate_version=None,
        occurred_at=timezone.now(),
        payload=payload,
        headers={"schema_version": 1},
    )
    assert envelope.to_event() == Charged(
        amount=Decimal("9.50"), count=2, lines=[Line("A", 1, Decimal("2"))]
    )
    assert envelope.payload["coupon"] == "SPRING"
    assert envelope.payload["lines"][0]["x"] == 1


@dataclass(frozen=True)
class Versioned(DomainEvent):
    """Version 2 moved the currency from an extra field into ``amount``."""

    event_type = "payloads.Versioned"
    event_version = 2

    amount: str

    @classmethod
    def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
        if version == 1:
            payload = {**payload, "amount": f"{payload['amount']} {payload['currency']}"}
        return payload


def test_upcasters_see_extra_fields(receiving: list[tuple[DomainEvent, Envelope]]) -> None:
    OutboxEvent.objects.create(
        event_id=uuid.uuid4(),
        event_type=Versioned.event_type,
        payload={"amount": "5", "currency": "EUR"},
        headers={"schema_version": 1},
    )
    drain_outbox()
    [(event, envelope)] = receiving
    assert event == Versioned(amount="5 EUR")
    assert envelope.payload == {"amount": "5", "currency": "EUR"}


# ----------------------------------------------------------------------- dead letters


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (charged(amount="abc"), "payload field 'amount' is not a valid Decimal: 'abc'"),
        (charged(count="1"), "payload field 'count' is not a valid int: '1'"),
        (charged(at="not a date"), "payload field 'at' is not a valid datetime: 'not a date'"),
        ({"count": 1}, "payload has no field 'amount'"),
    ],
)
def test_a_bad_payload_row_is_dead_lettered_on_the_first_attempt(
    receiving: list[tuple[DomainEvent, Envelope]],
    settings: Any,
    payload: dict[str, Any],
    message: str,
) -> None:
    settings.DJANGO_UOW = {**settings.DJANGO_UOW, "MAX_ATTEMPTS": 5}
    bad = OutboxEvent.objects.create(
        event_id=uuid.uuid4(),
        event_type=Charged.event_type,
        aggregate_type="testapp.order",
        aggregate_id="1",
        payload=payload,
        headers={"schema_version": 1},
    )
    good = OutboxEvent.objects.create(
        event_id=uuid.uuid4(),
        event_type=Charged.event_type,
        aggregate_type="testapp.order",
        aggregate_id="2",
        payload=charged(),
        headers={"schema_version": 1},
    )
    summary = drain_outbox()
    assert (summary.relayed, summary.failed) == (1, 1)
    bad.refresh_from_db()
    good.refresh_from_db()
    assert (bad.status, bad.attempts) == ("failed", 1)
    assert bad.last_error.startswith("EventDecodeError: ")
    assert message in bad.last_error
    assert good.status == "dispatched"
    assert [event for event, _ in receiving] == [Charged(amount=Decimal("9.50"), count=2)]


# ----------------------------------------------------------------------- frozen only


def test_a_non_frozen_dataclass_event_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"Mutable.*@dataclass\(frozen=True\)"):

        @dataclass
        class Mutable(DomainEvent):
            event_type = "payloads.Mutable"

            x: int

    with pytest.raises(UnknownEventType):
        event_registry.get("payloads.Mutable")


def test_frozen_false_and_make_dataclass_are_refused_too() -> None:
    with pytest.raises(TypeError, match=r"ExplicitlyMutable.*frozen=True"):

        @dataclass(frozen=False)
        class ExplicitlyMutable(DomainEvent):
            event_type = "payloads.ExplicitlyMutable"

    with pytest.raises(TypeError, match=r"Made.*frozen=True"):
        dataclasses.make_dataclass("Made", [("x", int)], bases=(DomainEvent,))

    made = dataclasses.make_dataclass("MadeFrozen", [("x", int)], bases=(DomainEvent,), frozen=True)
    assert made.from_payload({"x": 1}) == made(x=1)


@dataclass(frozen=True, slots=True)
class Slotted(DomainEvent):
    event_type = "payloads.Slotted"

    x: int


def test_frozen_dataclass_events_and_plain_intermediate_bases_are_accepted() -> None:
    class Base(DomainEvent):
        """A shared base without fields: not a dataclass itself."""

    @dataclass(frozen=True)
    class Child(Base):
        event_type = "payloads.Child"

        x: int

    assert Child.from_payload({"x": 1}) == Child(x=1)
    assert event_registry.get("payloads.Slotted").from_payload({"x": 2}) == Slotted(x=2)
