"""Dead-letter groups: failed events and failed handler deliveries, grouped by cause.

A group is one kind of dead letter (an outbox event, or one handler's delivery) of one
event type, failing with one *fingerprint*: the exception class plus its message with
the parts that differ from row to row (numbers, UUIDs, hex ids, quoted values) masked.
So "KeyError: 'sku-1'" and "KeyError: 'sku-2'" are one group, and an operator retries
or discards it as a whole.

Grouping happens in Python (masking is not portable SQL), over at most ``SCAN_LIMIT``
newest dead letters of each kind, reading only the first ``ERROR_SCAN_CHARS`` of each
error: a page of groups costs two queries however large the errors are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from django.db.models import QuerySet
from django.db.models.functions import Substr

from ..models import DeliveryStatus, OutboxEvent, OutboxStatus, ProcessedEvent
from ..relay.redelivery import redeliver

#: Newest dead letters of each kind read to build the groups.
SCAN_LIMIT = 10_000
#: Characters of each error read from the database (the fingerprint needs the start).
ERROR_SCAN_CHARS = 1_000
#: Characters of a fingerprint's message kept (past that, errors are one group).
FINGERPRINT_CHARS = 200
#: Aggregates listed per group (the count says how many there are).
AGGREGATES_SHOWN = 5

Kind = Literal["event", "delivery"]

_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
_UUID = re.compile(
    r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b"
)
# 0x-prefixed, or 8+ hex digits mixing digits and letters (object ids, digests).
_HEX = re.compile(
    r"\b0[xX][0-9a-fA-F]+\b"
    r"|\b(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"
)
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:[.,]\d+)*")


def mask(message: str) -> str:
    """``message`` with quoted values, UUIDs, hex ids and numbers replaced by markers."""
    message = _QUOTED.sub("'<value>'", message)
    message = _UUID.sub("<uuid>", message)
    message = _HEX.sub("<hex>", message)
    return _NUMBER.sub("<n>", message)


def fingerprint(error: str) -> str:
    """``ExceptionClass: masked message`` of a stored error (its first line).

    ``last_error`` is ``"ExcType: message"``; text that does not look like that is
    masked whole.
    """
    first = error.strip().split("\n", 1)[0].strip()
    cls, sep, message = first.partition(": ")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", cls):
        cls, message = "", first
    masked = mask(message)[:FINGERPRINT_CHARS]
    return f"{cls}: {masked}" if cls else masked


def group_key(kind: Kind, event_type: str, handler: str, fingerprint: str) -> str:
    """A short, stable id of a group, for URLs and forms."""
    raw = "\x1f".join((kind, event_type, handler, fingerprint))
    return hashlib.sha256(raw.encode("utf-8", "replace")).hexdigest()[:20]


@dataclass
class Group:
    """Dead letters of one kind, event type, handler (deliveries) and fingerprint."""

    kind: Kind
    event_type: str
    handler: str
    fingerprint: str
    sample_error: str = ""
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    ids: list[int] = field(default_factory=list)
    aggregates: dict[tuple[str, str], None] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return group_key(self.kind, self.event_type, self.handler, self.fingerprint)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def blocks(self) -> list[tuple[str, str]]:
        """Aggregates this group holds back: a failed event blocks later events of its
        aggregate; a failed delivery blocks nothing in the outbox."""
        return sorted(self.aggregates) if self.kind == "event" else []

    def _add(self, pk: int, error: str, seen: datetime | None, aggregate: tuple[str, str]) -> None:
        self.ids.append(pk)
        if seen is not None:
            if self.first_seen is None or seen < self.first_seen:
                self.first_seen = seen
            if self.last_seen is None or seen >= self.last_seen:
                self.last_seen = seen
                self.sample_error = error
        elif not self.sample_error:
            self.sample_error = error
        if aggregate[1]:
            self.aggregates.setdefault(aggregate, None)


def failed_events(using: str) -> QuerySet[OutboxEvent]:
    return OutboxEvent.objects.using(using).filter(status=OutboxStatus.FAILED)


def failed_deliveries(using: str) -> QuerySet[ProcessedEvent]:
    return ProcessedEvent.objects.using(using).filter(status=DeliveryStatus.FAILED)


def _rows(queryset: QuerySet[Any], seen: str, handler: bool) -> Iterable[tuple[Any, ...]]:
    columns = ["pk", "event_type", "aggregate_type", "aggregate_id", seen, "error_head"]
    if handler:
        columns.append("handler")
    rows: Iterable[tuple[Any, ...]] = (
        queryset.annotate(error_head=Substr("last_error", 1, ERROR_SCAN_CHARS))
        .order_by("-pk")
        .values_list(*columns)[:SCAN_LIMIT]
    )
    return rows


def dead_letter_groups(using: str = "default") -> tuple[list[Group], bool]:
    """The groups of failed events and failed deliveries, biggest first.

    Returns ``(groups, truncated)``: ``truncated`` when a kind had more than
    ``SCAN_LIMIT`` dead letters, so only the newest were grouped. Two queries. An event's
    "seen" time is ``available_at`` (set when it failed for good); a delivery's is its
    ``last_attempt_at``.
    """
    groups: dict[str, Group] = {}
    truncated = False
    sources: Sequence[tuple[Kind, QuerySet[Any], str]] = (
        ("event", failed_events(using), "available_at"),
        ("delivery", failed_deliveries(using), "last_attempt_at"),
    )
    for kind, queryset, seen in sources:
        rows = list(_rows(queryset, seen, handler=kind == "delivery"))
        truncated = truncated or len(rows) >= SCAN_LIMIT
        for row in rows:
            pk, event_type, agg_type, agg_id, when, error = row[:6]
            handler = row[6] if kind == "delivery" else ""
            group = Group(kind, event_type, handler, fingerprint(error or ""))
            group = groups.setdefault(group.key, group)
            group._add(pk, error or "", when, (agg_type, agg_id))
    ordered = sorted(
        groups.values(),
        key=lambda g: (-g.count, g.kind, g.event_type, g.handler, g.fingerprint),
    )
    return ordered, truncated


def find_group(key: str, using: str = "default") -> Group | None:
    """The group with ``key`` as it is now (its members may have changed since a page)."""
    for group in dead_letter_groups(using)[0]:
        if group.key == key:
            return group
    return None


def retry_delivery(event_id: Any, handler: str, *, using: str = "default") -> str:
    """Run one failed delivery again (``redeliver``); the outcome in a word.

    ``published`` (Celery has the task again), ``succeeded``, ``skipped`` (an idempotent
    handler that already succeeded), ``failed`` (ran here and raised again) or
    ``missing`` (the event was pruned or the handler is no longer registered).
    """
    try:
        return redeliver(event_id, handler, using=using).outcome
    except LookupError:
        return "missing"
