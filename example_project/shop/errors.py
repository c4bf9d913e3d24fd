"""Business rule violations: each view turns them into a 4xx response."""

from __future__ import annotations


class ShopError(Exception):
    """A request the shop refuses; the message says why."""

    status = 400


class OutOfStock(ShopError):
    status = 409

    def __init__(self, sku: str, wanted: int, available: int) -> None:
        self.sku = sku
        super().__init__(f"Product {sku!r}: {wanted} wanted but only {available} in stock.")


class InvalidTransition(ShopError):
    status = 409

    def __init__(self, order_id: int, status: str, action: str) -> None:
        super().__init__(f"Order {order_id} is {status}; it cannot be {action}.")
