from dataclasses import dataclass
from decimal import Decimal

from django.db import models

from django_uow import AggregateRoot, DomainEvent


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: int
    total: Decimal


class Order(AggregateRoot):
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, default="new")

    def place(self) -> None:
        self.status = "placed"
        self.record_event(OrderPlaced(order_id=self.pk, total=self.total))
