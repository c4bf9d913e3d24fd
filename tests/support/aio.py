"""Helpers for the async tests: running a coroutine as a program would, and watching the
statements of connections opened on other threads (an async unit's own)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import connections
from django.db.backends.signals import connection_created

from tests.support.helpers import TRANSACTION_CONTROL, Statements, statement_kind

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run(main())``, then close the connection that ORM calls made outside any
    unit opened on asgiref's shared thread (a program's exit would close it)."""

    async def program() -> T:
        try:
            return await main()
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(program())


@contextmanager
def statements_of_new_connections() -> Iterator[Statements]:
    """The data statements (no transaction control) of every connection opened meanwhile,
    whatever its thread, in the order they ran."""
    seen = Statements()
    record = _recorder(seen)
    attached: list[Any] = []

    def attach(sender: Any, connection: Any, **kwargs: Any) -> None:
        if record not in connection.execute_wrappers:  # a wrapper that connects again
            connection.execute_wrappers.append(record)
            attached.append(connection)

    connection_created.connect(attach)
    try:
        yield seen
    finally:
        connection_created.disconnect(attach)
        for connection in attached:  # unit threads outlive the test
            connection.execute_wrappers.remove(record)


def _recorder(seen: Statements) -> Any:
    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not TRANSACTION_CONTROL.match(sql):
            seen.append(statement_kind(sql))
        return execute(sql, params, many, context)

    return record


async def record_statements() -> tuple[Statements, Callable[[], None]]:
    """Start recording the data statements of the current unit's connection (on its
    thread): the list, and the function that stops it (call it after the unit ended, so
    that its commit's statements are in)."""
    seen = Statements()
    record = _recorder(seen)
    wrappers: list[Any] = await on_unit_thread(lambda: connections["default"].execute_wrappers)
    wrappers.append(record)
    return seen, lambda: wrappers.remove(record)


async def on_unit_thread(fn: Callable[[], T]) -> T:
    """Call ``fn`` where the current unit's ORM calls run (thread-sensitive)."""
    return await sync_to_async(fn)()


def in_atomic_block() -> bool:
    return bool(connections["default"].in_atomic_block)


async def wait_for_flag(flag: asyncio.Event, timeout: float = 10.0) -> None:
    """Wait for ``flag``, bounded: a test that loses a step fails instead of hanging."""
    async with asyncio.timeout(timeout):
        await flag.wait()
