"""What each database can do, asked once per connection: the one place that knows vendors.

Modules above ask ``features(connection)`` ("can this database return rows from an
UPDATE?") instead of branching on ``connection.vendor``; the per-vendor SQL they need
lives beside this module (``db.clock`` for times). Django's own feature flags are read
here too, so a caller never mixes the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Features:
    """The capabilities django-uow relies on, of one database connection."""

    vendor: str
    #: ``UPDATE ... RETURNING`` and ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE ...
    #: RETURNING`` (PostgreSQL; SQLite from 3.35): a claim, an acknowledgement or an
    #: upsert in one statement.
    returning: bool
    #: ``INSERT ... ON DUPLICATE KEY UPDATE`` (MySQL, MariaDB): an upsert without RETURNING.
    upsert_on_duplicate_key: bool
    #: ``SELECT ... FOR UPDATE SKIP LOCKED``: concurrent relays pass each other's rows.
    skip_locked: bool
    #: One writer at a time for the whole database (SQLite): a second connection waits on
    #: it, or fails.
    single_writer: bool
    #: ``LISTEN``/``NOTIFY`` (PostgreSQL).
    notify: bool
    #: Bind parameters one statement may carry (None: no limit that matters here).
    parameter_limit: int | None
    #: Past this many parameters the driver parses a statement's text on every call
    #: (psycopg keeps shorter ones in its cache); None: no such cost.
    cached_parameters: int | None
    #: How a long list of rows is sent as one parameter: "jsonb" (PostgreSQL,
    #: ``jsonb_array_elements``), "json_each" (SQLite), or None.
    json_rows: str | None
    #: The driver takes ``UUID`` and aware ``datetime`` values as they are (psycopg).
    native_types: bool
    #: PostgreSQL wants casts on untyped placeholders (``%s::jsonb``, ``%s::timestamptz``).
    typed_placeholders: bool
    #: JSON text must be sent ASCII-escaped (MySQL/MariaDB's 3-byte ``utf8`` by default).
    ascii_json: bool
    #: ``SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`` gives a read-only snapshot for
    #: several reads (PostgreSQL, MySQL/MariaDB; SQLite's transactions already have one).
    snapshot_transactions: bool
    #: New pks come back from a bulk insert (Django's flag).
    bulk_insert_returns_pks: bool


_cache: dict[tuple[str, str], Features] = {}


def features(connection: Any) -> Features:
    """``connection``'s capabilities (computed once per database kind and version)."""
    key = (connection.vendor, _version(connection))
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = _features(connection)
    return found


def _version(connection: Any) -> str:
    # SQLite's version is the library's (known without a connection); the others' flags
    # below do not depend on a version the project supports.
    if connection.vendor == "sqlite":
        import sqlite3

        return sqlite3.sqlite_version
    return ""


def _features(connection: Any) -> Features:
    vendor = connection.vendor
    flags = connection.features
    returning = vendor == "postgresql" or (
        vendor == "sqlite" and bool(flags.can_return_rows_from_bulk_insert)
    )
    return Features(
        vendor=vendor,
        returning=returning,
        upsert_on_duplicate_key=vendor == "mysql",
        skip_locked=bool(flags.has_select_for_update_skip_locked),
        single_writer=vendor == "sqlite",
        notify=vendor == "postgresql",
        parameter_limit={"postgresql": 65_535, "mysql": None}.get(vendor, flags.max_query_params),
        cached_parameters=50 if vendor == "postgresql" else None,
        json_rows={"postgresql": "jsonb", "sqlite": "json_each"}.get(vendor),
        native_types=vendor == "postgresql",
        typed_placeholders=vendor == "postgresql",
        ascii_json=vendor == "mysql",
        snapshot_transactions=vendor in ("postgresql", "mysql"),
        bulk_insert_returns_pks=bool(flags.can_return_rows_from_bulk_insert),
    )
