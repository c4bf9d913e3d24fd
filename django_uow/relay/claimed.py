"""``ClaimedRow``: what the relay reads back from a claim, without model instances.

A claim returns up to ``BATCH_SIZE`` rows per round trip; building a model instance for
each (``Model.from_db``, its ``__init__``, the ORM's iterator) cost about as much as the
claim statement itself. The rows are read from the cursor as tuples and converted with
the same converters Django applies (JSON decoding with the field's decoder, UUIDs and
datetimes per database), so the values are exactly what the ORM would have produced.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import connections
from django.db.models import Field

from ..events.base import Envelope
from ..models import OutboxEvent

#: Columns the relay reads back from the claim: what an ``Envelope`` and the ordering of
#: scheduled events need, nothing more (every extra datetime column costs a parse per row).
CLAIM_COLUMNS = (
    "id",
    "event_id",
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "occurred_at",
    "payload",
    "headers",
    "attempts",
    "deliver_at",
    "created_at",
)


@dataclass(slots=True)
class ClaimedRow:
    """One claimed outbox row (the fields of ``CLAIM_COLUMNS``, in that order)."""

    id: int
    event_id: UUID
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int | None
    occurred_at: datetime.datetime
    payload: dict[str, Any]
    headers: dict[str, Any]
    attempts: int
    deliver_at: datetime.datetime | None
    #: When the row was written (the database's clock, at the commit): an ordinary
    #: event's due time.
    created_at: datetime.datetime

    @property
    def pk(self) -> int:
        """The row's primary key, as on the model."""
        return self.id

    def to_envelope(self) -> Envelope:
        return Envelope.of_row(self)


Converter = Callable[[Any, Any, Any], Any]


def row_reader(using: str) -> Callable[[Sequence[Any]], ClaimedRow]:
    """A function turning one raw ``CLAIM_COLUMNS`` tuple of ``using`` into a ``ClaimedRow``.

    The converters are looked up once per claim, as the ORM's compiler does per query.
    """
    connection = connections[using]
    table = OutboxEvent._meta.db_table
    steps: list[tuple[int, Any, list[Converter]]] = []
    for index, name in enumerate(CLAIM_COLUMNS):
        field = OutboxEvent._meta.get_field(name)
        assert isinstance(field, Field)  # concrete columns, no relations
        column = field.get_col(table)
        converters = connection.ops.get_db_converters(column) + field.get_db_converters(connection)
        if converters:
            steps.append((index, column, converters))

    def read(raw: Sequence[Any]) -> ClaimedRow:
        values = list(raw)
        for index, column, converters in steps:
            value = values[index]
            for convert in converters:
                value = convert(value, column, connection)
            values[index] = value
        return ClaimedRow(*values)

    return read


def read_rows(using: str, raw_rows: Iterable[Sequence[Any]]) -> list[ClaimedRow]:
    """``ClaimedRow``s of raw cursor tuples."""
    read = row_reader(using)
    return [read(raw) for raw in raw_rows]
