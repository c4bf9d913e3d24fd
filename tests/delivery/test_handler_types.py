"""Handlers of several event types: ``@event_handler(A, B, C)``, a list, a base class.

``tests.testapp.show_handlers`` holds ``shows.projection`` (SeatsReserved, SeatsReleased,
ShowSoldOut, ordered) and ``shows.audit`` (their base class, ShowEvent).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import override_settings

from django_uow import DomainEvent, PredecessorPending, UnitOfWork
from django_uow.delivery.handlers import event_handler, handlers_for, registry
from django_uow.delivery.running import run_handler
from django_uow.events.base import registry as event_types
from django_uow.models import OutboxEvent, ProcessedEvent
from django_uow.outbox.writing import write_events
from django_uow.publishers import CeleryPublisher
from django_uow.relay import relay_pending
from tests.support.delivery import CELERY
from tests.support.processes import running, start_worker, wait_for
from tests.testapp.models import Effect, Order
from tests.testapp.show_events import SeatsReleased, SeatsReserved, ShowEvent, ShowSoldOut

INLINE = {"RELAY_ON_COMMIT": False, "PUBLISHERS": ["django_uow.publishers.InlinePublisher"]}
KINDS = (SeatsReserved, SeatsReleased, ShowSoldOut)


@dataclass(frozen=True)
class Parcel(DomainEvent):
    event_type = "tests.types.parcel"

    ref: str


@dataclass(frozen=True)
class Letter(DomainEvent):
    event_type = "tests.types.letter"

    ref: str


@pytest.fixture
def temp_handlers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


@pytest.fixture(scope="module", autouse=True)
def _forget_event_types() -> Iterator[None]:
    yield
    event_types.discard(Parcel)
    event_types.discard(Letter)


def names_for(event_type: str) -> set[str]:
    return {h.name for h in handlers_for(event_type)}


# ----------------------------------------------------------------------- registering


def test_one_handler_takes_several_classes_given_one_by_one_or_as_a_list(
    temp_handlers: list[str],
) -> None:
    @event_handler(Parcel, Letter, name="tests.types.both")
    def both(event: Any) -> None: ...

    @event_handler([Parcel, Letter], name="tests.types.listed")
    def listed(event: Any) -> None: ...

    temp_handlers.extend(["tests.types.both", "tests.types.listed"])
    assert {"tests.types.both", "tests.types.listed"} <= names_for(Parcel.event_type)
    assert {"tests.types.both", "tests.types.listed"} <= names_for(Letter.event_type)
    assert registry.get("tests.types.listed").event_classes == (Parcel, Letter)
    assert registry.get("tests.types.both").known_types() == [
        "tests.types.letter",
        "tests.types.parcel",
    ]


def test_a_base_class_handler_takes_every_subclass_also_one_defined_later() -> None:
    assert "shows.audit" in names_for("testapp.SeatsReserved")
    assert "shows.audit" in names_for("testapp.ShowSoldOut")
    assert "shows.audit" not in names_for(Parcel.event_type)

    @dataclass(frozen=True)
    class ShowMoved(ShowEvent):  # defined after shows.audit was registered
        event_type = "tests.types.show_moved"

        venue: str = ""

    try:
        assert "shows.audit" in names_for("tests.types.show_moved")
        assert "shows.projection" not in names_for("tests.types.show_moved")  # not its class
        assert "tests.types.show_moved" in registry.get("shows.audit").known_types()
    finally:
        event_types.discard(ShowMoved)
    assert "tests.types.show_moved" not in registry.get("shows.audit").known_types()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((), "needs the event classes it takes"),
        ((Parcel, "Letter"), "got 'Letter' (argument 2)"),
        (([Parcel, [Letter]],), "not nested lists"),
        ((DomainEvent,), "would take every event of the project"),
        ((int,), "takes DomainEvent subclasses, got <class 'int'> (argument 1)"),
    ],
)
def test_bad_event_classes_are_refused_with_a_type_error_naming_them(
    args: tuple[Any, ...], words: str
) -> None:
    with pytest.raises(TypeError) as caught:
        event_handler(*args, name="tests.types.bad")
    assert words in str(caught.value)


def test_the_decorator_used_bare_says_how_to_write_it() -> None:
    def on_parcel(event: Parcel) -> None: ...

    with pytest.raises(TypeError) as caught:
        event_handler(on_parcel)  # type: ignore[arg-type]
    assert "used without its event classes: write @event_handler(OrderPlaced)" in str(caught.value)


# ----------------------------------------------------------------------- delivering


def show_events(show_id: int, kinds: Sequence[type[ShowEvent]]) -> list[OutboxEvent]:
    """One event of each kind on show ``show_id``, versions 1, 2, ... (one INSERT)."""
    rows = [
        OutboxEvent(
            event_id=uuid.uuid4(),
            event_type=kind.event_type,
            aggregate_type="testapp.order",
            aggregate_id=str(show_id),
            aggregate_version=version,
            payload={"show_id": show_id},
            headers={"schema_version": 1},
        )
        for version, kind in enumerate(kinds, 1)
    ]
    write_events(rows, "default")
    stored = {r.event_id: r for r in OutboxEvent.objects.filter(aggregate_id=str(show_id))}
    return [stored[r.event_id] for r in rows]


def effects(handler: str) -> list[uuid.UUID]:
    return list(
        Effect.objects.filter(handler=handler).order_by("id").values_list("event_id", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_events_of_three_kinds_recorded_by_one_aggregate_reach_both_handlers() -> None:
    with override_settings(DJANGO_UOW=INLINE):
        with UnitOfWork():
            show = Order.objects.create()
            show.record_event(SeatsReserved(show_id=show.pk, seats=2))
            show.record_event(SeatsReleased(show_id=show.pk, seats=1))
            show.record_event(ShowSoldOut(show_id=show.pk))
        assert relay_pending().relayed == 3
    recorded = list(
        OutboxEvent.objects.order_by("aggregate_version", "id").values_list("event_id", flat=True)
    )
    assert effects("shows.projection") == recorded
    assert effects("shows.audit") == recorded


@pytest.mark.django_db
def test_an_ordered_handler_of_several_types_waits_for_the_previous_event_of_any_of_them() -> None:
    """SeatsReleased (v2) waits for SeatsReserved (v1) of the same show, another type."""
    reserved, released, sold_out = show_events(5, KINDS)
    handler = registry.get("shows.projection")
    with pytest.raises(PredecessorPending) as pending:
        run_handler(handler, released.to_envelope(), wait=True)
    assert pending.value.predecessor_id == reserved.event_id
    assert effects("shows.projection") == []
    assert run_handler(handler, reserved.to_envelope())
    assert run_handler(handler, released.to_envelope())
    assert run_handler(handler, sold_out.to_envelope())
    assert effects("shows.projection") == [reserved.event_id, released.event_id, sold_out.event_id]


@pytest.mark.celery
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_on_a_worker_the_ordered_handler_gets_every_kind_of_one_show_in_version_order(
    celery_app: Any,
) -> None:
    kinds = [KINDS[i % 3] for i in range(30)]
    rows = show_events(9, kinds)
    worker = start_worker(
        "--pool=threads", "--concurrency=4", "--prefetch-multiplier=4", extra=CELERY
    )
    with running(worker), override_settings(DJANGO_UOW=CELERY):
        assert relay_pending(publishers=[CeleryPublisher(celery_app)]).relayed == 30
        assert wait_for(lambda: len(effects("shows.projection")) >= 30, timeout=120), (
            f"{len(effects('shows.projection'))} of 30; "
            f"{Counter(ProcessedEvent.objects.values_list('handler', 'status'))}"
        )
        time.sleep(1.0)  # a duplicate would show here
    assert effects("shows.projection") == [r.event_id for r in rows]  # version order
    assert sorted(map(str, effects("shows.audit"))) == sorted(str(r.event_id) for r in rows)
