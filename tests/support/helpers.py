"""Small test helpers shared by the core tests."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections
from django.test.utils import CaptureQueriesContext

TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE SAVEPOINT)", re.I)


def statement_kind(sql: str) -> str:
    """``'INSERT django_uow_outboxevent'``-style summary of one statement."""
    verb = sql.split(None, 1)[0].upper()
    if verb == "SELECT":
        match = re.search(r'\bFROM\s+["`]?(\w+)["`]?', sql, re.I)
        return f"SELECT {match.group(1) if match else '?'}"
    match = re.match(r'^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+["`]?(\w+)["`]?', sql, re.I)
    return f"{verb} {match.group(1) if match else '?'}"


class Statements(list[str]):
    """The data statements (no transaction control) run inside ``capture_statements``."""


@contextmanager
def capture_statements(using: str = "default") -> Iterator[Statements]:
    result = Statements()
    with CaptureQueriesContext(connections[using]) as ctx:
        yield result
    result.extend(
        statement_kind(q["sql"])
        for q in ctx.captured_queries
        if not TRANSACTION_CONTROL.match(q["sql"])
    )
