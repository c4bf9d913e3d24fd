"""Async handlers: their effects are ``Effect`` rows, written through the async ORM."""

from __future__ import annotations

from collections import Counter

from asgiref.sync import sync_to_async
from django.db import connection

from django_uow import Envelope, UnitOfWork, current_uow
from django_uow.delivery.handlers import event_handler
from tests.testapp.events import Pinged
from tests.testapp.models import Effect, Note

from .events import Greeted, Welcomed

#: Runs per event id so far (an in-process relay counts them here).
RUNS: Counter[str] = Counter()


def _in_transaction() -> bool:
    return bool(connection.in_atomic_block)


@event_handler(Greeted, name="asyncapp.greet")
async def greet(event: Greeted, envelope: Envelope) -> None:
    RUNS[str(envelope.event_id)] += 1
    # The handler's ORM calls run inside its unit of work, with its inbox row.
    atomic = await sync_to_async(_in_transaction)()
    await Effect.objects.acreate(
        event_id=envelope.event_id,
        handler=f"greet in unit={current_uow() is not None} atomic={atomic}",
        aggregate_id=event.name,
    )
    if RUNS[str(envelope.event_id)] <= event.failures:
        raise ValueError(f"greeting {event.name} failed")


@event_handler(Welcomed, name="asyncapp.welcome")
async def welcome(event: Welcomed, envelope: Envelope) -> None:
    async with UnitOfWork() as uow:
        await Note.objects.acreate(text=f"welcome {event.name}")
        uow.record_event(Pinged(note=f"welcomed {event.name}"))
        nested = not uow.is_root
    await Effect.objects.acreate(
        event_id=envelope.event_id, handler=f"welcome nested={nested}", aggregate_id=event.name
    )
