"""Retry and error classification: one backoff, "is this a conflict?", "is the broker down?",
and error text that any database can store.

A leaf module: the decorator, the relay and the Celery tasks all classify errors the
same way through it.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Mapping
from typing import Any

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


# --------------------------------------------------------------------------- log lines

#: Characters a terminal or a log reader acts on: C0 controls (newlines and ESC among
#: them), DEL and C1 controls. Logged text comes from stored errors, event types and
#: handler names, which anyone able to record an event may have chosen.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: In a traceback, line breaks and tabs are its layout and stay.
_CONTROL_IN_TRACEBACK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escaped(found: re.Match[str]) -> str:
    return f"\\x{ord(found.group()):02x}"


def escape_control(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with each control character written as ``\\xNN`` (so ESC is ``\\x1b``)."""
    pattern = _CONTROL_IN_TRACEBACK if keep_lines else _CONTROL
    return pattern.sub(_escaped, text)


class EscapeControl(logging.Filter):
    """Formats a record's message once and escapes its control characters (and those of
    its traceback, but its line breaks), so a logged value cannot forge log lines or
    drive the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The template and its arguments are escaped apart, so handlers that read
        # ``record.args`` (log aggregation, counters) still get them.
        if isinstance(record.msg, str):
            record.msg = escape_control(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {k: _escaped_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_escaped_arg(v) for v in record.args)
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = escape_control(text, keep_lines=True)
        return True


def _escaped_arg(value: Any) -> Any:
    """A log argument whose text cannot carry control characters (numbers stay numbers,
    for ``%d``)."""
    if value is None or isinstance(value, int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    escaped = escape_control(text)
    return value if escaped == text and not isinstance(value, str) else escaped


def logger_for(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with ``EscapeControl`` on it (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, EscapeControl) for f in logger.filters):
        logger.addFilter(EscapeControl())
    return logger
