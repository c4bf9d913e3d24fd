"""The shop's use cases. Each runs inside the caller's unit of work.

The transaction boundary belongs to the entry point (a view, a task, the demo), which
decorates itself with ``@unit_of_work(retries=...)``: a retry then re-runs the whole
request, reading fresh stock, instead of a fragment of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal

from django_uow import NoActiveUnitOfWork, current_uow

from .errors import ShopError
from .models import Order, OrderLine, Payment, Product


def _require_uow(action: str) -> None:
    if current_uow() is None:
        raise NoActiveUnitOfWork(
            f"{action} must run inside a unit of work: call it from a function decorated "
            "with @unit_of_work, or inside `with UnitOfWork():`."
        )


def place_order(
    customer: str,
    items: Mapping[str, int],
    *,
    after_reserve: Callable[[], None] | None = None,
) -> Order:
    """Reserve stock for ``items`` ({sku: quantity}) and place an order.

    Two buyers of the same product both read its stock; the second save is a stale
    versioned UPDATE and raises ``ConcurrencyError``, which the entry point's
    ``retries`` turns into a re-run with fresh stock. ``after_reserve`` is called
    between reading and writing the stock (the demo uses it to make buyers collide).
    """
    _require_uow("place_order()")
    if not customer:
        raise ShopError("An order needs a customer name.")
    if not items:
        raise ShopError("An order needs at least one item.")
    for sku, quantity in items.items():
        if not isinstance(quantity, int) or quantity <= 0:
            raise ShopError(f"Item {sku!r}: quantity must be a positive integer, got {quantity!r}.")
    products = {p.sku: p for p in Product.objects.filter(sku__in=list(items))}
    unknown = sorted(set(items) - set(products))
    if unknown:
        raise ShopError(f"Unknown product(s): {', '.join(unknown)}.")
    for sku, quantity in items.items():
        products[sku].reserve(quantity)
    if after_reserve is not None:
        after_reserve()
    # Always write products in the same order, so two orders never deadlock.
    for sku in sorted(products):
        products[sku].save(update_fields=["stock"])
    order = Order(customer=customer)
    order.save()
    OrderLine.objects.bulk_create(
        OrderLine(order=order, product=products[sku], quantity=qty, unit_price=products[sku].price)
        for sku, qty in items.items()
    )
    order.place()
    order.save()
    return order


def pay_order(order_id: int, *, amount: Decimal | None = None, reference: str = "") -> Order:
    """Record a payment of the order's total (or ``amount``, which must match it)."""
    _require_uow("pay_order()")
    order = Order.objects.get(pk=order_id)
    payment = Payment.objects.create(
        order=order,
        amount=order.total if amount is None else amount,
        reference=reference or f"pay-{uuid.uuid4().hex[:12]}",
    )
    order.pay(payment)
    order.save()
    return order


def cancel_order(order_id: int, *, reason: str = "") -> Order:
    """Cancel a placed order and put its stock back."""
    _require_uow("cancel_order()")
    order = Order.objects.get(pk=order_id)
    order.cancel(reason or "cancelled by customer")
    lines = sorted(order.lines.select_related("product"), key=lambda line: line.product.sku)
    for line in lines:
        line.product.release(line.quantity)
        line.product.save(update_fields=["stock"])
    order.save()
    return order
