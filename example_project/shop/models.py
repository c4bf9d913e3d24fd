"""The write model (Product, Order, OrderLine, Payment) and the read models the
event handlers maintain (Notification, ProductSales)."""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from django_uow import AggregateRoot, VersionedModel

from .errors import InvalidTransition, OutOfStock
from .events import Line, OrderCancelled, OrderPaid, OrderPlaced


class Product(VersionedModel):
    """Stock is guarded by optimistic locking: a stale save raises ConcurrencyError."""

    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["sku"]

    def __str__(self) -> str:
        return f"{self.sku} ({self.stock} in stock)"

    def reserve(self, quantity: int) -> None:
        if quantity <= 0:
            raise ValueError(f"Product {self.sku!r}: quantity must be positive, got {quantity}.")
        if quantity > self.stock:
            raise OutOfStock(self.sku, quantity, self.stock)
        self.stock -= quantity

    def release(self, quantity: int) -> None:
        self.stock += quantity


class Order(AggregateRoot):
    """An order: placed -> paid, or placed -> cancelled. Each step records an event."""

    class Status(models.TextChoices):
        NEW = "new"
        PLACED = "placed"
        PAID = "paid"
        CANCELLED = "cancelled"

    customer = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    total = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"Order {self.pk} ({self.status})"

    def event_lines(self) -> tuple[Line, ...]:
        return tuple(
            {"sku": line.product.sku, "quantity": line.quantity, "unit_price": line.unit_price}
            for line in self.lines.select_related("product").order_by("id")
        )

    def place(self) -> None:
        if self.status != self.Status.NEW:
            raise InvalidTransition(self.pk, self.status, "placed")
        lines = self.event_lines()
        self.total = sum(
            (Decimal(line["unit_price"]) * line["quantity"] for line in lines), Decimal("0")
        )
        self.status = self.Status.PLACED
        self.record_event(
            OrderPlaced(order_id=self.pk, customer=self.customer, total=self.total, lines=lines)
        )

    def pay(self, payment: Payment) -> None:
        if self.status != self.Status.PLACED:
            raise InvalidTransition(self.pk, self.status, "paid")
        if payment.amount != self.total:
            raise InvalidTransition(self.pk, f"due {self.total}", f"paid {payment.amount}")
        self.status = self.Status.PAID
        self.record_event(
            OrderPaid(
                order_id=self.pk,
                amount=payment.amount,
                reference=payment.reference,
                lines=self.event_lines(),
            )
        )

    def cancel(self, reason: str) -> None:
        if self.status != self.Status.PLACED:
            raise InvalidTransition(self.pk, self.status, "cancelled")
        self.status = self.Status.CANCELLED
        self.record_event(OrderCancelled(order_id=self.pk, reason=reason, lines=self.event_lines()))

    def check_invariants(self) -> None:
        """Called by the unit of work before commit, for every order it tracks."""
        if self.status != self.Status.NEW and self.total <= 0:
            raise ValueError(f"Order {self.pk} is {self.status} with total {self.total}.")


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"


class Payment(models.Model):
    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="payment")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    reference = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.reference}: {self.amount}"


# ----------------------------------------------------------------- read models


class Notification(models.Model):
    """What a mailer would send; written by the handlers, once per event.

    No unique constraint on purpose: a handler run twice would show up here as a
    duplicate, and the demo checks there is none.
    """

    event_id = models.UUIDField(db_index=True)
    kind = models.CharField(max_length=32)
    order_id = models.BigIntegerField(db_index=True)
    message = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.message


class ProductSales(models.Model):
    """Sales per product, projected from the order events."""

    sku = models.CharField(max_length=32, unique=True)
    orders = models.PositiveIntegerField(default=0)
    units_ordered = models.PositiveIntegerField(default=0)
    units_cancelled = models.PositiveIntegerField(default=0)
    revenue = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))

    class Meta:
        ordering = ["sku"]
        verbose_name_plural = "product sales"

    def __str__(self) -> str:
        return f"{self.sku}: {self.units_ordered - self.units_cancelled} units, {self.revenue}"
