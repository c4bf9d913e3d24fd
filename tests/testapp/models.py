from __future__ import annotations

from django.db import models

from django_uow import AggregateRoot, VersionedModel

from .events import OrderCancelled, OrderPaid, OrderPlaced


class Order(AggregateRoot):
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    status = models.CharField(max_length=20, default="new")
    note = models.CharField(max_length=100, blank=True, default="")

    def place(self) -> None:
        self.status = "placed"
        self.record_event(OrderPlaced(order_id=self.pk, total=self.total))

    def pay(self) -> None:
        self.status = "paid"
        self.record_event(OrderPaid(order_id=self.pk))

    def cancel(self, reason: str = "") -> None:
        self.status = "cancelled"
        self.record_event(OrderCancelled(order_id=self.pk, reason=reason))

    def check_invariants(self) -> None:
        if self.total < 0:
            raise ValueError(f"Order {self.pk}: total must not be negative")


class Ticket(AggregateRoot):
    """An aggregate keyed by text longer than the outbox's aggregate_id column."""

    code = models.CharField(primary_key=True, max_length=400)


class Counter(VersionedModel):
    name = models.CharField(max_length=50, unique=True)
    value = models.IntegerField(default=0)
    last_seen = models.DateTimeField(null=True, blank=True)

    version_exempt_fields = frozenset({"last_seen"})


class Note(models.Model):
    """A plain (unversioned) model, for repositories and change tracking."""

    text = models.CharField(max_length=100)
    order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.CASCADE, related_name="notes"
    )


class Effect(models.Model):
    """Written by test handlers, so tests can count each handler's effects."""

    event_id = models.UUIDField()
    handler = models.CharField(max_length=100)
    aggregate_id = models.CharField(max_length=50, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
