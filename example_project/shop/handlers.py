"""Event handlers: a notification log and a sales projection.

They are idempotent (the default of ``@event_handler``): the relay delivers at least
once, and the (event id, handler) row written in the handler's transaction makes a
redelivered event a no-op.
"""

from __future__ import annotations

from decimal import Decimal

from django.db.models import F

from django_uow import Envelope
from django_uow.delivery.handlers import event_handler

from .events import Line, OrderCancelled, OrderPaid, OrderPlaced
from .models import Notification, ProductSales


def _sales(sku: str) -> ProductSales:
    sales, _ = ProductSales.objects.get_or_create(sku=sku)
    return sales


def _line_total(line: Line) -> Decimal:
    return Decimal(str(line["unit_price"])) * int(line["quantity"])


@event_handler(OrderPlaced)
def notify_order_placed(event: OrderPlaced, envelope: Envelope) -> None:
    Notification.objects.create(
        event_id=envelope.event_id,
        kind="order_placed",
        order_id=event.order_id,
        message=f"Thank you {event.customer}, order {event.order_id} ({event.total}) is placed.",
    )


@event_handler(OrderPlaced)
def project_order_placed(event: OrderPlaced) -> None:
    for line in event.lines:
        _sales(line["sku"])
        ProductSales.objects.filter(sku=line["sku"]).update(
            orders=F("orders") + 1, units_ordered=F("units_ordered") + int(line["quantity"])
        )


@event_handler(OrderPaid)
def notify_order_paid(event: OrderPaid, envelope: Envelope) -> None:
    Notification.objects.create(
        event_id=envelope.event_id,
        kind="order_paid",
        order_id=event.order_id,
        message=f"Payment {event.reference} of {event.amount} received for order {event.order_id}.",
    )


@event_handler(OrderPaid)
def project_order_paid(event: OrderPaid) -> None:
    for line in event.lines:
        _sales(line["sku"])
        ProductSales.objects.filter(sku=line["sku"]).update(
            revenue=F("revenue") + _line_total(line)
        )


@event_handler(OrderCancelled)
def notify_order_cancelled(event: OrderCancelled, envelope: Envelope) -> None:
    Notification.objects.create(
        event_id=envelope.event_id,
        kind="order_cancelled",
        order_id=event.order_id,
        message=f"Order {event.order_id} is cancelled: {event.reason}.",
    )


@event_handler(OrderCancelled)
def project_order_cancelled(event: OrderCancelled) -> None:
    for line in event.lines:
        _sales(line["sku"])
        ProductSales.objects.filter(sku=line["sku"]).update(
            units_cancelled=F("units_cancelled") + int(line["quantity"])
        )
