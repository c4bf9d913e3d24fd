from __future__ import annotations

from django_uow import event_handler

from . import services
from .events import Deallocated


@event_handler(Deallocated, retries=3)
def reallocate(event: Deallocated) -> None:
    # allocate() has retries= of its own: here it joins this handler's unit as a savepoint.
    services.allocate(event.orderid, event.sku, event.qty)
