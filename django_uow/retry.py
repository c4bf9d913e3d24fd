"""Retry and error classification: one backoff, "is this a conflict?", "is the broker down?",
and error text that any database can store.

A leaf module: the decorator, the relay and the Celery tasks all classify errors the
same way through it.
"""

from __future__ import annotations

import random
import re

from .db.errors import is_conflict
from .exceptions import ConcurrencyError, HandlerFailed, UnitOfWorkTimeout

#: Error text kept per failure; longer text is cut (tracebacks can be huge).
ERROR_TEXT_LIMIT = 4000

#: Broker/transport errors by qualified class name, for libraries we do not import here.
TRANSPORT_ERRORS = frozenset(
    {
        "kombu.exceptions.OperationalError",
        "redis.exceptions.ConnectionError",
        "redis.exceptions.TimeoutError",
        "redis.exceptions.BusyLoadingError",
        "amqp.exceptions.ConnectionError",
        "amqp.exceptions.RecoverableConnectionError",
    }
)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    ``attempt`` counts from 1 (the first retry waits up to ``base``).
    """
    exponent = max(0, min(attempt - 1, 62))
    return random.uniform(0, min(cap, base * (2**exponent)))


def is_retryable(error: BaseException) -> bool:
    """True for version conflicts, serialization failures, deadlocks and SQLite lock errors.

    A unit that ran past its time limit is not a conflict: retrying it would hold the
    same locks as long again (``retry_on=`` opts in).
    """
    if isinstance(error, UnitOfWorkTimeout):
        return False
    return isinstance(error, ConcurrencyError) or is_conflict(error)


def is_connection_error(exc: BaseException) -> bool:
    """True for "the broker is unreachable" errors raised by a publisher's own transport.

    Only call this on errors a publisher raised while talking to its broker: an error
    raised by handler code is a handler failure whatever its class (``HandlerFailed``).
    """
    if isinstance(exc, HandlerFailed):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}
    return bool(names & TRANSPORT_ERRORS)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``text`` with NUL and lone surrogates replaced (U+FFFD), cut to ``limit`` characters.

    Every database stores the result: PostgreSQL refuses NUL in text, and no UTF-8
    encoder accepts a lone surrogate.
    """
    cleaned = _UNSTORABLE.sub("\ufffd", text)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "\u2026"
    return cleaned


def describe(exc: BaseException, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``"ExcType: message"``, storable and capped: what ``last_error`` holds.

    A ``HandlerFailed`` is described by its original, naming the handler.
    """
    if isinstance(exc, HandlerFailed):
        return storable_text(f"{describe(exc.original, limit)} (in handler {exc.handler})", limit)
    try:
        text = str(exc) or repr(exc)
    except Exception:  # a broken __str__ must not hide the failure itself
        text = f"<unprintable {type(exc).__name__}>"
    return storable_text(f"{type(exc).__name__}: {text}", limit)
