"""The shop's domain events.

They carry what their consumers need (the order lines), so handlers never read the
write model: an event handled an hour later still describes the order as it was.
Stored type names are ``shop.OrderPlaced`` and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django_uow import DomainEvent

#: One order line as carried by the events: {"sku": str, "quantity": int, "unit_price": str}.
Line = dict[str, Any]


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: int
    customer: str
    total: Decimal
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class OrderPaid(DomainEvent):
    order_id: int
    amount: Decimal
    reference: str
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class OrderCancelled(DomainEvent):
    order_id: int
    reason: str
    lines: tuple[Line, ...]
