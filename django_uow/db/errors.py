"""What a database error means, whatever the database: a conflict to retry, or a time
limit the server enforced. The vendors' codes live here, once."""

from __future__ import annotations

from django.db import DatabaseError, OperationalError

#: SQLSTATEs of PostgreSQL serialization failures and deadlocks.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})
#: MySQL/MariaDB deadlock and lock wait timeout.
CONFLICT_MYSQL_CODES = frozenset({1213, 1205})
#: PostgreSQL: statement_timeout (query_canceled), lock_timeout, idle-in-transaction.
TIMEOUT_SQLSTATES = frozenset({"57014", "55P03", "25P03"})
#: MariaDB max_statement_time, MySQL max_execution_time, InnoDB lock wait timeout.
TIMEOUT_MYSQL_CODES = frozenset({1969, 3024, 1205})
#: SQLite lock errors: another connection holds the database (or, shared cache, the table).
SQLITE_LOCK_MESSAGES = ("database is locked", "database table is locked")


def _sqlstate(error: DatabaseError) -> str | None:
    cause = error.__cause__
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return None if code is None else str(code)


def _mysql_code(error: DatabaseError) -> object:
    args = getattr(error.__cause__, "args", ())
    return args[0] if args else None


def _sqlite_locked(error: BaseException) -> bool:
    return any(message in str(error) for message in SQLITE_LOCK_MESSAGES)


def is_conflict(error: BaseException) -> bool:
    """A serialization failure, a deadlock or a lock the database would not wait for."""
    if not isinstance(error, DatabaseError):
        return False
    if _sqlstate(error) in CONFLICT_SQLSTATES or _mysql_code(error) in CONFLICT_MYSQL_CODES:
        return True
    return isinstance(error, OperationalError) and _sqlite_locked(error)


def is_time_limit(error: BaseException, vendor: str) -> bool:
    """The database enforcing a time limit (statement, lock wait, idle transaction)."""
    if not isinstance(error, DatabaseError):
        return False
    if _sqlstate(error) in TIMEOUT_SQLSTATES or _mysql_code(error) in TIMEOUT_MYSQL_CODES:
        return True
    if vendor == "postgresql" and "idle-in-transaction timeout" in str(error):
        return True
    return vendor == "sqlite" and _sqlite_locked(error)
