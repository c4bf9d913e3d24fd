from decimal import Decimal

from django_uow import UnitOfWork, unit_of_work

from .models import Order


def open_order(total: Decimal) -> Order:
    with UnitOfWork():
        return Order.objects.create(total=total)


@unit_of_work(retries=3)
def place_order(order_id: int) -> Order:
    order = Order.objects.get(pk=order_id)
    order.place()  # records OrderPlaced
    order.save()  # UPDATE ... WHERE id = %s AND version = %s
    return order
