"""Handler deliveries again: the deadline sweep, and ``redeliver`` for an operator.

- ``republish_overdue``: a delivery published (or due for a retry) more than
  ``HANDLER_DEADLINE`` ago that has neither succeeded nor failed is published again,
  in bounded batches. The broker may have lost it (a Redis restart) or be holding it
  for a dead worker until its visibility timeout; idempotent handlers skip the copy.
  Runs with every sweep (``relay_outbox``, the beat task) when ``CeleryPublisher`` is
  configured; with ``InlinePublisher`` nothing is ever left published.
- ``redeliver``: run one (event, handler) delivery again: the admin's action and the
  ``redeliver`` command. With ``CeleryPublisher`` configured the task is published
  again; otherwise the handler runs here and now. Idempotent handlers skip a delivery
  that already succeeded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from ..conf import uow_settings
from ..deliveries import overdue_deliveries, record_published
from ..events import Envelope
from ..exceptions import RelayError
from ..handlers import Handler, registry
from ..inbox import Ran, run_delivery
from ..models import DeliveryStatus, OutboxEvent, OutboxStatus, ProcessedEvent
from ..publishers import CeleryPublisher, Publisher, get_publishers
from ..retry import describe

logger = logging.getLogger("django_uow.relay")


def celery_publisher(publishers: Sequence[Publisher] | None = None) -> CeleryPublisher | None:
    """The configured ``CeleryPublisher``, if any: the one that leaves deliveries published."""
    for publisher in publishers if publishers is not None else get_publishers():
        if isinstance(publisher, CeleryPublisher):
            return publisher
    return None


# ----------------------------------------------------------------------- deadline sweep


def _claim_overdue(using: str, limit: int, now: datetime) -> list[tuple[int, UUID, str]]:
    """Take up to ``limit`` overdue deliveries: move their ``due_at`` to now, so a sweep
    running beside this one does not publish them a second time."""
    with transaction.atomic(using=using):
        rows = overdue_deliveries(using, deadline=uow_settings.HANDLER_DEADLINE, now=now)
        taken = list(
            rows.select_for_update(skip_locked=True).values_list("id", "event_id", "handler")[
                :limit
            ]
        )
        if taken:
            ProcessedEvent.objects.using(using).filter(id__in=[t[0] for t in taken]).update(
                due_at=now
            )
    return taken


def _envelopes(using: str, event_ids: set[UUID]) -> dict[UUID, Envelope]:
    events = OutboxEvent.objects.using(using).filter(event_id__in=event_ids)
    return {event.event_id: event.to_envelope() for event in events}


def _give_up(using: str, ids: Sequence[int], reason: str, now: datetime) -> None:
    if ids:
        ProcessedEvent.objects.using(using).filter(id__in=ids).update(
            status=DeliveryStatus.FAILED, last_error=reason, last_attempt_at=now
        )


def republish_overdue(
    *,
    using: str = "default",
    publishers: Sequence[Publisher] | None = None,
    batch_size: int | None = None,
    now: datetime | None = None,
) -> int:
    """Publish again the deliveries not handled ``HANDLER_DEADLINE`` after they were due.

    Bounded: at most ``batch_size`` (default ``BATCH_SIZE``) deliveries per call; returns
    how many were published. A delivery whose event is gone from the outbox, or whose
    handler is no longer registered, becomes ``failed`` with the reason. Broker errors
    propagate; the deliveries stay owed and the next sweep tries again after the deadline.
    """
    publisher = celery_publisher(publishers)
    if publisher is None:
        return 0
    now = now or timezone.now()
    taken = _claim_overdue(using, batch_size or uow_settings.BATCH_SIZE, now)
    if not taken:
        return 0
    envelopes = _envelopes(using, {event_id for _, event_id, _ in taken})
    deliveries: list[tuple[Envelope, Handler]] = []
    gone: list[int] = []
    unknown: list[int] = []
    for row_id, event_id, name in taken:
        envelope = envelopes.get(event_id)
        if envelope is None:
            gone.append(row_id)
            continue
        try:
            deliveries.append((envelope, registry.get(name)))
        except LookupError:
            unknown.append(row_id)
    _give_up(using, gone, "The outbox event is gone (pruned or deleted): cannot publish.", now)
    _give_up(using, unknown, "No handler is registered under this name any more.", now)
    try:
        publisher.send_deliveries(deliveries)
    except Exception as exc:
        raise RelayError(
            f"Could not publish {len(deliveries)} overdue handler deliveries again "
            f"({describe(exc)}); the next sweep tries again after HANDLER_DEADLINE."
        ) from exc
    if deliveries:
        logger.warning(
            "Published %d handler deliveries again: not handled %s after they were due "
            "(HANDLER_DEADLINE); the broker may have lost them.",
            len(deliveries),
            uow_settings.HANDLER_DEADLINE,
        )
    return len(deliveries)


# ----------------------------------------------------------------------- redeliver


@dataclass(frozen=True)
class Redelivery:
    """What ``redeliver`` did with one (event, handler).

    ``outcome``: ``"published"`` (sent to Celery again), ``"succeeded"`` (ran here),
    ``"skipped"`` (an idempotent handler that already succeeded), ``"blocked"`` (an
    ordered handler whose previous event of the aggregate has not succeeded: it runs
    when that one does), or ``"failed"`` (ran here and raised; ``error`` says why, and
    the delivery row has the traceback).
    """

    event_id: UUID
    handler: str
    outcome: str
    error: str = ""

    def __str__(self) -> str:
        tail = f": {self.error}" if self.error else ""
        return f"{self.event_id} {self.handler}: {self.outcome}{tail}"


def redeliver(
    event_id: UUID | str,
    handler_name: str,
    *,
    using: str = "default",
    inline: bool | None = None,
    publishers: Sequence[Publisher] | None = None,
) -> Redelivery:
    """Run one handler's delivery of one event again.

    With ``CeleryPublisher`` configured (and ``inline`` not True) the handler task is
    published again and its row says ``published``; otherwise the handler runs in this
    process and its row says how it went. An idempotent handler whose delivery already
    succeeded is skipped either way. Raises ``LookupError`` when the event is not in the
    outbox or the handler is not registered.
    """
    event_id = UUID(str(event_id))
    event = OutboxEvent.objects.using(using).filter(event_id=event_id).first()
    if event is None:
        raise LookupError(
            f"Event {event_id} is not in the outbox (pruned, or never written): it cannot be "
            "delivered again."
        )
    handler = registry.get(handler_name)
    envelope = event.to_envelope()
    row = ProcessedEvent.objects.using(using).filter(event_id=event_id, handler=handler.name)
    if handler.idempotent and row.filter(status=DeliveryStatus.SUCCEEDED).exists():
        return Redelivery(event_id, handler.name, "skipped")
    publisher = None if inline else celery_publisher(publishers)
    if publisher is not None:
        # Marked first: a worker that finishes before this write would otherwise be undone.
        record_published([(envelope, handler.name)], using=using, force=True)
        publisher.send_deliveries([(envelope, handler)], record=False)
        logger.info("Published handler %s for event %s again", handler.name, event_id)
        return Redelivery(event_id, handler.name, "published")
    try:
        ran = run_delivery(handler, envelope, using=using)
    except Exception as exc:
        return Redelivery(event_id, handler.name, "failed", describe(exc))
    outcome = {Ran.RAN: "succeeded", Ran.SKIPPED: "skipped", Ran.BLOCKED: "blocked"}[ran]
    return Redelivery(event_id, handler.name, outcome)


def deliveries_to_redeliver(
    *,
    using: str = "default",
    event_id: UUID | str | None = None,
    handler: str | None = None,
    failed: bool = False,
    event_type: str | None = None,
    since: datetime | None = None,
) -> Iterator[tuple[UUID, str]]:
    """The (event, handler) pairs ``redeliver`` should run, for the command's options.

    - ``failed``: the failed deliveries, narrowed by ``event_id``, ``handler``,
      ``event_type`` and ``since`` (last attempt at or after) when given;
    - otherwise the events named by ``event_id``, or the dispatched events of
      ``event_type`` and/or created ``since`` (a backfill over retained events), each
      with its handlers, or only ``handler``, whether or not they have a delivery row.
      ``handler`` alone is a backfill of that handler: every retained dispatched event
      of the type it handles. Events come in record (``id``) order, so each aggregate's
      events come in order.
    """
    if failed:
        rows = ProcessedEvent.objects.using(using).filter(status=DeliveryStatus.FAILED)
        if event_id is not None:
            rows = rows.filter(event_id=UUID(str(event_id)))
        if handler is not None:
            rows = rows.filter(handler=handler)
        if event_type is not None:
            rows = rows.filter(event_type=event_type)
        if since is not None:
            rows = rows.filter(last_attempt_at__gte=since)
        yield from rows.order_by("id").values_list("event_id", "handler").iterator()
        return
    chosen = registry.get(handler) if handler is not None else None  # fails before any run
    if event_id is None and event_type is None and since is None and chosen is None:
        raise ValueError(
            "Name an event (event_id), an event type, a start time or a handler, or ask for "
            "the failed deliveries."
        )
    if chosen is not None and event_type is not None and event_type != chosen.event_type:
        raise ValueError(
            f"Handler {chosen.name} handles {chosen.event_type!r} events, not {event_type!r}: "
            "drop the event type or name a handler of that type."
        )
    events = OutboxEvent.objects.using(using)
    if event_id is not None:
        events = events.filter(event_id=UUID(str(event_id)))
        if not events.exists():
            raise LookupError(f"Event {event_id} is not in the outbox.")
    else:
        events = events.filter(status=OutboxStatus.DISPATCHED)
    if chosen is not None:
        event_type = chosen.event_type  # a handler runs only on the events it handles
    if event_type is not None:
        events = events.filter(event_type=event_type)
    if since is not None:
        events = events.filter(created_at__gte=since)
    for found_id, found_type in events.order_by("id").values_list("event_id", "event_type"):
        if chosen is not None:
            yield found_id, chosen.name
            continue
        for found in registry.for_type(found_type):
            yield found_id, found.name
