"""Writing staged events to the outbox: one INSERT per commit, whatever the number of events.

A multi-row ``INSERT ... VALUES`` is the statement for a commit of one or a few events.
PostgreSQL receives the rows as one JSON document (``jsonb_array_elements``) past 50
parameters (four events): psycopg re-parses longer parameter lists on every call. SQLite
does the same (``json_each``) past its parameter limit (999 as Django configures it), so
the statement count stays at one. Other databases fall back to ``bulk_create`` for very
large commits.

Each payload is encoded once: the JSON text checked at ``record_event()`` is the text
written here (``payload_texts``).

A unit of work's events take their times from the database's clock (``schedules``):
``created_at`` is the INSERT's time, just before COMMIT; an ordinary event is due then,
and a ``delay`` counts from then, so a scheduled event is due from its commit whatever
the writer's clock says. A ``deliver_at`` given as a point in time is stored as given.
"""

from __future__ import annotations

import datetime
import functools
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from ..db.clock import knows_clock, later_sql, now_sql, seconds_param
from ..db.features import Features, features
from ..models import OutboxEvent

#: Columns written at staging time; the others are nullable and start empty.
INSERT_FIELDS = (
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "occurred_at",
    "payload",
    "headers",
    "status",
    "attempts",
    "last_error",
    "available_at",
    "created_at",
    "claimed_by",
    "deliver_at",
)
JSON_FIELDS = frozenset({"payload", "headers"})


Texts = Sequence[str | None] | None

#: The columns the database's clock fills when ``schedules`` are given.
CLOCK_FIELDS = ("available_at", "created_at", "deliver_at")


@dataclass(frozen=True)
class Schedule:
    """When one event is due: at commit (both None), ``delay`` seconds after its commit,
    or at ``deliver_at``."""

    deliver_at: datetime.datetime | None = None
    delay: float | None = None


Schedules = Sequence[Schedule] | None


def write_events(
    events: Sequence[OutboxEvent],
    using: str,
    payload_texts: Texts = None,
    schedules: Schedules = None,
) -> None:
    """Insert ``events`` (unsaved ``OutboxEvent`` instances) with one statement.

    ``payload_texts``, when given, holds each event's payload already encoded as JSON
    (None where it is not): it is written as it is instead of encoding the payload again.
    ``schedules``, when given, has one ``Schedule`` per event: ``available_at``,
    ``created_at`` and ``deliver_at`` then come from the database's clock at the INSERT
    (the events' own values of those fields are not written).
    """
    if not events:
        return
    connection = connections[using]
    db = features(connection)
    if not knows_clock(db.vendor):
        schedules = None  # no known clock SQL: the values the events carry are written
    limit = db.parameter_limit
    params = len(events) * (len(INSERT_FIELDS) + (1 if schedules is not None else 0))
    if db.json_rows == "jsonb" and params > (db.cached_parameters or limit or params):
        _insert_jsonb_rows(events, using, payload_texts, schedules)
    elif limit is None or params <= limit:
        _insert_values(events, using, payload_texts, schedules)
    elif db.json_rows == "json_each":
        _insert_json_each(events, using, payload_texts, schedules)
    else:
        OutboxEvent.objects.using(using).bulk_create(events)


@functools.cache
def _row_fields() -> tuple[tuple[str, Any], ...]:
    return tuple((f.attname, f) for f in OutboxEvent._meta.concrete_fields)


def new_row(values: dict[str, Any]) -> OutboxEvent:
    """An unsaved ``OutboxEvent`` with ``values`` (by attname), its other fields at their defaults.

    Positional arguments take ``Model.__init__``'s fast path, about half the time of
    keyword arguments; built once per event at every commit.
    """
    build: Callable[..., OutboxEvent] = OutboxEvent  # django-stubs types keywords only
    return build(
        *[values[name] if name in values else field.get_default() for name, field in _row_fields()]
    )


def _insert_values(
    events: Sequence[OutboxEvent], using: str, texts: Texts, schedules: Schedules
) -> None:
    connection = connections[using]
    columns = _column_values(events, using, texts)
    clock = schedules is not None
    if schedules is not None:
        times = _schedule_values(schedules, connection)
        fields = [f.name for f in _fields()]
        columns = [
            times[name] if name in CLOCK_FIELDS else column
            for name, column in zip(fields, columns, strict=True)
        ]
    params = [param for values in zip(*columns, strict=True) for param in _flat(values)]
    with connection.cursor() as cursor:
        cursor.execute(_values_sql(using, len(events), clock), params)


class _Several(tuple[Any, ...]):
    """The parameters of one column value written as an expression of several."""


def _flat(values: Sequence[Any]) -> list[Any]:
    """One row's parameters: each ``_Several`` contributes its own, in order."""
    flat: list[Any] = []
    for value in values:
        if isinstance(value, _Several):
            flat.extend(value)
        else:
            flat.append(value)
    return flat


def _schedule_values(
    schedules: Sequence[Schedule], connection: BaseDatabaseWrapper
) -> dict[str, list[Any]]:
    """Per clock column, each row's parameters for ``_clock_sql``'s expressions."""
    vendor = connection.vendor
    pairs = [
        _Several(
            (
                connection.ops.adapt_datetimefield_value(s.deliver_at)
                if s.deliver_at is not None and not features(connection).native_types
                else s.deliver_at,
                None if s.delay is None else seconds_param(vendor, s.delay),
            )
        )
        for s in schedules
    ]
    return {"available_at": pairs, "created_at": [_Several()] * len(pairs), "deliver_at": pairs}


def _clock_sql(db: Features) -> dict[str, str]:
    """The clock columns' SQL: each takes (deliver_at, delay) but ``created_at`` (none)."""
    vendor = db.vendor
    now = now_sql(vendor)
    stamp = "%s::timestamptz" if db.typed_placeholders else "%s"
    due = f"COALESCE({stamp}, {later_sql(vendor)})"
    return {
        "available_at": f"COALESCE({stamp}, {later_sql(vendor)}, {now})",
        "created_at": now,
        "deliver_at": due,
    }


@functools.lru_cache(maxsize=256)
def _values_sql(using: str, rows: int, clock: bool = False) -> str:
    """The ``INSERT ... VALUES`` text for ``rows`` events (cached: built once per size)."""
    connection = connections[using]
    fields = _fields()
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    db = features(connection)
    json_placeholder = "%s::jsonb" if db.typed_placeholders else "%s"
    times = _clock_sql(db) if clock else {}
    row = (
        "("
        + ", ".join(
            times.get(f.name, json_placeholder if f.name in JSON_FIELDS else "%s") for f in fields
        )
        + ")"
    )
    return f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * rows)}"


@functools.cache
def _fields() -> list[Any]:
    return [OutboxEvent._meta.get_field(name) for name in INSERT_FIELDS]


#: Fields whose Python values need the backend's conversion (UUIDs, datetimes); the
#: others are plain strings and integers that every driver takes as they are. psycopg
#: takes ``UUID`` and aware ``datetime`` objects directly.
PREPARED_FIELDS = frozenset({"event_id", "occurred_at", "available_at", "created_at", "deliver_at"})

_json_default = DjangoJSONEncoder().default


def _json_column(
    events: Sequence[OutboxEvent], attname: str, texts: Texts, ascii_only: bool
) -> list[str]:
    if texts is None:
        return [json.dumps(getattr(e, attname), default=_json_default) for e in events]
    return [
        text
        if text is not None and (not ascii_only or text.isascii())
        else json.dumps(getattr(e, attname), default=_json_default)
        for e, text in zip(events, texts, strict=True)
    ]


def _column_values(events: Sequence[OutboxEvent], using: str, texts: Texts) -> list[list[Any]]:
    connection = connections[using]
    prepared = frozenset() if features(connection).native_types else PREPARED_FIELDS
    columns: list[list[Any]] = []
    for field in _fields():
        attname = field.attname
        if field.name == "payload":
            columns.append(_json_column(events, attname, texts, features(connection).ascii_json))
        elif field.name in JSON_FIELDS:
            columns.append(_json_column(events, attname, None, features(connection).ascii_json))
        elif field.name in prepared:
            columns.append(
                [field.get_db_prep_save(getattr(e, attname), connection) for e in events]
            )
        else:
            columns.append([getattr(e, attname) for e in events])
    return columns


def _insert_jsonb_rows(
    events: Sequence[OutboxEvent], using: str, texts: Texts, schedules: Schedules
) -> None:
    """PostgreSQL: every row in one JSON document, one parameter, ``jsonb_array_elements``.

    Each row is a JSON array: its scalar columns (UUIDs and datetimes as text, in full
    precision), then the payload and headers texts spliced in as they are (encoded once).
    ``json.dumps`` of a row's scalars runs in C, where adapting 150 parameters, or 15
    arrays element by element, ran in Python. With ``schedules`` the clock columns give
    way to each event's (deliver_at, delay), and the database's clock fills them.
    """
    connection = connections[using]
    clock = schedules is not None
    sql, scalar_names = _jsonb_rows_sql(using, clock)
    names = [f.name for f in _fields()]
    by_name = dict(zip(names, _column_values(events, using, texts), strict=True))
    if schedules is not None:
        by_name["_deliver_at"] = [s.deliver_at for s in schedules]
        by_name["_delay"] = [s.delay for s in schedules]
    scalars = [[_json_scalar(value) for value in by_name[name]] for name in scalar_names]
    rows = [
        f"{json.dumps(values)[:-1]},{payload},{headers}]"
        for *values, payload, headers in zip(
            *scalars, by_name["payload"], by_name["headers"], strict=True
        )
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, ["[" + ",".join(rows) + "]"])


def _json_scalar(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


@functools.lru_cache(maxsize=16)
def _jsonb_rows_sql(using: str, clock: bool = False) -> tuple[str, tuple[str, ...]]:
    """The statement, and the scalar columns in the order each row array holds them."""
    connection = connections[using]
    fields = [f for f in _fields() if f.name not in JSON_FIELDS]
    if clock:
        fields = [f for f in fields if f.name not in CLOCK_FIELDS]
    names = [f.name for f in fields]
    selected = [f"(r->>{i})::{f.db_type(connection)}" for i, f in enumerate(fields)]
    columns = [connection.ops.quote_name(f.column) for f in fields]
    if clock:
        by_name = {f.name: f for f in _fields()}
        at, delay = len(names), len(names) + 1
        names += ["_deliver_at", "_delay"]
        now = now_sql("postgresql")
        due = (
            f"COALESCE((r->>{at})::timestamptz, "
            f"{now} + (r->>{delay})::float8 * INTERVAL '1 second')"
        )
        for name, expression in (
            ("available_at", f"COALESCE({due}, {now})"),
            ("created_at", now),
            ("deliver_at", due),
        ):
            selected.append(expression)
            columns.append(connection.ops.quote_name(by_name[name].column))
    json_fields = {f.name: f for f in _fields() if f.name in JSON_FIELDS}
    for offset, name in enumerate(("payload", "headers")):
        selected.append(f"r->{len(names) + offset}")
        columns.append(connection.ops.quote_name(json_fields[name].column))
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selected)} "
        "FROM jsonb_array_elements(%s::jsonb) AS r"
    )
    return sql, tuple(names)


def _insert_json_each(
    events: Sequence[OutboxEvent], using: str, texts: Texts, schedules: Schedules
) -> None:
    """SQLite past its parameter limit: the rows as one JSON array, read by ``json_each``."""
    connection = connections[using]
    fields = _fields()
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    width = len(fields)
    selected = [f"json_extract(value, '$[{i}]')" for i in range(width)]
    rows = [list(row) for row in zip(*_column_values(events, using, texts), strict=True)]
    if schedules is not None:
        now = now_sql("sqlite")
        at, delay = f"json_extract(value, '$[{width}]')", f"json_extract(value, '$[{width + 1}]')"
        due = f"COALESCE({at}, {later_sql('sqlite').replace('%s', delay)})"
        clock = {"available_at": f"COALESCE({due}, {now})", "created_at": now, "deliver_at": due}
        selected = [clock.get(f.name, sql) for f, sql in zip(fields, selected, strict=True)]
        for row, schedule in zip(rows, schedules, strict=True):
            stamp = schedule.deliver_at
            row.append(None if stamp is None else connection.ops.adapt_datetimefield_value(stamp))
            row.append(None if schedule.delay is None else seconds_param("sqlite", schedule.delay))
    sql = f"INSERT INTO {table} ({names}) SELECT {', '.join(selected)} FROM json_each(%s)"
    with connection.cursor() as cursor:
        cursor.execute(sql, [json.dumps(rows, cls=DjangoJSONEncoder)])
