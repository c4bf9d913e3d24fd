"""Time limits of a unit of work, enforced by the database itself.

A unit of work can hold row locks for as long as its code runs; one slow call inside it
blocks every writer of the same rows. ``UnitOfWork(timeout=s)`` asks the server to stop
it instead:

- PostgreSQL: ``statement_timeout``, ``lock_timeout`` and
  ``idle_in_transaction_session_timeout``, set for this transaction only
  (``set_config(..., true)``), so nothing needs restoring;
- MariaDB: the session's ``max_statement_time`` and ``innodb_lock_wait_timeout`` (MySQL:
  ``max_execution_time`` and ``innodb_lock_wait_timeout``), restored when the unit ends;
- SQLite: the connection's busy timeout (how long to wait for another writer), restored.

The unit also measures its own time: a unit that ran past its limit when it is about to
commit rolls back instead. Either way it raises ``UnitOfWorkTimeout``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError

from .errors import is_time_limit

Restore = Callable[[], None]


def _nothing() -> None:
    return None


def apply_limits(connection: Any, seconds: float, *, idle: bool = False) -> Restore:
    """Limit statements and lock waits on ``connection`` to ``seconds``; return the undo.

    Called inside the unit's transaction (after BEGIN). The undo never raises: a
    connection the server closed has nothing left to restore. PostgreSQL also ends a
    session left idle inside the transaction for ``seconds``; ``idle`` asks MariaDB for
    the same (``idle_transaction_timeout``, whole seconds), so that a process paused
    while it holds row locks (SIGSTOP, a frozen VM) releases them.
    """
    vendor = connection.vendor
    millis = max(1, int(seconds * 1000))
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('lock_timeout', %s, true), "
                "set_config('idle_in_transaction_session_timeout', %s, true)",
                [f"{millis}ms"] * 3,
            )
            return _nothing
        if vendor == "mysql":
            return _mysql_limits(connection, cursor, seconds, idle)
        if vendor == "sqlite":
            cursor.execute("PRAGMA busy_timeout")
            (previous,) = cursor.fetchone()
            cursor.execute(f"PRAGMA busy_timeout = {millis}")
            return _restorer(connection, [f"PRAGMA busy_timeout = {int(previous)}"])
    return _nothing


def _mysql_limits(connection: Any, cursor: Any, seconds: float, idle: bool) -> Restore:
    lock_wait = max(1, math.ceil(seconds))
    if getattr(connection, "mysql_is_mariadb", False):
        cursor.execute(
            "SELECT @@SESSION.max_statement_time, @@SESSION.innodb_lock_wait_timeout, "
            "@@SESSION.idle_transaction_timeout"
        )
        statement, lock, idle_before = cursor.fetchone()
        idle_after = lock_wait if idle else int(idle_before)
        cursor.execute(
            "SET SESSION max_statement_time = %s, innodb_lock_wait_timeout = %s, "
            "idle_transaction_timeout = %s",
            [float(seconds), lock_wait, idle_after],
        )
        undo = (
            "SET SESSION max_statement_time = %s, innodb_lock_wait_timeout = %s, "
            "idle_transaction_timeout = %s"
        )
        return _restorer(connection, [(undo, [float(statement), int(lock), int(idle_before)])])
    cursor.execute("SELECT @@SESSION.max_execution_time, @@SESSION.innodb_lock_wait_timeout")
    statement, lock = cursor.fetchone()
    cursor.execute(
        "SET SESSION max_execution_time = %s, innodb_lock_wait_timeout = %s",
        [int(seconds * 1000), lock_wait],
    )
    undo = "SET SESSION max_execution_time = %s, innodb_lock_wait_timeout = %s"
    return _restorer(connection, [(undo, [int(statement), int(lock)])])


def _restorer(connection: Any, statements: list[Any]) -> Restore:
    def restore() -> None:
        if connection.connection is None or connection.needs_rollback:
            return  # closed, or inside a broken atomic block: a new connection starts clean
        try:
            with connection.cursor() as cursor:
                for statement in statements:
                    if isinstance(statement, tuple):
                        cursor.execute(*statement)
                    else:
                        cursor.execute(statement)
        except DatabaseError:
            connection.close_if_unusable_or_obsolete()

    return restore


def is_timeout(error: BaseException, vendor: str) -> bool:
    """True when ``error`` is the database enforcing a unit's time limit."""
    return is_time_limit(error, vendor)
