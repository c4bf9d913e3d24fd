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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, QuerySet
from django.utils import timezone

from .delivery_health import ConsumerLag as ConsumerLag  # callers import it from here
from .delivery_health import read_consumer_lag
from .events import Envelope
from .models import OWED_DELIVERY_STATUSES, DeliveryStatus, ProcessedEvent
from .retry import describe, storable_text

#: Traceback text kept per failure; the outermost frames are cut first.
TRACEBACK_LIMIT = 16_000
#: Rows per upsert statement when publishing (a relay batch fits in one).
UPSERT_CHUNK = 2_000

_COLUMNS = (
    "event_id",
    "handler",
    "status",
    "attempts",
    "last_error",
    "traceback",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "published_at",
    "due_at",
    "first_attempt_at",
    "last_attempt_at",
    "processed_at",
)


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
    # INSERT ... ON CONFLICT (...) DO UPDATE ... WHERE ... RETURNING: PostgreSQL, SQLite 3.35+.
    return connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and connection.features.can_return_rows_from_bulk_insert
    )


@cache
def _event_id_field() -> Field[Any, Any]:
    return ProcessedEvent._meta.get_field("event_id")


def _row(
    connection: BaseDatabaseWrapper,
    envelope: Envelope,
    handler_name: str,
    **values: Any,
) -> list[Any]:
    """One row's parameters in ``_COLUMNS`` order, adapted for ``connection``."""
    event_field = _event_id_field()
    base: dict[str, Any] = {
        "event_id": event_field.get_db_prep_value(envelope.event_id, connection),
        "handler": handler_name,
        "attempts": 0,
        "last_error": "",
        "traceback": "",
        "event_type": storable_text(envelope.event_type, 255),
        "aggregate_type": storable_text(envelope.aggregate_type, 255),
        "aggregate_id": storable_text(envelope.aggregate_id, 255),
        "published_at": None,
        "due_at": None,
        "first_attempt_at": None,
        "last_attempt_at": None,
        "processed_at": None,
    }
    base.update(values)
    return [
        connection.ops.adapt_datetimefield_value(v) if isinstance(v, datetime) else v
        for v in (base[c] for c in _COLUMNS)
    ]


def _upsert(
    connection: BaseDatabaseWrapper,
    rows: Sequence[list[Any]],
    updates: str,
    where: str,
    returning: bool = False,
) -> list[tuple[Any, ...]]:
    table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
    if connection.vendor == "postgresql" and len(rows) > 1:
        # One array per column: a statement with 14 parameters whatever the batch size
        # (psycopg parses a query with thousands of placeholders on every call).
        meta = ProcessedEvent._meta
        arrays = ", ".join(f"%s::{meta.get_field(c).db_type(connection)}[]" for c in _COLUMNS)
        source = f"SELECT * FROM unnest({arrays})"
        params = [list(column) for column in zip(*rows, strict=True)]
    else:
        placeholders = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
        source = "VALUES " + ", ".join([placeholders] * len(rows))
        params = [value for row in rows for value in row]
    sql = (
        f"INSERT INTO {table} ({', '.join(_COLUMNS)}) {source}"
        + f" ON CONFLICT (event_id, handler) DO UPDATE SET {updates.format(t=table)}"
        + (f" WHERE {where.format(t=table)}" if where else "")
        + (" RETURNING status, attempts" if returning else "")
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if returning else []


# ----------------------------------------------------------------------- success

_SUCCESS_UPDATES = (
    "status = 'succeeded', attempts = {t}.attempts + 1, processed_at = excluded.processed_at, "
    "last_attempt_at = excluded.last_attempt_at, "
    "first_attempt_at = COALESCE({t}.first_attempt_at, excluded.first_attempt_at)"
)


def _success_sql(connection: BaseDatabaseWrapper, only_once: bool) -> str:
    """The success upsert, built once per vendor: constants inline, 8 parameters.

    Fewer bound parameters is less work per delivery for the driver (client-side
    binding adapts each one), and the text is not rebuilt for every run.
    """
    key = (connection.vendor, only_once)
    sql = _SUCCESS_SQL.get(key)
    if sql is None:
        table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
        where = f" WHERE {table}.status <> 'succeeded'" if only_once else ""
        sql = _SUCCESS_SQL[key] = (
            f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES "
            "(%s, %s, 'succeeded', 1, '', '', %s, %s, %s, NULL, NULL, %s, %s, %s)"
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

    One statement where the database upserts (no read first, no savepoint).
    """
    connection = connections[using]
    now = timezone.now()
    if _can_upsert(connection):
        stamp = connection.ops.adapt_datetimefield_value(now)
        params = [
            _event_id_field().get_db_prep_value(envelope.event_id, connection),
            handler_name,
            storable_text(envelope.event_type, 255),
            storable_text(envelope.aggregate_type, 255),
            storable_text(envelope.aggregate_id, 255),
            stamp,
            stamp,
            stamp,
        ]
        with connection.cursor() as cursor:
            cursor.execute(_success_sql(connection, only_once), params)
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
                        first_attempt_at=now,
                        last_attempt_at=now,
                        processed_at=now,
                    )
                return True
            except IntegrityError:
                found = _locked(envelope, handler_name, using)
                assert found is not None
        if only_once and found.status == DeliveryStatus.SUCCEEDED:
            return False
        found.status = DeliveryStatus.SUCCEEDED
        found.attempts += 1
        found.processed_at = now
        found.last_attempt_at = now
        found.first_attempt_at = found.first_attempt_at or now
        found.save(
            using=using,
            update_fields=[
                "status",
                "attempts",
                "processed_at",
                "last_attempt_at",
                "first_attempt_at",
            ],
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


def record_failure(
    handler_name: str,
    envelope: Envelope,
    exc: BaseException,
    *,
    using: str,
    max_attempts: int,
    dead: bool = False,
    attempts_floor: int = 0,
    retry_in: float | None = None,
) -> Outcome:
    """Count a failed run of (event, handler) and store its error and traceback.

    The row becomes ``failed`` when ``dead`` (a permanent failure), or when its attempts
    (at least ``attempts_floor``: the relay's own count in inline mode) reach
    ``max_attempts``; ``retrying`` otherwise, due again in ``retry_in`` seconds. Call it
    outside the handler's rolled-back transaction. Storing never fails on the error's
    text: NUL and lone surrogates are replaced, and the text is capped.
    """
    now = timezone.now()
    error = describe(exc)
    trace = traceback_text(exc)
    due = now + timedelta(seconds=retry_in or 0.0)
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
                        first_attempt_at=now,
                    )
            except IntegrityError:
                found = _locked(envelope, handler_name, using)
                assert found is not None
        attempts = max(found.attempts + 1, attempts_floor)
        status = (
            DeliveryStatus.FAILED if dead or attempts >= max_attempts else DeliveryStatus.RETRYING
        )
        ProcessedEvent.objects.using(using).filter(pk=found.pk).update(
            status=status,
            attempts=attempts,
            last_error=error,
            traceback=trace,
            due_at=due,
            first_attempt_at=found.first_attempt_at or now,
            last_attempt_at=now,
            processed_at=None,
        )
    return Outcome(status=status, attempts=attempts)


# ----------------------------------------------------------------------- publishing

_PUBLISH_UPDATES = (
    "status = 'published', published_at = excluded.published_at, due_at = excluded.due_at"
)


def record_published(
    deliveries: Sequence[tuple[Envelope, str]], *, using: str, force: bool = False
) -> int:
    """Mark each ``(envelope, handler name)`` as handed to the broker; return the count.

    One statement for a whole batch where the database upserts. A row that already
    succeeded or failed keeps its outcome (a duplicate publish changes nothing) unless
    ``force`` (a redelivery the operator asked for).
    """
    if not deliveries:
        return 0
    connection = connections[using]
    now = timezone.now()
    if _can_upsert(connection):
        where = "" if force else "{t}.status IN ('published', 'retrying')"
        rows = [
            _row(
                connection,
                envelope,
                name,
                status=DeliveryStatus.PUBLISHED,
                published_at=now,
                due_at=now,
            )
            for envelope, name in deliveries
        ]
        for start in range(0, len(rows), UPSERT_CHUNK):
            _upsert(connection, rows[start : start + UPSERT_CHUNK], _PUBLISH_UPDATES, where)
        return len(rows)
    if connection.vendor == "mysql":
        rows = [
            _row(
                connection,
                envelope,
                name,
                status=DeliveryStatus.PUBLISHED,
                published_at=now,
                due_at=now,
            )
            for envelope, name in deliveries
        ]
        for start in range(0, len(rows), UPSERT_CHUNK):
            _upsert_mysql(connection, rows[start : start + UPSERT_CHUNK], force)
        return len(rows)
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
                            published_at=now,
                            due_at=now,
                            processed_at=None,
                        )
                    continue
                except IntegrityError:
                    found = _locked(envelope, name, using)
                    assert found is not None
            if force or found.status in OWED_DELIVERY_STATUSES:
                ProcessedEvent.objects.using(using).filter(pk=found.pk).update(
                    status=DeliveryStatus.PUBLISHED, published_at=now, due_at=now
                )
    return len(deliveries)


def _upsert_mysql(connection: BaseDatabaseWrapper, rows: Sequence[list[Any]], force: bool) -> None:
    """``INSERT ... ON DUPLICATE KEY UPDATE``: MySQL and MariaDB assign left to right, so
    ``status`` goes first and the other columns follow only where it became published."""
    table = connection.ops.quote_name(ProcessedEvent._meta.db_table)
    placeholders = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    owed = "status IN ('published', 'retrying')"
    if force:
        updates = ", ".join(f"{c} = VALUES({c})" for c in ("status", "published_at", "due_at"))
    else:
        updates = ", ".join(
            f"{c} = IF({owed}, VALUES({c}), {c})" for c in ("status", "published_at", "due_at")
        )
    sql = (
        f"INSERT INTO {table} ({', '.join(_COLUMNS)}) VALUES "
        + ", ".join([placeholders] * len(rows))
        + f" ON DUPLICATE KEY UPDATE {updates}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


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


def overdue_deliveries(
    using: str = "default", *, deadline: timedelta, now: datetime | None = None
) -> QuerySet[ProcessedEvent]:
    """Owed deliveries whose ``due_at`` is more than ``deadline`` ago, oldest first."""
    cutoff = (now or timezone.now()) - deadline
    return owed_deliveries(using).filter(due_at__lt=cutoff).order_by("due_at", "id")


def consumer_lag(using: str = "default", *, now: datetime | None = None) -> ConsumerLag:
    """How far consumers are behind: owed deliveries, the age of the oldest delivery not
    handled yet (owed or blocked, from its first publish), dead letters, blocked
    deliveries.

    One statement, on the database server's clock unless ``now`` is given; the same
    numbers as the health view and the metrics (``django_uow.delivery_health``).
    """
    return read_consumer_lag(using, now=now)
