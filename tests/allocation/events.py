from __future__ import annotations

from dataclasses import dataclass

from django_uow import DomainEvent


@dataclass(frozen=True)
class Allocated(DomainEvent):
    orderid: str
    sku: str
    qty: int
    batchref: str


@dataclass(frozen=True)
class Deallocated(DomainEvent):
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class OutOfStock(DomainEvent):
    sku: str
