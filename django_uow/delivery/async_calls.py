"""Calling a handler that may be ``async def``.

An async handler runs to completion where it is called, through ``async_to_sync``: on
the event loop of the thread's ``sync_to_async`` caller if there is one (an inline
relay after an async unit's commit), else on a loop of its own (a Celery worker, a
relay command). Its thread waits meanwhile and serves the handler's ORM calls, so they
run on its connection, inside the handler's unit of work with its inbox row; an
``async with UnitOfWork()`` inside the handler is a savepoint of that unit.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import async_to_sync

T = TypeVar("T")


async def _finish(awaitable: Awaitable[T]) -> T:
    return await awaitable


def call_handler(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Call ``func``; when it returns an awaitable (an ``async def``), run it to the end."""
    result = func(*args, **kwargs)
    if inspect.isawaitable(result):
        return async_to_sync(_finish)(result)
    return result
