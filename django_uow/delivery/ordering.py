"""Handlers that run in aggregate order: ``@event_handler(EventType, ordered=True)``.

For an ordered handler H and an event e of aggregate (type, id), e's *predecessor* is
the event of the same aggregate, of any type H takes (each class it names and their
subclasses: one order across all of them) and still in the outbox, that
comes right before e in ``(aggregate_version, id)`` order (record order when the
aggregate has no version field), leaving out scheduled events due after e (the relay
delivers e first, and so does H). e runs only once H's delivery of its predecessor has
succeeded (or was discarded by an operator); otherwise ``check_predecessor`` raises
``PredecessorPending`` and nothing runs. Events without an aggregate are not ordered.

The check runs inside the handler's transaction and reads the predecessor's delivery
row with ``SELECT ... FOR UPDATE``: a predecessor whose success is not committed yet
is never taken for done (PostgreSQL and MariaDB wait for its transaction to end;
SQLite has one writer), so two workers cannot run two events of one aggregate out of
order.

Retention keeps the succeeded row of an ordered handler while its event is still in the
outbox (``relay.retention``), so a predecessor without a row has not been delivered yet.

A delivery that waited ``ORDERED_WAIT`` becomes ``blocked`` (``record_blocked``). When
a delivery of H succeeds, ``claim_next_blocked`` takes the first blocked delivery of H
in that aggregate, in version order, back (``blocked`` -> ``published``, one
conditional UPDATE, so only one caller gets it) for the caller to run or publish. A
delivery that blocks reads its predecessor again after its own row is committed, so a
success committed meanwhile is never missed by both sides; and the sweep
(``relay.redelivery.wake_blocked``) wakes a blocked delivery whose predecessor is done if
that wake-up was lost (a worker killed in between, a message the broker lost).
"""

from __future__ import annotations

from uuid import UUID

from django.db import IntegrityError, transaction
from django.db.models import Q, Subquery
from django.db.models.functions import Coalesce

from ..db.clock import DatabaseNow
from ..events.base import Envelope
from ..exceptions import PredecessorPending
from ..models import DeliveryStatus, OutboxEvent, ProcessedEvent
from .handlers import Handler

#: Predecessor states that let the follower run (discarded: an operator gave up on it).
DONE = (DeliveryStatus.SUCCEEDED, DeliveryStatus.DISCARDED)


def is_ordered(handler: Handler, envelope: Envelope) -> bool:
    """Whether this delivery is ordered at all: an ordered handler, an event with an aggregate."""
    return handler.ordered and bool(envelope.aggregate_id)


def predecessor(handler: Handler, envelope: Envelope, using: str) -> UUID | None:
    """``envelope``'s predecessor for ``handler``: its event id (one query)."""
    same = OutboxEvent.objects.using(using).filter(
        aggregate_type=envelope.aggregate_type,
        aggregate_id=envelope.aggregate_id,
        event_type__in=handler.known_types(),
    )
    own = same.filter(event_id=envelope.event_id)
    own_id = own.values("id")[:1]
    version = envelope.aggregate_version
    if version is None:
        earlier = Q(aggregate_version__isnull=True, id__lt=own_id)
    else:
        earlier = Q(aggregate_version__lt=version) | Q(aggregate_version=version, id__lt=own_id)
    # A scheduled event due after this one is delivered after it: it is not waited for.
    own_due = own.annotate(due=Coalesce("deliver_at", "created_at")).values("due")[:1]
    due_before = Q(deliver_at__isnull=True) | Q(deliver_at__lte=Subquery(own_due))
    return (
        same.filter(earlier, due_before)
        .order_by("-aggregate_version", "-id")
        .values_list("event_id", flat=True)
        .first()
    )


def _status(handler: Handler, event_id: UUID, using: str, *, lock: bool) -> str:
    rows = ProcessedEvent.objects.using(using).filter(event_id=event_id, handler=handler.name)
    if lock:
        rows = rows.select_for_update()
    return str(rows.values_list("status", flat=True).first() or "")


def _done(status: str) -> bool:
    """Succeeded or discarded (retention never prunes an ordered handler's row while its
    event is in the outbox, so no row means not delivered yet)."""
    return status in DONE


def check_predecessor(handler: Handler, envelope: Envelope, using: str) -> None:
    """Raise ``PredecessorPending`` unless the predecessor's delivery is done.

    Call it inside the handler's transaction: the predecessor's row stays locked until
    that transaction ends, so its outcome cannot change under the running handler.
    """
    if not is_ordered(handler, envelope):
        return
    before = predecessor(handler, envelope, using)
    if before is None:
        return
    status = _status(handler, before, using, lock=True)
    if not _done(status):
        raise PredecessorPending(handler.name, envelope.event_id, before, status)


def predecessor_done(handler: Handler, envelope: Envelope, using: str) -> bool:
    """The same test outside a transaction (a fresh read of committed rows)."""
    before = predecessor(handler, envelope, using)
    return before is None or _done(_status(handler, before, using, lock=False))


def record_blocked(
    handler: Handler, envelope: Envelope, pending: PredecessorPending, using: str
) -> None:
    """Mark the delivery ``blocked`` with the reason, unless it already has an outcome."""
    reason = str(pending)
    rows = ProcessedEvent.objects.using(using)
    with transaction.atomic(using=using):
        found = (
            rows.select_for_update()
            .filter(event_id=envelope.event_id, handler=handler.name)
            .values_list("pk", "status")
            .first()
        )
        if found is None:
            try:
                with transaction.atomic(using=using):
                    rows.create(
                        event_id=envelope.event_id,
                        handler=handler.name,
                        status=DeliveryStatus.BLOCKED,
                        event_type=envelope.event_type[:255],
                        aggregate_type=envelope.aggregate_type[:255],
                        aggregate_id=envelope.aggregate_id[:255],
                        last_error=reason,
                        due_at=DatabaseNow(),
                        processed_at=None,
                    )
                return
            except IntegrityError:
                return  # someone else wrote its row first: that outcome stands
        pk, status = found
        if status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
            return
        rows.filter(pk=pk).update(
            status=DeliveryStatus.BLOCKED, last_error=reason, due_at=DatabaseNow()
        )


def unblock(handler: Handler, event_id: UUID, using: str) -> bool:
    """Take a blocked delivery back (``published``, due now); False if someone else did."""
    return bool(
        ProcessedEvent.objects.using(using)
        .filter(event_id=event_id, handler=handler.name, status=DeliveryStatus.BLOCKED)
        .update(status=DeliveryStatus.PUBLISHED, due_at=DatabaseNow(), last_error="")
    )


def first_blocked(
    handler: Handler, aggregate_type: str, aggregate_id: str, using: str
) -> Envelope | None:
    """The first blocked delivery of ``handler`` in this aggregate, in version order.

    All of them are read (the partial index of blocked rows narrows it to this handler
    and aggregate), never a sample, so the true next one is found; one query. Deliveries
    whose event left the outbox are left alone.
    """
    blocked = ProcessedEvent.objects.using(using).filter(
        handler=handler.name,
        status=DeliveryStatus.BLOCKED,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
    )
    event = (
        OutboxEvent.objects.using(using)
        .filter(
            event_id__in=blocked.values("event_id"),
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
        )
        .order_by("aggregate_version", "id")
        .first()
    )
    return event.to_envelope() if event is not None else None


def claim_next_blocked(handler: Handler, envelope: Envelope, using: str) -> Envelope | None:
    """Take back the first blocked delivery of ``handler`` in ``envelope``'s aggregate.

    Returns its envelope for the caller to run or publish, or None (one query when
    nothing is blocked): also when that delivery still waits for another predecessor,
    or someone else took it back first (they run it, and what follows it).
    """
    if not is_ordered(handler, envelope):
        return None
    follower = first_blocked(handler, envelope.aggregate_type, envelope.aggregate_id, using)
    if follower is None or not predecessor_done(handler, follower, using):
        return None
    return follower if unblock(handler, follower.event_id, using) else None
