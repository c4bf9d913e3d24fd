"""Handlers used by the relay tests; behaviour is steered through ``BEHAVIOUR``."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from django.db import connection

from django_uow import Envelope, PermanentFailure, RetryAfter
from django_uow.delivery.handlers import event_handler

from .events import (
    NoteAcknowledged,
    OrderBumped,
    OrderCancelled,
    OrderFlagged,
    OrderNoted,
    OrderPaid,
    OrderPlaced,
    OrderSequenced,
    Pinged,
)
from .handler_only_events import AuditRequested
from .models import Effect, Order

#: order_id (or "*": any order) -> what the OrderPlaced handler does: "raise", "permanent",
#: a float (RetryAfter), or an exception instance to raise.
BEHAVIOUR: dict[Any, Any] = {}
#: Event ids seen by the OrderCancelled handler, in call order (in-process consumers).
SEEN: list[tuple[str, str]] = []
#: Seconds the OrderCancelled handler sleeps (the SIGKILL test needs a slow batch).
SLEEP: list[float] = [0.0]
#: The Pinged handler writes its session's backend pid (PostgreSQL) as the aggregate id.
PING_RECORDS_BACKEND: list[bool] = [False]


@event_handler(OrderPlaced, name="testapp.record_placed")
def record_placed(event: OrderPlaced, envelope: Envelope) -> None:
    action = BEHAVIOUR.get(event.order_id, BEHAVIOUR.get("*"))
    if isinstance(action, BaseException):
        raise action
    if action == "raise":
        raise ValueError(f"handler refused order {event.order_id}")
    if action == "permanent":
        raise PermanentFailure(f"order {event.order_id} can never be handled")
    if isinstance(action, int | float) and not isinstance(action, bool):
        raise RetryAfter(float(action), f"order {event.order_id} not ready")
    Effect.objects.create(
        event_id=envelope.event_id, handler="placed", aggregate_id=envelope.aggregate_id
    )


@event_handler(OrderPaid, idempotent=False, name="testapp.record_paid")
def record_paid(event: OrderPaid) -> None:
    Effect.objects.create(
        event_id="00000000-0000-0000-0000-000000000000",
        handler="paid",
        aggregate_id=str(event.order_id),
    )


@event_handler(OrderCancelled, name="testapp.record_cancelled")
def record_cancelled(event: OrderCancelled, envelope: Envelope) -> None:
    SEEN.append((envelope.aggregate_id, str(envelope.event_id)))
    if SLEEP[0]:
        time.sleep(SLEEP[0])
    Effect.objects.create(
        event_id=envelope.event_id, handler="cancelled", aggregate_id=envelope.aggregate_id
    )


@event_handler(Pinged, name="testapp.on_ping")
def on_ping(event: Pinged, envelope: Envelope) -> None:
    backend = ""
    if PING_RECORDS_BACKEND[0]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = str(cursor.fetchone()[0])
    Effect.objects.create(event_id=envelope.event_id, handler="pinged", aggregate_id=backend)


@event_handler(OrderNoted, name="testapp.acknowledge_note")
def acknowledge_note(event: OrderNoted) -> None:
    order = Order.objects.get(pk=event.order_id)
    order.record_event(NoteAcknowledged(order_id=order.pk))
    order.save()


@event_handler(NoteAcknowledged, name="testapp.on_note_acknowledged")
def on_note_acknowledged(event: NoteAcknowledged, envelope: Envelope) -> None:
    Effect.objects.create(event_id=envelope.event_id, handler="acknowledged", aggregate_id="")


#: (aggregate_id, aggregate_version) of each OrderBumped handled, in call order.
BUMPED: list[tuple[str, int | None]] = []
_BUMPED_LOCK = threading.Lock()


@event_handler(OrderBumped, name="testapp.record_bumped")
def record_bumped(event: OrderBumped, envelope: Envelope) -> None:
    with _BUMPED_LOCK:
        BUMPED.append((envelope.aggregate_id, envelope.aggregate_version))
    Effect.objects.create(
        event_id=envelope.event_id, handler="bumped", aggregate_id=envelope.aggregate_id
    )


@event_handler(OrderFlagged, name="testapp.review_flagged")
def review_flagged(event: OrderFlagged, envelope: Envelope) -> None:
    """Records a follow-up event on the order it handles (its own commit's fast path)."""
    order = Order.objects.get(pk=event.order_id)
    order.note = "reviewed"
    order.record_event(OrderBumped(order_id=order.pk, seq=-1))
    order.save()
    Effect.objects.create(
        event_id=envelope.event_id, handler="flagged", aggregate_id=envelope.aggregate_id
    )


@event_handler(AuditRequested, name="testapp.audit")
def audit(event: AuditRequested, envelope: Envelope) -> None:
    Effect.objects.create(
        event_id=envelope.event_id, handler="audit", aggregate_id=envelope.aggregate_id
    )


#: Upper bound (seconds) of the random pause of the ordered handler, so runs overlap.
SEQUENCE_JITTER: list[float] = [0.005]


@event_handler(OrderSequenced, name="testapp.sequence", ordered=True)
def sequence(event: OrderSequenced, envelope: Envelope) -> None:
    """Ordered: its Effect rows' ids give the order in which the events were handled."""
    if SEQUENCE_JITTER[0]:
        time.sleep(random.random() * SEQUENCE_JITTER[0])
    Effect.objects.create(
        event_id=envelope.event_id, handler="sequenced", aggregate_id=envelope.aggregate_id
    )


from . import show_handlers  # noqa: E402, F401 - several event types, per-handler policies
