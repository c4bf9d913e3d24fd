"""Payloads every database stores: values SQLite or PostgreSQL would store differently, or
refuse at COMMIT, are refused at ``record_event()`` naming the event and the field."""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection

from django_uow import DomainEvent, EventSerializationError, UnitOfWork
from django_uow.models import OutboxEvent
from tests.testapp.models import Order

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class Line:
    """A value inside an event: a plain frozen dataclass."""

    sku: str
    qty: int = 1


@dataclass(frozen=True)
class Measured(DomainEvent):
    event_type = "payloads.Measured"

    reading: float | None = None
    amount: Decimal | None = None
    label: str = ""
    lines: list[Line] = field(default_factory=list)
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


GOOD = Measured(reading=1.5, amount=Decimal("2.50"), label="fine")

BAD: list[tuple[str, Measured, str]] = [
    ("float NaN", Measured(reading=math.nan), "reading"),
    ("float +Infinity", Measured(reading=math.inf), "reading"),
    ("float -Infinity", Measured(reading=-math.inf), "reading"),
    ("Decimal NaN", Measured(amount=Decimal("NaN")), "amount"),
    ("Decimal sNaN", Measured(amount=Decimal("sNaN")), "amount"),
    ("Decimal +Infinity", Measured(amount=Decimal("Infinity")), "amount"),
    ("Decimal -Infinity", Measured(amount=Decimal("-Infinity")), "amount"),
    ("NUL in a string", Measured(label="a\x00b"), "label"),
    ("lone surrogate", Measured(label="caf\udcff"), "label"),
    ("lone high surrogate", Measured(label="\ud83d"), "label"),
    (
        "NUL in a nested dataclass in a list",
        Measured(lines=[Line("a"), Line("b"), Line("c\x00")]),
        "lines[2].sku",
    ),
    ("surrogate in a tuple", Measured(tags=("ok", "\udcff")), "tags[1]"),
    ("NaN deep in a dict", Measured(extra={"rows": [1, {"x": math.nan}]}), "extra.rows[1].x"),
    ("Decimal NaN in a dict", Measured(extra={"total": Decimal("NaN")}), "extra.total"),
    ("NUL in a dict key", Measured(extra={"k\x00": 1}), "extra['k\\x00']"),
    ("surrogate in a dict key", Measured(extra={"\udcff": 1}), "extra['\\udcff']"),
    ("NUL under a non-identifier key", Measured(extra={"a b": "\x00"}), "extra['a b']"),
]


@pytest.mark.parametrize(("case", "event", "path"), BAD, ids=[case for case, _, _ in BAD])
def test_bad_value_is_refused_at_record_event_naming_the_field(
    case: str, event: Measured, path: str
) -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork():
        order.status = "placed"
        order.save()
        with pytest.raises(EventSerializationError) as excinfo:
            order.record_event(event)
        assert order.pending_events == []  # nothing recorded
        order.record_event(GOOD)

    error = excinfo.value
    assert error.event_type == "payloads.Measured"
    assert error.path == path
    assert error.field == path.split(".")[0].split("[")[0]
    message = str(error)
    assert "'payloads.Measured'" in message and repr(path) in message
    assert "not recorded" in message
    # The business change and the good event committed (on PostgreSQL: no DataError).
    order.refresh_from_db()
    assert order.status == "placed"
    row = OutboxEvent.objects.get()
    assert row.event_type == "payloads.Measured" and row.payload["label"] == "fine"


@pytest.mark.parametrize(("case", "event", "path"), BAD[:9], ids=[c for c, _, _ in BAD[:9]])
def test_bad_value_is_refused_by_the_unit_of_works_record_event(
    case: str, event: Measured, path: str
) -> None:
    with UnitOfWork() as uow:
        order = Order.objects.create(total=2)
        with pytest.raises(EventSerializationError) as excinfo:
            uow.record_event(event)
        uow.record_event(GOOD)
    assert excinfo.value.path == path
    assert Order.objects.filter(pk=order.pk).exists()
    assert list(OutboxEvent.objects.values_list("payload__label", flat=True)) == ["fine"]


def test_messages_say_what_to_do() -> None:
    with pytest.raises(EventSerializationError) as nan:
        Measured(reading=math.nan).to_payload()
    assert "NaN" in str(nan.value) and "None" in str(nan.value)
    with pytest.raises(EventSerializationError) as nul:
        Measured(label="a\x00").to_payload()
    assert "NUL" in str(nul.value) and "remove" in str(nul.value).lower()
    with pytest.raises(EventSerializationError) as surrogate:
        Measured(label="\udcff").to_payload()
    assert "surrogate" in str(surrogate.value)
    assert "decode" in str(surrogate.value).lower()


def test_values_that_only_look_bad_are_stored_and_read_back_unchanged() -> None:
    tricky = Measured(
        reading=-0.0,
        amount=Decimal("-0.00"),
        label="\\u0000 is six characters, \U0001f600 is a valid pair, NaN is a word",
        tags=("\\ud83d", "Infinity"),
        extra={"\\u0000": "NaN", "nested": {"inf": "-Infinity"}},
    )
    with UnitOfWork() as uow:
        uow.record_event(tricky)
    row = OutboxEvent.objects.get()
    assert row.payload["label"] == tricky.label
    assert row.payload["extra"] == tricky.extra
    assert row.payload["tags"] == ["\\ud83d", "Infinity"]
    assert Measured.from_payload(row.payload) == tricky


def test_a_storable_payload_is_encoded_without_walking_its_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django_uow.events import encoding

    def walk(*args: Any) -> None:
        raise AssertionError("the values were walked for a payload that encodes cleanly")

    monkeypatch.setattr(encoding, "find_problem", walk)
    event = Measured(
        reading=2.5,
        amount=Decimal("1.25"),
        label="naïve café \U0001f600",
        lines=[Line("A"), Line("B", 3)],
        tags=("x",),
        extra={"nested": {"list": [1, "two", None]}},
    )
    assert event.to_payload()["lines"] == [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 3}]


def test_each_payload_is_encoded_once_from_record_event_to_commit(monkeypatch) -> None:
    """The JSON text checked at ``record_event()`` is the text the commit writes."""
    real_dumps = json.dumps
    encoded: list[Any] = []

    def counting_dumps(obj: Any, *args: Any, **kwargs: Any) -> str:
        if isinstance(obj, dict) and "reading" in obj:  # a Measured payload, not its headers
            encoded.append(obj)
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(json, "dumps", counting_dumps)
    events = [
        GOOD,
        Measured(reading=2.0, label="naïve café \U0001f600"),
        Measured(lines=[Line("A")], extra={"k": [1, 2]}),
    ]
    with UnitOfWork() as uow:
        for event in events:
            uow.record_event(event)
    monkeypatch.setattr(json, "dumps", real_dumps)

    # MySQL/MariaDB get text outside ASCII \u-escaped (a 3-byte utf8 connection could not
    # take the emoji): that one payload is encoded a second time there, and only there.
    again = 1 if connection.vendor == "mysql" else 0
    assert len(encoded) == len(events) + again
    rows = OutboxEvent.objects.order_by("id")
    assert [Measured.from_payload(row.payload) for row in rows] == events


class Level(enum.IntEnum):
    LOW = 1


@dataclass(frozen=True)
class Leveled(DomainEvent):
    event_type = "payloads.Leveled"

    level: Level
    note: str = ""


def test_payload_of_scalars_holds_json_values_not_subclasses() -> None:
    # An IntEnum is an int subclass: its payload value is the plain int JSON gives back.
    payload = Leveled(level=Level.LOW, note="n").to_payload()
    assert payload == {"level": 1, "note": "n"}
    assert type(payload["level"]) is int
    with UnitOfWork() as uow:
        uow.record_event(Leveled(level=Level.LOW))
    assert OutboxEvent.objects.get().payload == {"level": 1, "note": ""}
