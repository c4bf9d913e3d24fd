"""Product is the aggregate: every allocation goes through it and bumps its version."""

from __future__ import annotations

import datetime

from django.db import models
from django.db.models import Sum

from django_uow import AggregateRoot, VersionField

from .events import Allocated, Deallocated, OutOfStock


class Product(AggregateRoot):
    version = None  # this aggregate keeps its version in version_number, as in the book

    sku = models.CharField(max_length=64, unique=True)
    version_number = VersionField()

    def allocate(self, line: OrderLine) -> str | None:
        """Put ``line`` in the batch with the earliest eta that can take it."""
        for batch in sorted(self.batches.all(), key=_eta_order):
            if batch.available_quantity >= line.qty:
                line.batch = batch
                line.save()
                self.record_event(
                    Allocated(
                        orderid=line.orderid,
                        sku=self.sku,
                        qty=line.qty,
                        batchref=batch.reference,
                    )
                )
                return batch.reference
        self.record_event(OutOfStock(sku=self.sku))
        return None

    def change_batch_quantity(self, reference: str, qty: int) -> None:
        """Shrink or grow a batch; lines that no longer fit are deallocated."""
        batch = self.batches.get(reference=reference)
        batch.purchased_quantity = qty
        batch.save()
        while batch.available_quantity < 0:
            line = batch.lines.order_by("id").first()
            assert line is not None
            line.batch = None
            line.save()
            self.record_event(Deallocated(orderid=line.orderid, sku=self.sku, qty=line.qty))


def _eta_order(batch: Batch) -> tuple[bool, datetime.date]:
    return (batch.eta is not None, batch.eta or datetime.date.min)


class Batch(models.Model):
    reference = models.CharField(max_length=64, unique=True)
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="batches")
    eta = models.DateField(null=True, blank=True)
    purchased_quantity = models.IntegerField()

    @property
    def available_quantity(self) -> int:
        allocated = self.lines.aggregate(total=Sum("qty"))["total"] or 0
        return int(self.purchased_quantity - allocated)


class OrderLine(models.Model):
    orderid = models.CharField(max_length=64)
    sku = models.CharField(max_length=64)
    qty = models.IntegerField()
    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="lines"
    )
