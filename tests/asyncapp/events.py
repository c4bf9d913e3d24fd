from __future__ import annotations

from dataclasses import dataclass

from django_uow import DomainEvent


@dataclass(frozen=True)
class Greeted(DomainEvent):
    """Handled by an async handler (inline and on a Celery worker)."""

    event_type = "asyncapp.greeted"

    name: str
    #: The handler raises this many times before it succeeds (per event).
    failures: int = 0


@dataclass(frozen=True)
class Welcomed(DomainEvent):
    """Handled by an async handler that opens its own unit of work (a savepoint)."""

    event_type = "asyncapp.welcomed"

    name: str
