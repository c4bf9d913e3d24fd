"""A show's events: one base class, three kinds (the several-types handler tests)."""

from __future__ import annotations

from dataclasses import dataclass

from django_uow import DomainEvent


@dataclass(frozen=True)
class ShowEvent(DomainEvent):
    """What every event of a show shares; handlers on it take each kind of show event."""

    needs_handler = False  # only its subclasses are recorded

    show_id: int


@dataclass(frozen=True)
class SeatsReserved(ShowEvent):
    seats: int = 1


@dataclass(frozen=True)
class SeatsReleased(ShowEvent):
    seats: int = 1


@dataclass(frozen=True)
class ShowSoldOut(ShowEvent):
    pass


@dataclass(frozen=True)
class HookFired(DomainEvent):
    """A webhook call to make; ``hook`` says how each policy handler behaves for it."""

    event_type = "hooks.fired"

    hook: str
