"""Writing staged events to the outbox: one INSERT per commit, whatever the number of events.

A multi-row ``INSERT ... VALUES`` is the statement for a commit of one or a few events.
PostgreSQL receives the rows as one JSON document (``jsonb_array_elements``) past 50
parameters (four events): psycopg re-parses longer parameter lists on every call. SQLite
does the same (``json_each``) past its parameter limit (999 as Django configures it), so
the statement count stays at one. Other databases fall back to ``bulk_create`` for very
large commits.

Each payload is encoded once: the JSON text checked at ``record_event()`` is the text
written here (``payload_texts``).
"""

from __future__ import annotations

import datetime
import functools
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections

from .models import OutboxEvent

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


def write_events(events: Sequence[OutboxEvent], using: str, payload_texts: Texts = None) -> None:
    """Insert ``events`` (unsaved ``OutboxEvent`` instances) with one statement.

    ``payload_texts``, when given, holds each event's payload already encoded as JSON
    (None where it is not): it is written as it is instead of encoding the payload again.
    """
    if not events:
        return
    connection = connections[using]
    vendor = connection.vendor
    limit = PARAMETER_LIMITS.get(vendor, connection.features.max_query_params)
    params = len(events) * len(INSERT_FIELDS)
    if vendor == "postgresql" and params > PSYCOPG_CACHED_PARAMS:
        _insert_jsonb_rows(events, using, payload_texts)
    elif limit is None or params <= limit:
        _insert_values(events, using, payload_texts)
    elif vendor == "sqlite":
        _insert_json_each(events, using, payload_texts)
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


#: Past this many parameters psycopg parses a statement's text again on every call (its
#: cache keeps only statements with fewer): a commit of a few events would spend more on
#: that than on encoding them. One JSON document of rows is one parameter.
PSYCOPG_CACHED_PARAMS = 50

#: Bind parameters one statement may carry, where Django's feature flag says nothing.
PARAMETER_LIMITS: dict[str, int | None] = {"postgresql": 65_535, "mysql": None}


def _insert_values(events: Sequence[OutboxEvent], using: str, texts: Texts) -> None:
    connection = connections[using]
    columns = _column_values(events, using, texts)
    params = [value for values in zip(*columns, strict=True) for value in values]
    with connection.cursor() as cursor:
        cursor.execute(_values_sql(connection.vendor, using, len(events)), params)


@functools.lru_cache(maxsize=256)
def _values_sql(vendor: str, using: str, rows: int) -> str:
    """The ``INSERT ... VALUES`` text for ``rows`` events (cached: built once per size)."""
    connection = connections[using]
    fields = _fields()
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    json_placeholder = "%s::jsonb" if vendor == "postgresql" else "%s"
    row = "(" + ", ".join(json_placeholder if f.name in JSON_FIELDS else "%s" for f in fields) + ")"
    return f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * rows)}"


@functools.cache
def _fields() -> list[Any]:
    return [OutboxEvent._meta.get_field(name) for name in INSERT_FIELDS]


#: Fields whose Python values need the backend's conversion (UUIDs, datetimes); the
#: others are plain strings and integers that every driver takes as they are. psycopg
#: takes ``UUID`` and aware ``datetime`` objects directly.
PREPARED_FIELDS = frozenset({"event_id", "occurred_at", "available_at", "created_at", "deliver_at"})
NATIVE_TYPES_VENDORS = frozenset({"postgresql"})

_json_default = DjangoJSONEncoder().default


def _json_column(
    events: Sequence[OutboxEvent], attname: str, texts: Texts, vendor: str
) -> list[str]:
    if texts is None:
        return [json.dumps(getattr(e, attname), default=_json_default) for e in events]
    return [
        text
        if text is not None and (vendor not in ASCII_JSON_VENDORS or text.isascii())
        else json.dumps(getattr(e, attname), default=_json_default)
        for e, text in zip(events, texts, strict=True)
    ]


#: MySQL/MariaDB connections may use a 3-byte ``utf8`` charset (Django's default): text
#: with characters outside ASCII is sent \u-escaped there, as ``json.dumps`` writes it.
ASCII_JSON_VENDORS = frozenset({"mysql"})


def _column_values(events: Sequence[OutboxEvent], using: str, texts: Texts) -> list[list[Any]]:
    connection = connections[using]
    prepared = frozenset() if connection.vendor in NATIVE_TYPES_VENDORS else PREPARED_FIELDS
    columns: list[list[Any]] = []
    for field in _fields():
        attname = field.attname
        if field.name == "payload":
            columns.append(_json_column(events, attname, texts, connection.vendor))
        elif field.name in JSON_FIELDS:
            columns.append(_json_column(events, attname, None, connection.vendor))
        elif field.name in prepared:
            columns.append(
                [field.get_db_prep_save(getattr(e, attname), connection) for e in events]
            )
        else:
            columns.append([getattr(e, attname) for e in events])
    return columns


def _insert_jsonb_rows(events: Sequence[OutboxEvent], using: str, texts: Texts) -> None:
    """PostgreSQL: every row in one JSON document, one parameter, ``jsonb_array_elements``.

    Each row is a JSON array: its scalar columns (UUIDs and datetimes as text, in full
    precision), then the payload and headers texts spliced in as they are (encoded once).
    ``json.dumps`` of a row's scalars runs in C, where adapting 150 parameters, or 15
    arrays element by element, ran in Python.
    """
    connection = connections[using]
    sql, scalar_names = _jsonb_rows_sql(using)
    names = [f.name for f in _fields()]
    by_name = dict(zip(names, _column_values(events, using, texts), strict=True))
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


@functools.lru_cache(maxsize=8)
def _jsonb_rows_sql(using: str) -> tuple[str, tuple[str, ...]]:
    """The statement, and the scalar columns in the order each row array holds them."""
    connection = connections[using]
    fields = [f for f in _fields() if f.name not in JSON_FIELDS]
    names = [f.name for f in fields]
    selected = [f"(r->>{i})::{f.db_type(connection)}" for i, f in enumerate(fields)]
    columns = [connection.ops.quote_name(f.column) for f in fields]
    json_fields = {f.name: f for f in _fields() if f.name in JSON_FIELDS}
    for offset, name in enumerate(("payload", "headers")):
        selected.append(f"r->{len(fields) + offset}")
        columns.append(connection.ops.quote_name(json_fields[name].column))
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selected)} "
        "FROM jsonb_array_elements(%s::jsonb) AS r"
    )
    return sql, tuple(names)


def _insert_json_each(events: Sequence[OutboxEvent], using: str, texts: Texts) -> None:
    connection = connections[using]
    fields = _fields()
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    selected = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(fields)))
    rows = [list(row) for row in zip(*_column_values(events, using, texts), strict=True)]
    sql = f"INSERT INTO {table} ({names}) SELECT {selected} FROM json_each(%s)"
    with connection.cursor() as cursor:
        cursor.execute(sql, [json.dumps(rows, cls=DjangoJSONEncoder)])
