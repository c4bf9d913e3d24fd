"""Why a pending event waits, and which aggregates a failing event blocks.

The relay delivers an aggregate's due events in order (by due time, then record order:
``relay.statements.precedes``), so one failing event holds back every later event of
its aggregate. A scheduled event that is not due yet holds back nothing: it is reported
as ``scheduled`` and never as the head others wait behind. An operator looking at a
growing lag needs to tell "one dead letter blocks one aggregate" from "no relay is
running"; these functions answer it with a constant number of queries, each walking the
owed-rows index (``uow_outbox_owed_idx``: pending and failed rows by aggregate), never
the dispatched rows.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from django.db import connections
from django.db.models import Count, IntegerField, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..models import OutboxEvent, OutboxStatus
from ..relay.claims import no_owed_predecessor

PENDING = OutboxStatus.PENDING.value
FAILED = OutboxStatus.FAILED.value

#: Columns a reason is computed from (all small; the list page loads them anyway).
STATE_COLUMNS = (
    "id",
    "event_id",
    "status",
    "attempts",
    "available_at",
    "claimed_by",
    "claimed_until",
    "deliver_at",
)

WaitKind = Literal["blocked", "behind", "leased", "backing_off", "scheduled", "due"]


@dataclass(frozen=True)
class WaitReason:
    """Why one pending event has not been delivered yet.

    ``kind``: ``blocked`` (an earlier event of its aggregate failed for good: it waits
    until someone retries that one), ``behind`` (an earlier event of its aggregate is
    still owed; ``until``/``relay`` then describe that event), ``leased`` (a relay holds
    it until ``until``), ``backing_off`` (its next try is at ``until``), ``scheduled``
    (recorded with a delay; due at ``until``) or ``due``.
    """

    kind: WaitKind
    until: datetime.datetime | None = None
    relay: str = ""
    blocker_pk: int | None = None
    blocker_event_id: uuid.UUID | None = None

    @property
    def text(self) -> str:
        before, after = self.parts()
        if self.blocker_event_id is None:
            return before
        return f"{before} {self.blocker_event_id}{after}"

    def parts(self) -> tuple[str, str]:
        """The text before and after the blocking event's id (a page links the id)."""
        until = self.until.isoformat(timespec="seconds") if self.until else ""
        if self.kind == "blocked":
            return "behind failed event", " of its aggregate"
        if self.kind == "behind":
            if self.relay:
                return (
                    "behind event",
                    f" of its aggregate, leased by relay {self.relay} until {until}",
                )
            if self.until:
                return "behind event", f" of its aggregate, whose next try is at {until}"
            return "behind event", " of its aggregate"
        if self.kind == "leased":
            return f"leased by relay {self.relay} until {until}", ""
        if self.kind == "backing_off":
            return f"next try at {until} (backing off)", ""
        if self.kind == "scheduled":
            return f"scheduled for {until}", ""
        return "due now", ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "text": self.text,
            "until": self.until.isoformat() if self.until else None,
            "relay": self.relay or None,
            "blocker_event_id": str(self.blocker_event_id) if self.blocker_event_id else None,
        }


def _own_state(event: OutboxEvent, now: datetime.datetime) -> WaitReason:
    if event.claimed_until is not None and event.claimed_until >= now:
        return WaitReason("leased", until=event.claimed_until, relay=event.claimed_by)
    if event.available_at > now:
        if event.deliver_at is not None and event.deliver_at > now:
            return WaitReason("scheduled", until=event.available_at)
        return WaitReason("backing_off", until=event.available_at)
    return WaitReason("due")


def is_scheduled(event: OutboxEvent, now: datetime.datetime) -> bool:
    """A pending event recorded with a delay that is not due yet."""
    return (
        event.status == PENDING
        and event.deliver_at is not None
        and event.deliver_at > now
        and event.available_at > now
    )


def not_scheduled_for_later(now: datetime.datetime) -> Q:
    """Owed rows that can hold others back: all but scheduled events not due yet
    (the rows ``is_scheduled`` is false for)."""
    return Q(deliver_at__isnull=True) | Q(deliver_at__lte=now) | Q(available_at__lte=now)


def _behind(head: OutboxEvent, now: datetime.datetime) -> WaitReason:
    state = _own_state(head, now)
    return WaitReason(
        "behind",
        until=state.until,
        relay=state.relay,
        blocker_pk=head.pk,
        blocker_event_id=head.event_id,
    )


def wait_reasons(
    events: Iterable[OutboxEvent], using: str, *, now: datetime.datetime | None = None
) -> dict[int, WaitReason]:
    """Map the pk of every pending event in ``events`` to why it waits.

    Two queries whatever the number of events (none when no event has an aggregate):
    the first owed and first failed event of each of their aggregates, then those
    events' state. Each event must have the ``STATE_COLUMNS`` and its aggregate loaded.
    """
    now = now or timezone.now()
    pending = [e for e in events if e.status == PENDING]
    keyed = [e for e in pending if e.aggregate_id]
    firsts: dict[tuple[str, str], tuple[int, int | None]] = {}
    heads: dict[int, OutboxEvent] = {}
    if keyed:
        owed = (
            OutboxEvent.objects.using(using)
            .filter(status__in=[PENDING, FAILED])
            .filter(not_scheduled_for_later(now))
        )
        for agg_type, agg_id, first, first_failed in (
            owed.filter(
                aggregate_type__in={e.aggregate_type for e in keyed},
                aggregate_id__in={e.aggregate_id for e in keyed},
            )
            .values_list("aggregate_type", "aggregate_id")
            .annotate(first=Min("id"), first_failed=Min("id", filter=Q(status=FAILED)))
            .order_by()
        ):
            firsts[(agg_type, agg_id)] = (first, first_failed)
        wanted = set()
        for event in keyed:
            first, first_failed = firsts.get((event.aggregate_type, event.aggregate_id), (0, None))
            if first_failed is not None and first_failed < event.pk:
                wanted.add(first_failed)
            elif first and first < event.pk:
                wanted.add(first)
        if wanted:
            heads = {
                h.pk: h
                for h in OutboxEvent.objects.using(using).filter(pk__in=wanted).only(*STATE_COLUMNS)
            }
    reasons: dict[int, WaitReason] = {}
    for event in pending:
        first, first_failed = firsts.get((event.aggregate_type, event.aggregate_id), (0, None))
        if is_scheduled(event, now):
            reasons[event.pk] = _own_state(event, now)  # not due: nothing else matters yet
        elif first_failed is not None and first_failed < event.pk and first_failed in heads:
            head = heads[first_failed]
            reasons[event.pk] = WaitReason(
                "blocked", blocker_pk=head.pk, blocker_event_id=head.event_id
            )
        elif first and first < event.pk and first in heads:
            reasons[event.pk] = _behind(heads[first], now)
        else:
            reasons[event.pk] = _own_state(event, now)
    return reasons


def failing_heads(using: str, *, now: datetime.datetime | None = None) -> QuerySet[OutboxEvent]:
    """The first owed event of each blocked aggregate, annotated with ``waiting``.

    A head is failing when it is failed (a dead letter) or pending after a failed
    attempt and backing off; ``waiting`` counts the owed events of its aggregate behind
    it (scheduled events not due yet left out). Events without an aggregate block
    nothing and are left out. Ordered with the most events waiting first.
    """
    now = now or timezone.now()
    owed = OutboxEvent.objects.using(using).filter(status__in=[PENDING, FAILED])
    same_aggregate = {
        "aggregate_type": OuterRef("aggregate_type"),
        "aggregate_id": OuterRef("aggregate_id"),
    }
    # The head: no owed event of its aggregate precedes it (the relay's own rule).
    table = connections[using].ops.quote_name(OutboxEvent._meta.db_table)
    first, params = no_owed_predecessor(using, table)
    behind = (
        owed.filter(not_scheduled_for_later(now))
        .filter(**same_aggregate, id__gt=OuterRef("id"))
        .order_by()
        .values("aggregate_type")
        .annotate(n=Count("id"))
        .values("n")
    )
    heads: QuerySet[OutboxEvent] = (
        owed.filter(Q(status=FAILED) | Q(attempts__gt=0, available_at__gt=now))
        .exclude(aggregate_id="")
        .extra(where=[first], params=params)
        .annotate(waiting=Coalesce(Subquery(behind, output_field=IntegerField()), 0))
        .order_by("-waiting", "id")
    )
    return heads


#: Columns shown for a blocking head (``last_error`` is capped by the caller).
HEAD_COLUMNS = (
    "id",
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "status",
    "attempts",
    "available_at",
    "last_error",
)


def blocked_summary(
    using: str, *, top: int = 5, now: datetime.datetime | None = None, error_chars: int = 500
) -> dict[str, Any]:
    """``{"blocked_aggregates": n, "blocking_heads": [...]}``: two queries.

    Each head: event id, type, aggregate, status, attempts, next try (``available_at``
    for a pending head), ``waiting`` and ``last_error`` cut to ``error_chars``.
    """
    heads = failing_heads(using, now=now)
    count = heads.count()
    rows: Sequence[OutboxEvent] = list(heads.only(*HEAD_COLUMNS)[:top]) if count else []
    return {
        "blocked_aggregates": count,
        "blocking_heads": [head_dict(h, error_chars) for h in rows],
    }


def head_dict(head: OutboxEvent, error_chars: int = 500) -> dict[str, Any]:
    error = head.last_error
    if len(error) > error_chars:
        error = error[: error_chars - 1] + "\u2026"
    return {
        "event_id": str(head.event_id),
        "event_type": head.event_type,
        "aggregate_type": head.aggregate_type,
        "aggregate_id": head.aggregate_id,
        "aggregate_version": head.aggregate_version,
        "status": head.status,
        "attempts": head.attempts,
        "next_try_at": head.available_at.isoformat() if head.status == PENDING else None,
        "waiting": getattr(head, "waiting", 0),
        "last_error": error,
    }
