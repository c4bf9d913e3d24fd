from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django_uow import DomainEvent


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: int | None
    total: Decimal


@dataclass(frozen=True)
class OrderPaid(DomainEvent):
    order_id: int
    paid_at: datetime.datetime | None = None


@dataclass(frozen=True)
class OrderCancelled(DomainEvent):
    event_type = "orders.cancelled"

    order_id: int
    reason: str = ""


@dataclass(frozen=True)
class Pinged(DomainEvent):
    """An event not tied to any aggregate."""

    note: str
    ref: uuid.UUID | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CustomerRenamed(DomainEvent):
    """Schema version 2 renamed `name` to `full_name`."""

    event_version = 2

    customer_id: int
    full_name: str

    @classmethod
    def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
        if version == 1:
            payload = dict(payload)
            payload["full_name"] = payload.pop("name")
        return payload


@dataclass(frozen=True)
class OrderNoted(DomainEvent):
    """Recorded by a view: the audit tests follow who caused it, and its follow-up."""

    order_id: int
    text: str


@dataclass(frozen=True)
class NoteAcknowledged(DomainEvent):
    """Recorded by the OrderNoted handler on the same order: a follow-up event."""

    order_id: int


@dataclass(frozen=True)
class OrderBumped(DomainEvent):
    """Written by many writers on one order (the hot-aggregate tests)."""

    event_type = "orders.bumped"

    order_id: int
    seq: int = 0


@dataclass(frozen=True)
class OrderFlagged(DomainEvent):
    """Its handler records a follow-up ``OrderBumped`` on the same order."""

    event_type = "orders.flagged"

    order_id: int


@dataclass(frozen=True)
class OrderSequenced(DomainEvent):
    """Handled by an ordered handler (the aggregate-order tests)."""

    event_type = "orders.sequenced"

    order_id: int
    seq: int = 0


@dataclass(frozen=True)
class OrderArchived(DomainEvent):
    """Kept for the record only: no handler consumes it, on purpose."""

    needs_handler = False

    order_id: int
