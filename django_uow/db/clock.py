"""One clock: the database server's.

Leases, due times, backoff and deadlines are compared across processes, and each process
has a clock of its own: a relay whose clock runs a few seconds fast would take live
leases, publish scheduled events early, or leave a writer's event waiting. Every such
time is therefore read from the database server, inside the statement that uses it:

- ``now_sql`` / ``later_sql``: SQL text for raw statements;
- ``DatabaseNow`` / ``later``: the same as ORM expressions, for ``filter()`` and ``update()``;
- ``database_now``: one query, for the few places that need the time as a Python value.

PostgreSQL's ``STATEMENT_TIMESTAMP()`` is the start of the current statement (``now()``
would be the start of the transaction); MySQL/MariaDB's ``UTC_TIMESTAMP(6)`` matches the
naive UTC values Django stores there; SQLite's ``'now'`` is its C library's clock,
stable within one statement. Times are stored in UTC (``USE_TZ = True``).
"""

from __future__ import annotations

import datetime
from typing import Any

from django.db import connections
from django.db.models import DateTimeField, Func, Value
from django.utils import timezone
from django.utils.dateparse import parse_datetime

_NOW = {
    "postgresql": "STATEMENT_TIMESTAMP()",
    "mysql": "UTC_TIMESTAMP(6)",
    "sqlite": "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')",
}
_LATER = {
    "postgresql": "(STATEMENT_TIMESTAMP() + %s * INTERVAL '1 second')",
    "mysql": "DATE_ADD(UTC_TIMESTAMP(6), INTERVAL %s MICROSECOND)",
    "sqlite": "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)",
}


def knows_clock(vendor: str) -> bool:
    """Whether the server's time of this kind of database can be read in SQL here."""
    return vendor in _NOW


def _vendor(vendor: str) -> str:
    if vendor not in _NOW:
        raise NotImplementedError(
            f"django-uow reads the time from the database server and knows how on "
            f"PostgreSQL, MySQL/MariaDB and SQLite, not on {vendor!r}."
        )
    return vendor


def now_sql(vendor: str) -> str:
    """SQL (no parameters, ``%`` escaped for ``cursor.execute``): the server's time now."""
    return _NOW[_vendor(vendor)]


def later_sql(vendor: str) -> str:
    """SQL with one parameter, ``seconds_param(vendor, s)``: the server's time plus s."""
    return _LATER[_vendor(vendor)]


def seconds_param(vendor: str, seconds: float) -> Any:
    """The parameter ``later_sql`` takes for ``seconds`` (may be negative)."""
    vendor = _vendor(vendor)
    if vendor == "mysql":
        return round(seconds * 1_000_000)
    if vendor == "sqlite":
        return f"{seconds:+.6f} seconds"
    return float(seconds)


class DatabaseNow(Func):
    """The database server's time, as an ORM expression (``filter(due__lte=DatabaseNow())``)."""

    output_field = DateTimeField()
    template = "CURRENT_TIMESTAMP"

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template=_NOW["postgresql"], **extra)

    def as_mysql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, template=_NOW["mysql"], **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # Func formats the template with %: escape once more for that step.
        template = _NOW["sqlite"].replace("%", "%%")
        return self.as_sql(compiler, connection, template=template, **extra)


class _Later(Func):
    output_field = DateTimeField()

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        super().__init__(Value(self.seconds))

    def _render(self, compiler: Any, connection: Any, vendor: str, **extra: Any) -> Any:
        sql = _LATER[vendor].replace("%", "%%").replace("%%s", "%(expressions)s")
        self.source_expressions = [Value(seconds_param(vendor, self.seconds))]
        return self.as_sql(compiler, connection, template=sql, **extra)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self._render(compiler, connection, "postgresql", **extra)

    def as_mysql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self._render(compiler, connection, "mysql", **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self._render(compiler, connection, "sqlite", **extra)


def later(seconds: float) -> Func:
    """The server's time plus ``seconds``, as an ORM expression (``seconds`` may be negative)."""
    return _Later(seconds)


def database_now(using: str) -> datetime.datetime:
    """The database server's time now, as an aware UTC datetime (one query)."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + now_sql(connection.vendor).replace("%%", "%"))
        (value,) = cursor.fetchone()
    return as_aware(value)


def as_aware(value: Any) -> datetime.datetime:
    """A raw time from the database (SQLite: text; MySQL: naive UTC) as an aware datetime."""
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is None:
            raise ValueError(f"Not a time the database returned: {value!r}")
        value = parsed
    if timezone.is_naive(value):
        value = value.replace(tzinfo=datetime.UTC)
    result: datetime.datetime = value
    return result
