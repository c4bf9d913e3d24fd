"""Services: each one unit of work; ``allocate`` retries on conflicts, wherever it is called."""

from __future__ import annotations

from django_uow import unit_of_work

from .models import OrderLine, Product


def allocate_line(orderid: str, sku: str, qty: int) -> str | None:
    """Allocate (or reallocate) the order line; the caller provides the unit of work."""
    product = Product.objects.get(sku=sku)
    line, _ = OrderLine.objects.get_or_create(
        orderid=orderid, sku=sku, batch=None, defaults={"qty": qty}
    )
    return product.allocate(line)


allocate = unit_of_work(retries=3, backoff=(0.001, 0.02))(allocate_line)


@unit_of_work
def change_batch_quantity(sku: str, reference: str, qty: int) -> None:
    product = Product.objects.get(sku=sku)
    product.change_batch_quantity(reference, qty)
