"""``unit_of_work``: ``@unit_of_work``, ``@unit_of_work(...)`` and ``with unit_of_work():``.

On an ``async def`` (an async view, an async class-based view's handler or dispatch,
``method_decorator`` included) each call runs in ``async with UnitOfWork()``, and
``retries=`` re-runs the coroutine, as it re-runs a function.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.db import connections

from ..exceptions import UnitOfWorkError
from ..retry import backoff_delay, is_retryable, logger_for
from .unit_of_work import UnitOfWork, current_uow

logger = logger_for("django_uow.retry")

P = ParamSpec("P")
R = TypeVar("R")


def callable_name(func: Any) -> str:
    """The ``__qualname__`` of any callable, for log lines and messages; never raises.

    Partials name the function they wrap; callable objects name their class.
    """
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if not hasattr(target, "__qualname__"):
        target = type(target)
    name = getattr(target, "__qualname__", None)
    return name if isinstance(name, str) else repr(target)


def is_async_callable(func: Any) -> bool:
    """True when calling ``func`` returns an awaitable instead of doing the work.

    Covers ``async def`` functions and generators, partials and bound methods of them,
    asgiref-marked callables (``markcoroutinefunction``, ``as_view()`` of an async
    view), bound methods of async class-based views, and objects with ``async __call__``.
    """
    seen = 0
    while seen < 20:
        seen += 1
        if iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            return True
        if isinstance(func, functools.partial):
            func = func.func
            continue
        if inspect.ismethod(func) and _is_async_view(func.__self__):
            return True  # e.g. dispatch of an async view, wrapped by method_decorator
        view_class = getattr(func, "view_class", None)
        if isinstance(view_class, type) and _is_async_view(view_class):
            return True
        if inspect.isfunction(func) or inspect.ismethod(func) or inspect.isclass(func):
            return False
        if not callable(func):
            return False
        func = type(func).__call__
    return False


def _is_async_view(view: Any) -> bool:
    try:
        return getattr(view, "view_is_async", False) is True
    except Exception:  # a view mixing sync and async handlers raises on this property
        return False


class UnitOfWorkDecorator:
    """What ``unit_of_work(...)`` returns: a decorator, and a context manager for ``with``.

    Like ``atomic``, one object decorates any number of functions and can be entered
    again while open (a savepoint) or from several threads: its state is per entry.
    """

    def __init__(
        self,
        using: str = "default",
        savepoint: bool = True,
        retries: int = 0,
        rollback_if: Callable[[Any], bool] | None = None,
        backoff: tuple[float, float] = (0.01, 0.5),
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        if retries < 0:
            raise ValueError(f"unit_of_work(retries={retries}): retries must be 0 or more.")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"unit_of_work(timeout={timeout!r}): a time limit is seconds > 0.")
        if not (
            isinstance(retry_on, tuple)
            and all(isinstance(c, type) and issubclass(c, BaseException) for c in retry_on)
        ):
            raise TypeError(
                f"unit_of_work(retry_on={retry_on!r}): pass a tuple of exception classes, "
                "e.g. retry_on=(UnitOfWorkTimeout,)."
            )
        self.using = using
        self.savepoint = savepoint
        self.retries = retries
        self.rollback_if = rollback_if
        self.backoff = backoff
        self.timeout = timeout
        self.retry_on = retry_on
        self._entries = threading.local()

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        label = f"@unit_of_work {callable_name(func)}()"  # once, not at every call
        if is_async_callable(func):
            return self._decorate_async(func, label)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if self.retries and self._joins_a_unit(func):
                # The outermost unit that owns retries re-runs the whole transaction.
                return self._run_once(func, label, *args, **kwargs)
            attempt = 0
            while True:
                try:
                    return self._run_once(func, label, *args, **kwargs)
                except BaseException as error:
                    delay = self._retry_delay(func, error, attempt)
                    attempt += 1
                    time.sleep(delay)

        return wrapper

    def _decorate_async(self, func: Callable[P, Any], label: str) -> Callable[P, Any]:
        """The coroutine form: each call runs ``func`` in ``async with UnitOfWork()``.

        ``func`` may be an ``async def``, or a callable that returns an awaitable (an
        async view's ``as_view()``, a method decorated by ``method_decorator``).
        """
        if inspect.isasyncgenfunction(func):
            raise TypeError(
                f"@unit_of_work cannot decorate the async generator {callable_name(func)}(): "
                "a unit of work cannot stay open across the values it yields. Decorate a "
                "coroutine function (async def without yield) instead."
            )

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            if self.retries and current_uow(self.using) is not None:
                # The outermost unit that owns retries re-runs the whole transaction.
                return await self._run_once_async(func, label, *args, **kwargs)
            attempt = 0
            while True:
                try:
                    return await self._run_once_async(func, label, *args, **kwargs)
                except BaseException as error:
                    delay = self._retry_delay(func, error, attempt)
                    attempt += 1
                    await asyncio.sleep(delay)

        return wrapper

    def _retry_delay(self, func: Callable[..., Any], error: BaseException, attempt: int) -> float:
        """Seconds to wait before re-running after ``error``; re-raise it when not retried."""
        retryable = is_retryable(error) or isinstance(error, self.retry_on)
        if attempt >= self.retries or not retryable:
            raise error
        # The n-th retry waits up to base * 2**n (capped).
        delay = backoff_delay(attempt + 2, *self.backoff)
        logger.info(
            "Retrying %s (attempt %d of %d) in %.3fs after %s: %s",
            callable_name(func),
            attempt + 2,
            self.retries + 1,
            delay,
            type(error).__name__,
            error,
        )
        return delay

    async def _run_once_async(
        self, func: Callable[P, Any], label: str, /, *args: P.args, **kwargs: P.kwargs
    ) -> Any:
        async with UnitOfWork(
            self.using, savepoint=self.savepoint, timeout=self.timeout, label=label
        ) as uow:
            result = func(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            if self.rollback_if is not None and self.rollback_if(result):
                await uow.arollback()
        return result

    def _run_once(
        self, func: Callable[P, R], label: str, /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        with UnitOfWork(
            self.using, savepoint=self.savepoint, timeout=self.timeout, label=label
        ) as uow:
            result = func(*args, **kwargs)
            if self.rollback_if is not None and self.rollback_if(result):
                uow.rollback()
        return result

    def _joins_a_unit(self, func: Callable[..., Any]) -> bool:
        """True inside another unit of work; raise inside a transaction no unit owns."""
        if current_uow(self.using) is not None:
            return True
        # The atomic blocks a test case wraps around each test don't count: inside them
        # the unit of work is a savepoint that a retry can roll back and re-run.
        outer_blocks = [
            block
            for block in connections[self.using].atomic_blocks
            if not getattr(block, "_from_testcase", False)
        ]
        if outer_blocks:
            raise UnitOfWorkError(
                f"@unit_of_work(retries={self.retries}) on {callable_name(func)}() was called "
                "inside a transaction that no unit of work owns (a plain atomic block, "
                "ATOMIC_REQUESTS); a retry would re-run only part of it. Put retries= on "
                "the outermost @unit_of_work, or call it inside a unit of work."
            )
        return False

    # -- as a context manager ---------------------------------------------------------

    def __enter__(self) -> UnitOfWork:
        if self.retries or self.rollback_if is not None:
            raise TypeError(
                "`with unit_of_work(...)` cannot take retries= or rollback_if=: a with block "
                "cannot be re-run. Decorate a function with @unit_of_work(...) instead."
            )
        uow = UnitOfWork(self.using, savepoint=self.savepoint, timeout=self.timeout).begin()
        entries: list[UnitOfWork] = self._entries.__dict__.setdefault("stack", [])
        entries.append(uow)
        return uow

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        entries: list[UnitOfWork] = self._entries.__dict__.get("stack", [])
        if not entries:
            raise UnitOfWorkError(
                "unit_of_work(...).__exit__() without a matching __enter__() in this thread."
            )
        return entries.pop().__exit__(exc_type, exc, tb)


@overload
def unit_of_work(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def unit_of_work(
    func: None = None,
    /,
    *,
    using: str = "default",
    savepoint: bool = True,
    retries: int = 0,
    rollback_if: Callable[[Any], bool] | None = None,
    backoff: tuple[float, float] = (0.01, 0.5),
    timeout: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> UnitOfWorkDecorator: ...


def unit_of_work(
    func: Callable[P, R] | None = None,
    /,
    *,
    using: str = "default",
    savepoint: bool = True,
    retries: int = 0,
    rollback_if: Callable[[Any], bool] | None = None,
    backoff: tuple[float, float] = (0.01, 0.5),
    timeout: float | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Callable[P, R] | UnitOfWorkDecorator:
    """Run a function (or a ``with`` block) in a ``UnitOfWork``.

    ``retries=N`` re-runs the whole function on ``ConcurrencyError``, serialization
    failures, deadlocks and SQLite lock errors, with jittered exponential backoff.
    Called inside another unit of work it joins that unit as a savepoint, and the
    outermost unit that owns retries re-runs instead.
    ``rollback_if(result)`` rolls back and still returns ``result`` when true.
    ``timeout=s`` limits the unit's time, enforced by the database (``UnitOfWorkTimeout``);
    ``retry_on=(...)`` adds exception classes ``retries=`` re-runs on.
    """
    decorator = UnitOfWorkDecorator(
        using=using,
        savepoint=savepoint,
        retries=retries,
        rollback_if=rollback_if,
        backoff=backoff,
        timeout=timeout,
        retry_on=retry_on,
    )
    if func is not None:
        if isinstance(func, str):
            raise TypeError(
                f"unit_of_work({func!r}): pass the database alias by keyword: "
                f"@unit_of_work(using={func!r})."
            )
        return decorator(func)
    return decorator
