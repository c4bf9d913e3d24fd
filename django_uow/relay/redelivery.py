"""Handler deliveries again: the deadline sweep, waking blocked ones, and ``redeliver``.

- ``republish_overdue``: a delivery published (or due for a retry) more than
  ``HANDLER_DEADLINE`` ago that has neither succeeded nor failed is published again,
  in bounded batches, once its previous copy can no longer be in the broker's queue:
  the broker may have lost it (a Redis restart) or be holding it for a dead worker
  until its visibility timeout. A backlog behind slow workers is left alone.
  Idempotent handlers skip a copy that arrives after all. Runs with every sweep
  (``relay_outbox``, the beat task) when ``CeleryPublisher`` is configured; with
  ``InlinePublisher`` nothing is ever left published.
- ``wake_blocked``: an ordered handler's blocked delivery whose predecessor is done is
  published again (or run here), when the predecessor's own wake-up was lost.
- ``redeliver``: run one (event, handler) delivery again: the admin's actions and the
  ``redeliver`` command. Every change is made from the status read under the row's
  lock, so an operator racing a worker never undoes what the worker did.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from django.db import transaction
from django.db.models import F, Max

from ..conf import uow_settings
from ..db.clock import DatabaseNow, database_now
from ..delivery import ordering
from ..delivery.handlers import Handler, handlers_for
from ..delivery.handlers import registry as handler_registry
from ..delivery.rows import claim_redelivery, overdue_deliveries
from ..delivery.running import Ran, run_delivery
from ..events.base import Envelope
from ..exceptions import RelayError
from ..models import (
    OWED_DELIVERY_STATUSES,
    DeliveryStatus,
    OutboxEvent,
    OutboxStatus,
    ProcessedEvent,
)
from ..publishers import CeleryPublisher, Publisher, get_publishers
from ..retry import describe, logger_for

logger = logger_for("django_uow.relay")


def celery_publisher(publishers: Sequence[Publisher] | None = None) -> CeleryPublisher | None:
    """The configured ``CeleryPublisher``, if any: the one that leaves deliveries published."""
    for publisher in publishers if publishers is not None else get_publishers():
        if isinstance(publisher, CeleryPublisher):
            return publisher
    return None


# ----------------------------------------------------------------------- deadline sweep

#: Publish times closer than this are not told apart when reading the queue's progress
#: (several relays publish at once; each row's time is taken around its send).
FRONTIER_SLACK = timedelta(seconds=2)
#: Without a broker that reports its queue, each republish of a delivery doubles its
#: deadline, up to this many doublings.
MAX_DEADLINE_DOUBLINGS = 6


#: Overdue deliveries looked at per sweep, per delivery it may publish: one whose copy may
#: still be queued is passed over, so that it cannot keep the ones behind it waiting.
SCAN_FACTOR = 20


def _frontiers(using: str, handlers: Sequence[str], since: datetime) -> dict[str, datetime]:
    """For each handler, the latest publish time of a delivery a worker took and finished
    at its first attempt, among those finished since ``since``.

    Only first-attempt successes count: a retry's row holds its retry's due time, not its
    place in the queue. One statement, over the index of succeeded rows.
    """
    rows = (
        ProcessedEvent.objects.using(using)
        .filter(
            status=DeliveryStatus.SUCCEEDED,
            processed_at__gte=since,
            handler__in=list(handlers),
            attempts=1,
            publishes__gte=1,
        )
        .values("handler")
        .annotate(frontier=Max("due_at"))
        .order_by()
        .values_list("handler", "frontier")
    )
    return {name: frontier for name, frontier in rows if frontier is not None}


@dataclass(frozen=True)
class _Queues:
    """What the broker and the table say of each handler's queue."""

    #: handler -> the queue its tasks go to
    of: dict[str, str]
    #: queue -> messages waiting in it (where the transport can tell)
    depth: dict[str, int]
    #: queue -> the latest publish time of a message of it that a worker took
    frontier: dict[str, datetime]

    def copy_gone(self, row: tuple[int, UUID, str, datetime, int], now: datetime) -> bool:
        """Whether the previous copy of an overdue delivery can no longer be queued.

        - its queue is empty: no copy waits there;
        - or a message of its queue sent after it (whatever handler that one was for) was
          already taken: a queue hands out messages in the order they were sent;
        - or, when the broker cannot say, its deadline has passed again, doubled with
          every republish, so a backlog is not copied again and again.
        """
        _pk, _event_id, handler, due_at, publishes = row
        queue = self.of.get(handler)
        if queue is not None and queue in self.depth:
            if self.depth[queue] == 0:
                return True
            frontier = self.frontier.get(queue)
            return frontier is not None and due_at < frontier - FRONTIER_SLACK
        doublings = min(max(publishes - 1, 0), MAX_DEADLINE_DOUBLINGS)
        return bool(due_at < now - uow_settings.HANDLER_DEADLINE * 2**doublings)


def _queues(
    publisher: CeleryPublisher, using: str, handlers: dict[str, Handler], now: datetime
) -> _Queues:
    """The queues of ``handlers``: their depth (one passive declare each) and frontier."""
    of = publisher.queues_of(handlers.values())
    depth = publisher.queue_depths(of.values())
    since = now - 2 * uow_settings.HANDLER_DEADLINE
    frontier: dict[str, datetime] = {}
    for name, when in _frontiers(using, sorted(of), since).items():
        queue = of[name]
        if queue not in frontier or when > frontier[queue]:
            frontier[queue] = when
    return _Queues(of, depth, frontier)


def _overdue(using: str, limit: int) -> list[tuple[int, UUID, str, datetime, int]]:
    """Up to ``limit`` overdue deliveries, oldest due first (``due_at`` is set on owed rows)."""
    rows = overdue_deliveries(using, deadline=uow_settings.HANDLER_DEADLINE).values_list(
        "id", "event_id", "handler", "due_at", "publishes"
    )[:limit]
    return [(pk, event_id, name, due, n) for pk, event_id, name, due, n in rows if due]


def _claim(using: str, ids: Sequence[int]) -> list[tuple[int, UUID, str]]:
    """Take the chosen deliveries for this sweep: still owed and overdue, locked (others
    skip them), due now and one more publish. Rows a handler finished meanwhile are left."""
    deadline = uow_settings.HANDLER_DEADLINE
    with transaction.atomic(using=using):
        rows = overdue_deliveries(using, deadline=deadline).filter(id__in=list(ids))
        taken = list(
            rows.select_for_update(skip_locked=True).values_list("id", "event_id", "handler")
        )
        if taken:
            ProcessedEvent.objects.using(using).filter(
                id__in=[t[0] for t in taken], status__in=OWED_DELIVERY_STATUSES
            ).update(due_at=DatabaseNow(), publishes=F("publishes") + 1)
    return taken


def _envelopes(using: str, event_ids: set[UUID]) -> dict[UUID, Envelope]:
    events = OutboxEvent.objects.using(using).filter(event_id__in=event_ids)
    return {event.event_id: event.to_envelope() for event in events}


def _give_up(using: str, ids: Sequence[int], reason: str) -> None:
    if ids:
        ProcessedEvent.objects.using(using).filter(
            id__in=ids, status__in=OWED_DELIVERY_STATUSES
        ).update(status=DeliveryStatus.FAILED, last_error=reason, last_attempt_at=DatabaseNow())


def republish_overdue(
    *,
    using: str = "default",
    publishers: Sequence[Publisher] | None = None,
    batch_size: int | None = None,
) -> int:
    """Publish again the deliveries not handled ``HANDLER_DEADLINE`` after they were due,
    when their previous copy can no longer be in the broker's queue (``_copy_gone``).

    A backlog is therefore not copied: while workers are behind, the queue grows by the
    new work only, and each delivery keeps its first publish time (the consumer lag).
    Bounded: at most ``batch_size`` (default ``BATCH_SIZE``) deliveries per call; returns
    how many were published. A delivery whose event is gone from the outbox, or whose
    handler is no longer registered, becomes ``failed`` with the reason. Broker errors
    propagate; the deliveries stay owed and a later sweep tries again.
    """
    publisher = celery_publisher(publishers)
    if publisher is None:
        return 0
    size = batch_size or uow_settings.BATCH_SIZE
    overdue = _overdue(using, size * SCAN_FACTOR)
    if not overdue:
        return 0
    now = database_now(using)
    names = sorted({row[2] for row in overdue})
    known = {name: handler for name in names if (handler := _registered(name)) is not None}
    try:
        queues = _queues(publisher, using, known, now)
    except Exception as exc:
        raise RelayError(
            f"Could not read the broker's queues ({describe(exc)}); overdue handler "
            "deliveries are published again by a later sweep."
        ) from exc
    chosen = [row[0] for row in overdue if row[2] not in known or queues.copy_gone(row, now)][:size]
    taken = _claim(using, chosen) if chosen else []
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
        elif name not in known:
            unknown.append(row_id)
        else:
            deliveries.append((envelope, known[name]))
    _give_up(using, gone, "The outbox event is gone (pruned or deleted): cannot publish.")
    _give_up(using, unknown, "No handler is registered under this name any more.")
    try:
        publisher.send_deliveries(deliveries, record=False)
    except Exception as exc:
        raise RelayError(
            f"Could not publish {len(deliveries)} overdue handler deliveries again "
            f"({describe(exc)}); a later sweep tries again after HANDLER_DEADLINE."
        ) from exc
    if deliveries:
        logger.warning(
            "Published %d handler deliveries again: not handled %s after they were due "
            "(HANDLER_DEADLINE), and their previous copies are no longer queued; the broker "
            "may have lost them.",
            len(deliveries),
            uow_settings.HANDLER_DEADLINE,
        )
    return len(deliveries)


def _registered(name: str) -> Handler | None:
    try:
        return handler_registry.get(name)
    except LookupError:
        return None


# ----------------------------------------------------------------------- blocked


def wake_blocked(
    *,
    using: str = "default",
    publishers: Sequence[Publisher] | None = None,
    batch_size: int | None = None,
) -> int:
    """Wake the first blocked delivery of each (handler, aggregate) whose predecessor is
    done (succeeded, discarded, or gone from the outbox).

    The predecessor's success wakes its follower at once; this sweep covers a wake-up
    that was lost (a worker killed between the two, a message the broker lost). With
    ``CeleryPublisher`` the woken delivery is published again, otherwise it runs here.
    Bounded by ``batch_size`` chains per call; returns how many were woken.
    """
    chains = list(
        ProcessedEvent.objects.using(using)
        .filter(status=DeliveryStatus.BLOCKED)
        .values_list("handler", "aggregate_type", "aggregate_id")
        .distinct()
        .order_by()[: batch_size or uow_settings.BATCH_SIZE]
    )
    publisher = celery_publisher(publishers)
    woken = 0
    for name, aggregate_type, aggregate_id in chains:
        handler = _registered(name)
        if handler is None:
            continue
        follower = ordering.first_blocked(handler, aggregate_type, aggregate_id, using)
        if follower is None or not ordering.predecessor_done(handler, follower, using):
            continue
        if not ordering.unblock(handler, follower.event_id, using):
            continue  # someone else woke it
        woken += 1
        logger.info(
            "Woke the blocked delivery of event %s to handler %s: its predecessor is done",
            follower.event_id,
            name,
        )
        if publisher is not None:
            try:
                publisher.send_deliveries([(follower, handler)])
            except Exception as exc:
                raise RelayError(
                    f"Could not publish the woken delivery of event {follower.event_id} to "
                    f"handler {name} ({describe(exc)}); the deadline sweep publishes it again."
                ) from exc
        else:
            try:
                run_delivery(handler, follower, using=using)
            except Exception:
                logger.exception(
                    "Handler %s failed event %s, woken by the sweep", name, follower.event_id
                )
    return woken


# ----------------------------------------------------------------------- redeliver


@dataclass(frozen=True)
class Redelivery:
    """What ``redeliver`` did with one (event, handler).

    ``outcome``: ``"published"`` (sent to Celery again), ``"queued"`` (a copy was in
    flight: another is queued behind it, and the inbox lets only one have its effect),
    ``"in-flight"`` (refused: a non-idempotent handler's delivery is published or
    retrying, and a second copy could have its effect twice), ``"succeeded"`` (ran here),
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


#: Statuses an operator may run again: no row yet (a backfill), and the settled ones.
RERUNNABLE = ("", DeliveryStatus.FAILED, DeliveryStatus.DISCARDED, DeliveryStatus.BLOCKED)


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
    succeeded is skipped either way; one in flight gets a copy queued behind it. A
    non-idempotent handler's delivery in flight is refused. The row is locked before
    its status is read, so a handler finishing meanwhile is seen, never overwritten.
    Raises ``LookupError`` when the event is not in the outbox or the handler is not
    registered.
    """
    event_id = UUID(str(event_id))
    event = OutboxEvent.objects.using(using).filter(event_id=event_id).first()
    if event is None:
        raise LookupError(
            f"Event {event_id} is not in the outbox (pruned, or never written): it cannot be "
            "delivered again."
        )
    handler = handler_registry.get(handler_name)
    envelope = event.to_envelope()
    in_flight = OWED_DELIVERY_STATUSES
    if handler.idempotent:
        allowed: tuple[str, ...] = (*RERUNNABLE, *in_flight)
    else:
        allowed = (*RERUNNABLE, DeliveryStatus.SUCCEEDED)
    publisher = None if inline else celery_publisher(publishers)
    claim = claim_redelivery(
        envelope, handler.name, using=using, allowed=allowed, publish=publisher is not None
    )
    if not claim.taken:
        return _refusal(event_id, handler, claim.previous)
    if publisher is not None:
        publisher.send_deliveries([(envelope, handler)], record=False)
        logger.info("Published handler %s for event %s again", handler.name, event_id)
        outcome = "queued" if claim.previous in in_flight else "published"
        return Redelivery(event_id, handler.name, outcome)
    try:
        ran = run_delivery(handler, envelope, using=using)
    except Exception as exc:
        return Redelivery(event_id, handler.name, "failed", describe(exc))
    outcome = {Ran.RAN: "succeeded", Ran.SKIPPED: "skipped", Ran.BLOCKED: "blocked"}[ran]
    if ran is not Ran.BLOCKED:
        finish_handled_event(event, using=using, publishers=publishers)
    return Redelivery(event_id, handler.name, outcome)


def finish_handled_event(
    event: OutboxEvent, *, using: str = "default", publishers: Sequence[Publisher] | None = None
) -> bool:
    """Mark a ``failed`` event ``dispatched`` once every handler of its type has succeeded.

    In inline mode a handler that fails for good fails its event, and a failed event holds
    back the later events of its aggregate. Once an operator's re-runs have made every
    delivery succeed, nothing of the event is left to do, so it stops holding them back.
    Only when every configured publisher just runs this project's handlers: an event for
    a broker's consumers elsewhere still has to be published (``Retry now``).
    """
    if event.status != OutboxStatus.FAILED:
        return False
    configured = list(publishers) if publishers is not None else get_publishers()
    if not configured or not all(getattr(p, "runs_handlers", False) for p in configured):
        return False
    names = [h.name for h in handlers_for(event.event_type)]
    done = (
        ProcessedEvent.objects.using(using)
        .filter(event_id=event.event_id, handler__in=names, status=DeliveryStatus.SUCCEEDED)
        .count()
    )
    if done < len(names):
        return False
    finished = (
        OutboxEvent.objects.using(using)
        .filter(pk=event.pk, status=OutboxStatus.FAILED)
        .update(status=OutboxStatus.DISPATCHED, dispatched_at=DatabaseNow(), last_error="")
    )
    if finished:
        logger.info(
            "Event %s is dispatched: every handler's delivery has succeeded", event.event_id
        )
    return bool(finished)


def _refusal(event_id: UUID, handler: Handler, status: str) -> Redelivery:
    if status == DeliveryStatus.SUCCEEDED:
        return Redelivery(event_id, handler.name, "skipped")
    if status in OWED_DELIVERY_STATUSES:
        return Redelivery(
            event_id,
            handler.name,
            "in-flight",
            f"the delivery is {status}: a worker has it or will take it, and handler "
            f"{handler.name} is not idempotent, so a second copy could have its effect "
            "twice. Re-run it once it has failed, or after HANDLER_DEADLINE, when the sweep "
            "publishes it again if the broker lost it.",
        )
    return Redelivery(
        event_id, handler.name, "in-flight", f"another writer changed the delivery ({status})"
    )


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
    chosen = handler_registry.get(handler) if handler is not None else None  # fails before any run
    if event_id is None and event_type is None and since is None and chosen is None:
        raise ValueError(
            "Name an event (event_id), an event type, a start time or a handler, or ask for "
            "the failed deliveries."
        )
    if chosen is not None and event_type is not None and not chosen.handles(event_type):
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
    if event_type is not None:
        events = events.filter(event_type=event_type)
    elif chosen is not None:  # a handler runs only on the events it takes
        events = events.filter(event_type__in=chosen.known_types())
    if since is not None:
        events = events.filter(created_at__gte=since)
    for found_id, found_type in events.order_by("id").values_list("event_id", "event_type"):
        if chosen is not None:
            yield found_id, chosen.name
            continue
        for found in handler_registry.for_type(found_type):
            yield found_id, found.name
