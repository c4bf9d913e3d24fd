"""Handler deliveries: the inbox rows that say how each (event, handler) went.

One ``ProcessedEvent`` row per (event, handler), for every handler: ``published`` when a
publisher handed it to a broker, then ``succeeded``, ``retrying`` or ``failed`` as the
handler runs. Each write is one statement where the database can upsert
(``INSERT ... ON CONFLICT DO UPDATE``: PostgreSQL, SQLite 3.35+; publishing also
``ON DUPLICATE KEY UPDATE`` on MySQL/MariaDB); elsewhere a short transaction with
``SELECT ... FOR UPDATE`` does the same.

The functions here only write and read rows; running handlers is ``django_uow.inbox``.
"""

from __future__ import annotations

import traceback as tb
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Field, QuerySet
from django.db.models.functions import Coalesce

from ..db.clock import DatabaseNow, later, now_sql
from ..db.features import features
from ..events.base import Envelope
from ..models import OWED_DELIVERY_STATUSES, DeliveryStatus, ProcessedEvent
from ..retry import describe, storable_text
from .lag import ConsumerLag, read_consumer_lag

#: Traceback text kept per failure; the outermost frames are cut first.
TRACEBACK_LIMIT = 16_000
#: Rows per upsert statement when publishing (a relay batch fits in one).
UPSERT_CHUNK = 2_000


@dataclass(frozen=True)
class Outcome:
    """What a failure write left in the row: the status and the attempts so far."""

    status: str
    attempts: int

    @property
    def dead(self) -> bool:
        return self.status == DeliveryStatus.FAILED


def traceback_text(exc: BaseException) -> str:
    """The traceback of ``exc`` (and of its causes), storable and capped.

    Frames are kept whole; each exception's own text is capped like ``last_error``, so a
    huge message cannot push the frames out. Past ``TRACEBACK_LIMIT`` the outermost part
    is cut.
    """
    blocks: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(blocks) < 5:
        seen.add(id(current))
        try:
            frames = "".join(tb.format_list(tb.extract_tb(current.__traceback__)))
        except Exception:  # a frame that cannot be rendered must not hide the failure
            frames = ""
        text = describe(current, 1000)
        blocks.append(f"Traceback (most recent call last):\n{frames}{text}\n" if frames else text)
        if current.__cause__ is not None:
            blocks.append("\nThe above exception was the direct cause of the following:\n\n")
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            blocks.append("\nDuring handling of the above exception, another occurred:\n\n")
            current = current.__context__
        else:
            current = None
    text = "".join(reversed(blocks))
    if len(text) > TRACEBACK_LIMIT:
        text = "\u2026" + text[-(TRACEBACK_LIMIT - 1) :]
    return storable_text(text, TRACEBACK_LIMIT)


def _can_upsert(connection: BaseDatabaseWrapper) -> bool:
    """``INSERT ... ON CONFLICT (...) DO UPDATE ... WHERE ... RETURNING``."""
    return features(connection).returning


@cache
def _event_id_field() -> Field[Any, Any]:
    return ProcessedEvent._meta.get_field("event_id")


def _identity(connection: BaseDatabaseWrapper, envelope: Envelope, handler_name: str) -> list[Any]:
    """The ``_KEY_COLUMNS`` parameters of one delivery, adapted for ``connection``."""
    return [
        _event_id_field().get_db_prep_value(envelope.event_id, connection),
        handler_name,
        storable_text(envelope.event_type, 255),
        storable_text(envelope.aggregate_type, 255),
        storable_text(envelope.aggregate_id, 255),
    ]


#: Columns every write of a delivery row fills from the envelope, in parameter order.
_KEY_COLUMNS = ("event_id", "handler", "event_type", "aggregate_type", "aggregate_id")


# ----------------------------------------------------------------------- success

_SUCCESS_UPDATES = (
    "status = 'succeeded', attempts = {t}.attempts + 1, processed_at = excluded.processed_at, "
    "last_attempt_at = excluded.last_attempt_at, "
    "first_attempt_at = COALESCE({t}.first_attempt_at, excluded.first_attempt_at)"
)


def _success_sql(connection: BaseDatabaseWrapper, only_once: bool) -> str:
    """The success upsert, built once per vendor: constants and the database's clock inline.

    Five bound parameters (the delivery's identity): less work per delivery for the
    driver, and the text is not rebuilt for every run.
    """
    key = (connection.vendor, only_once)
    sql = _SUCCESS_SQL.get(key)
    if sql is None:
        table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
        now = now_sql(connection.vendor)
        where = f" WHERE {table}.status <> 'succeeded'" if only_once else ""
        columns = (*_KEY_COLUMNS, "status", "attempts", "last_error", "traceback", "publishes")
        times = ("first_attempt_at", "last_attempt_at", "processed_at")
        sql = _SUCCESS_SQL[key] = (
            f"INSERT INTO {table} ({', '.join((*columns, *times))}) VALUES "
            f"(%s, %s, %s, %s, %s, 'succeeded', 1, '', '', 0, {now}, {now}, {now})"
            f" ON CONFLICT (event_id, handler) DO UPDATE SET {_SUCCESS_UPDATES.format(t=table)}"
            f"{where} RETURNING status, attempts"
        )
    return sql


_SUCCESS_SQL: dict[tuple[str, bool], str] = {}


def record_success(
    handler_name: str, envelope: Envelope, *, using: str, only_once: bool = True
) -> bool:
    """Mark (event, handler) succeeded; False when it already was (and ``only_once``).

    An idempotent handler calls this inside its own transaction, before its code runs:
    the row and the handler's effect commit or roll back together, and a redelivery
    finds ``succeeded`` and is skipped. A non-idempotent handler records its success
    after the fact, with ``only_once=False``.

    One statement where the database upserts (no read first, no savepoint). Its times
    come from the database's clock.
    """
    connection = connections[using]
    if _can_upsert(connection):
        with connection.cursor() as cursor:
            cursor.execute(
                _success_sql(connection, only_once), _identity(connection, envelope, handler_name)
            )
            return bool(cursor.fetchall())
    # Inside the handler's unit the enclosing transaction is enough: no savepoint of its
    # own (an error here propagates and rolls the whole unit back anyway).
    with transaction.atomic(using=using, savepoint=False):
        found = _locked(envelope, handler_name, using)
        if found is None:
            try:
                with transaction.atomic(using=using):
                    _create(
                        envelope,
                        handler_name,
                        using,
                        status=DeliveryStatus.SUCCEEDED,
                        attempts=1,
                        first_attempt_at=DatabaseNow(),
                        last_attempt_at=DatabaseNow(),
                        processed_at=DatabaseNow(),
                    )
                return True
            except IntegrityError:
                found = _locked(envelope, handler_name, using)
                assert found is not None
        if only_once and found.status == DeliveryStatus.SUCCEEDED:
            return False
        ProcessedEvent.objects.using(using).filter(pk=found.pk).update(
            status=DeliveryStatus.SUCCEEDED,
            attempts=F("attempts") + 1,
            processed_at=DatabaseNow(),
            last_attempt_at=DatabaseNow(),
            first_attempt_at=Coalesce(F("first_attempt_at"), DatabaseNow()),
        )
    return True


def _locked(envelope: Envelope, handler_name: str, using: str) -> ProcessedEvent | None:
    return (
        ProcessedEvent.objects.using(using)
        .select_for_update()
        .filter(event_id=envelope.event_id, handler=handler_name)
        .first()
    )


def _create(envelope: Envelope, handler_name: str, using: str, **values: Any) -> ProcessedEvent:
    return ProcessedEvent.objects.using(using).create(
        event_id=envelope.event_id,
        handler=handler_name,
        event_type=storable_text(envelope.event_type, 255),
        aggregate_type=storable_text(envelope.aggregate_type, 255),
        aggregate_id=storable_text(envelope.aggregate_id, 255),
        **values,
    )


# ----------------------------------------------------------------------- failure

#: Seconds until a failed delivery is due again, from its attempts so far (this one included).
RetryIn = Callable[[int], float | None]


def record_failure(
    handler_name: str,
    envelope: Envelope,
    exc: BaseException,
    *,
    using: str,
    max_attempts: int,
    dead: bool = False,
    attempts_floor: int = 0,
    retry_in: RetryIn | float | None = None,
) -> Outcome:
    """Count a failed run of (event, handler) and store its error and traceback.

    The row becomes ``failed`` when ``dead`` (a permanent failure), or when its attempts
    (at least ``attempts_floor``: the relay's own count in inline mode) reach
    ``max_attempts``; ``retrying`` otherwise, due again ``retry_in`` seconds from now on
    the database's clock (a number, or a function of the attempts so far). Call it
    outside the handler's rolled-back transaction. Storing never fails on the error's
    text: NUL and lone surrogates are replaced, and the text is capped.
    """
    error = describe(exc)
    trace = traceback_text(exc)
    with transaction.atomic(using=using):
        found = _locked(envelope, handler_name, using)
        if found is None:
            try:
                with transaction.atomic(using=using):
                    found = _create(
                        envelope,
                        handler_name,
                        using,
                        status=DeliveryStatus.RETRYING,
                        processed_at=None,
                    )
            except IntegrityError:
                found = _locked(envelope, handler_name, using)
                assert found is not None
        attempts = max(found.attempts + 1, attempts_floor)
        status = (
            DeliveryStatus.FAILED if dead or attempts >= max_attempts else DeliveryStatus.RETRYING
        )
        delay = retry_in(attempts) if callable(retry_in) else retry_in
        ProcessedEvent.objects.using(using).filter(pk=found.pk).update(
            status=status,
            attempts=attempts,
            last_error=error,
            traceback=trace,
            due_at=later(delay or 0.0),
            first_attempt_at=Coalesce(F("first_attempt_at"), DatabaseNow()),
            last_attempt_at=DatabaseNow(),
            processed_at=None,
        )
    return Outcome(status=status, attempts=attempts)


# ----------------------------------------------------------------------- publishing


def record_published(deliveries: Sequence[tuple[Envelope, str]], *, using: str) -> int:
    """Mark each ``(envelope, handler name)`` as handed to the broker; return the count.

    One statement per ``UPSERT_CHUNK`` deliveries where the database upserts. A row that
    already has an outcome (succeeded, failed, discarded) or is blocked keeps it: a
    duplicate publish changes nothing. ``published_at`` keeps the first publish (the
    consumer lag counts from there), ``due_at`` becomes now and ``publishes`` counts up:
    both on the database's clock. An operator's re-run uses ``claim_redelivery`` instead.
    """
    if not deliveries:
        return 0
    connection = connections[using]
    rows = [_identity(connection, envelope, name) for envelope, name in deliveries]
    for start in range(0, len(rows), UPSERT_CHUNK):
        chunk = rows[start : start + UPSERT_CHUNK]
        if _can_upsert(connection):
            _publish_upsert(connection, chunk)
        elif features(connection).upsert_on_duplicate_key:
            _publish_upsert_mysql(connection, chunk)
        else:
            _publish_portable(using, [d for d in deliveries[start : start + UPSERT_CHUNK]])
    return len(rows)


def _publish_upsert(connection: BaseDatabaseWrapper, rows: Sequence[list[Any]]) -> None:
    """``INSERT ... ON CONFLICT DO UPDATE``, the times from the database's clock."""
    table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
    now = now_sql(connection.vendor)
    names = ", ".join(_KEY_COLUMNS)
    fixed = "'published', 0, '', '', 1"
    if features(connection).typed_placeholders and len(rows) > 1:
        # One array per column: five parameters whatever the batch size (psycopg parses a
        # query with thousands of placeholders on every call).
        meta = ProcessedEvent._meta
        arrays = ", ".join(f"%s::{meta.get_field(c).db_type(connection)}[]" for c in _KEY_COLUMNS)
        source = f"SELECT r.*, {fixed}, {now}, {now} FROM unnest({arrays}) AS r({names})"
        params: list[Any] = [list(column) for column in zip(*rows, strict=True)]
    else:
        row = f"(%s, %s, %s, %s, %s, {fixed}, {now}, {now})"
        source = "VALUES " + ", ".join([row] * len(rows))
        params = [value for row_params in rows for value in row_params]
    sql = (
        f"INSERT INTO {table} ({names}, status, attempts, last_error, traceback, publishes, "
        f"published_at, due_at) {source} ON CONFLICT (event_id, handler) DO UPDATE SET "
        f"status = 'published', publishes = {table}.publishes + 1, "
        f"published_at = COALESCE({table}.published_at, excluded.published_at), "
        f"due_at = excluded.due_at WHERE {table}.status IN ('published', 'retrying')"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _publish_upsert_mysql(connection: BaseDatabaseWrapper, rows: Sequence[list[Any]]) -> None:
    """``INSERT ... ON DUPLICATE KEY UPDATE``: MySQL and MariaDB assign left to right, so
    ``status`` goes first and the other columns follow only where it says published."""
    table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
    now = now_sql(connection.vendor)
    row = f"(%s, %s, %s, %s, %s, 'published', 0, '', '', 1, {now}, {now})"
    owed = "status IN ('published', 'retrying')"
    sql = (
        f"INSERT INTO {table} ({', '.join(_KEY_COLUMNS)}, status, attempts, last_error, "
        "traceback, publishes, published_at, due_at) VALUES "
        + ", ".join([row] * len(rows))
        + f" ON DUPLICATE KEY UPDATE status = IF({owed}, 'published', status), "
        f"publishes = IF({owed}, publishes + 1, publishes), "
        f"published_at = IF({owed}, COALESCE(published_at, VALUES(published_at)), published_at), "
        f"due_at = IF({owed}, VALUES(due_at), due_at)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row_params in rows for value in row_params])


def _publish_portable(using: str, deliveries: Sequence[tuple[Envelope, str]]) -> None:
    with transaction.atomic(using=using):
        for envelope, name in deliveries:
            found = _locked(envelope, name, using)
            if found is None:
                try:
                    with transaction.atomic(using=using):
                        _create(
                            envelope,
                            name,
                            using,
                            status=DeliveryStatus.PUBLISHED,
                            publishes=1,
                            published_at=DatabaseNow(),
                            due_at=DatabaseNow(),
                            processed_at=None,
                        )
                    continue
                except IntegrityError:
                    found = _locked(envelope, name, using)
                    assert found is not None
            if found.status in OWED_DELIVERY_STATUSES:
                ProcessedEvent.objects.using(using).filter(pk=found.pk).update(
                    status=DeliveryStatus.PUBLISHED,
                    publishes=F("publishes") + 1,
                    published_at=Coalesce(F("published_at"), DatabaseNow()),
                    due_at=DatabaseNow(),
                )


def mark_waiting(handler_name: str, envelope: Envelope, *, using: str | None = None) -> int:
    """An ordered delivery starts waiting for its predecessor: due now (one UPDATE).

    A worker holds it meanwhile (its re-queues are countdowns, not in the queue), so the
    deadline sweep must not take it for lost: from here it is due again only
    ``HANDLER_DEADLINE`` later, and it is ``blocked`` after ``ORDERED_WAIT``, which is shorter.
    """
    db = using or router.db_for_write(ProcessedEvent)
    return int(
        ProcessedEvent.objects.using(db)
        .filter(event_id=envelope.event_id, handler=handler_name, status__in=OWED_DELIVERY_STATUSES)
        .update(due_at=DatabaseNow())
    )


# ----------------------------------------------------------------------- operators


@dataclass(frozen=True)
class RedeliveryClaim:
    """What ``claim_redelivery`` found and did: ``taken`` when the caller should send it."""

    taken: bool
    previous: str  # the status it had ("" when it had no row)


def claim_redelivery(
    envelope: Envelope, handler_name: str, *, using: str, allowed: Sequence[str], publish: bool
) -> RedeliveryClaim:
    """Take one delivery for an operator's re-run, only from a status in ``allowed``.

    The row is locked before its status is read (``SELECT ... FOR UPDATE``): a handler
    running it holds that lock until it commits, so a success committed meanwhile is
    seen, never overwritten. With ``publish`` the row becomes ``published`` (due now,
    one more publish; created when missing) for the caller to send.
    """
    with transaction.atomic(using=using):
        found = _locked(envelope, handler_name, using)
        if found is None:
            if "" not in allowed:
                return RedeliveryClaim(False, "")
            if publish:
                try:
                    with transaction.atomic(using=using):
                        _create(
                            envelope,
                            handler_name,
                            using,
                            status=DeliveryStatus.PUBLISHED,
                            publishes=1,
                            published_at=DatabaseNow(),
                            due_at=DatabaseNow(),
                            processed_at=None,
                        )
                except IntegrityError:
                    return RedeliveryClaim(False, "")  # someone wrote it first: read it again later
            return RedeliveryClaim(True, "")
        if found.status not in allowed:
            return RedeliveryClaim(False, found.status)
        if publish:
            ProcessedEvent.objects.using(using).filter(pk=found.pk).update(
                status=DeliveryStatus.PUBLISHED,
                publishes=F("publishes") + 1,
                published_at=Coalesce(F("published_at"), DatabaseNow()),
                due_at=DatabaseNow(),
            )
        return RedeliveryClaim(True, found.status)


# ----------------------------------------------------------------------- reading


def owed_deliveries(using: str = "default") -> QuerySet[ProcessedEvent]:
    """Deliveries published or retrying: handed to a consumer, not handled yet."""
    return ProcessedEvent.objects.using(using).filter(status__in=OWED_DELIVERY_STATUSES)


def failed_deliveries(
    using: str = "default", *, handler: str | None = None
) -> QuerySet[ProcessedEvent]:
    """Dead letters among handler deliveries, most recent failure first."""
    rows = ProcessedEvent.objects.using(using).filter(status=DeliveryStatus.FAILED)
    if handler is not None:
        rows = rows.filter(handler=handler)
    return rows.order_by("-last_attempt_at", "-id")


def overdue_deliveries(using: str = "default", *, deadline: timedelta) -> QuerySet[ProcessedEvent]:
    """Owed deliveries whose ``due_at`` is more than ``deadline`` ago on the database's
    clock, oldest first."""
    return (
        owed_deliveries(using)
        .filter(due_at__lt=later(-deadline.total_seconds()))
        .order_by("due_at", "id")
    )


def consumer_lag(using: str = "default", *, now: datetime | None = None) -> ConsumerLag:
    """How far consumers are behind: owed deliveries, the age of the oldest delivery not
    handled yet (owed or blocked, from its first publish), dead letters, blocked
    deliveries.

    One statement, on the database server's clock unless ``now`` is given; the same
    numbers as the health view and the metrics (``django_uow.delivery_health``).
    """
    return read_consumer_lag(using, now=now)
