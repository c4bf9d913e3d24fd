"""``unit_of_work``: ``@unit_of_work``, ``@unit_of_work(...)`` and ``with unit_of_work():``."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from django.db import connections

from .exceptions import UnitOfWorkError
from .retry import backoff_delay, is_retryable
from .unit_of_work import UnitOfWork, current_uow

logger = logging.getLogger("django_uow.retry")

P = ParamSpec("P")
R = TypeVar("R")


class UnitOfWorkDecorator:
    """What ``unit_of_work(...)`` returns: a decorator, and a context manager for ``with``."""

    def __init__(
        self,
        using: str = "default",
        savepoint: bool = True,
        retries: int = 0,
        rollback_if: Callable[[Any], bool] | None = None,
        backoff: tuple[float, float] = (0.01, 0.5),
    ) -> None:
        if retries < 0:
            raise ValueError(f"unit_of_work(retries={retries}): retries must be 0 or more.")
        self.using = using
        self.savepoint = savepoint
        self.retries = retries
        self.rollback_if = rollback_if
        self.backoff = backoff
        self._uow: UnitOfWork | None = None

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"@unit_of_work cannot decorate the async function {func.__qualname__}(): "
                "Django transactions are synchronous. Put the transactional part in a sync "
                "function decorated with @unit_of_work and call it with "
                "asgiref.sync.sync_to_async(...)."
            )

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if self.retries:
                self._refuse_nested_retries(func)
            attempt = 0
            while True:
                try:
                    return self._run_once(func, *args, **kwargs)
                except BaseException as error:
                    if attempt >= self.retries or not is_retryable(error):
                        raise
                    attempt += 1
                    # The n-th retry waits up to base * 2**n (capped).
                    delay = backoff_delay(attempt + 1, *self.backoff)
                    logger.info(
                        "Retrying %s (attempt %d of %d) in %.3fs after %s: %s",
                        func.__qualname__,
                        attempt + 1,
                        self.retries + 1,
                        delay,
                        type(error).__name__,
                        error,
                    )
                    time.sleep(delay)

        return wrapper

    def _run_once(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with UnitOfWork(self.using, savepoint=self.savepoint) as uow:
            result = func(*args, **kwargs)
            if self.rollback_if is not None and self.rollback_if(result):
                uow.rollback()
        return result

    def _refuse_nested_retries(self, func: Callable[..., Any]) -> None:
        # The atomic blocks a test case wraps around each test don't count: inside them
        # the unit of work is a savepoint that a retry can roll back and re-run.
        outer_blocks = [
            block
            for block in connections[self.using].atomic_blocks
            if not getattr(block, "_from_testcase", False)
        ]
        if current_uow(self.using) is not None or outer_blocks:
            raise UnitOfWorkError(
                f"@unit_of_work(retries={self.retries}) on {func.__qualname__}() was called "
                "inside another transaction; a retry would re-run only part of it. Put "
                "retries= on the outermost @unit_of_work (and not under ATOMIC_REQUESTS)."
            )

    # -- as a context manager ---------------------------------------------------------

    def __enter__(self) -> UnitOfWork:
        if self.retries or self.rollback_if is not None:
            raise TypeError(
                "`with unit_of_work(...)` cannot take retries= or rollback_if=: a with block "
                "cannot be re-run. Decorate a function with @unit_of_work(...) instead."
            )
        self._uow = UnitOfWork(self.using, savepoint=self.savepoint)
        return self._uow.begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        uow, self._uow = self._uow, None
        assert uow is not None
        return uow.__exit__(exc_type, exc, tb)


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
) -> Callable[P, R] | UnitOfWorkDecorator:
    """Run a function (or a ``with`` block) in a ``UnitOfWork``.

    ``retries=N`` re-runs the whole function on ``ConcurrencyError``, serialization
    failures and deadlocks, with jittered exponential backoff (outermost level only).
    ``rollback_if(result)`` rolls back and still returns ``result`` when true.
    """
    decorator = UnitOfWorkDecorator(
        using=using, savepoint=savepoint, retries=retries, rollback_if=rollback_if, backoff=backoff
    )
    if func is not None:
        if isinstance(func, str):
            raise TypeError(
                f"unit_of_work({func!r}): pass the database alias by keyword: "
                f"@unit_of_work(using={func!r})."
            )
        return decorator(func)
    return decorator
