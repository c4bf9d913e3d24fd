"""A handler's own delivery policy: attempts, backoff, time limit, which errors to retry.

Each ``@event_handler`` option left out falls back to the global setting, read when a
delivery runs (so ``override_settings`` applies): ``max_attempts`` to ``MAX_ATTEMPTS``,
``backoff`` to ``BACKOFF``. ``timeout`` has no global default: a handler without one runs
as long as it takes. Which errors end a delivery at once:

- ``give_up_on``: these exception classes (and subclasses) dead-letter on the first
  failure, like ``PermanentFailure`` always does;
- ``retry_on``: when given, only these classes are retried; any other error
  dead-letters at once. Left out, every error is retried (up to ``max_attempts``).

``give_up_on`` wins when a class is in both.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..conf import uow_settings
from ..exceptions import PermanentFailure, UnknownEventType

#: Errors that are never worth another attempt, whatever the policy says.
ALWAYS_FINAL: tuple[type[BaseException], ...] = (PermanentFailure, UnknownEventType)


@dataclass(frozen=True)
class Policy:
    """What ``@event_handler(max_attempts=, backoff=, timeout=, retry_on=, give_up_on=)`` set."""

    max_attempts: int | None = None
    backoff: tuple[float, float] | None = None
    timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    give_up_on: tuple[type[BaseException], ...] = ()

    def attempts(self) -> int:
        """Attempts before a delivery is a dead letter: the handler's, else ``MAX_ATTEMPTS``."""
        return self.max_attempts if self.max_attempts is not None else uow_settings.MAX_ATTEMPTS

    def backoff_bounds(self) -> tuple[float, float]:
        """(base, cap) seconds between attempts: the handler's, else ``BACKOFF``."""
        if self.backoff is not None:
            return self.backoff
        base, cap = uow_settings.BACKOFF
        return float(base), float(cap)

    def gives_up(self, error: BaseException) -> bool:
        """True when ``error`` ends the delivery at once (a dead letter, no retry)."""
        if isinstance(error, ALWAYS_FINAL + self.give_up_on):
            return True
        return bool(self.retry_on) and not isinstance(error, self.retry_on)

    def describe(self) -> dict[str, Any]:
        """The effective policy as JSON-ready values (``outbox_status``, the admin)."""
        base, cap = self.backoff_bounds()
        return {
            "max_attempts": self.attempts(),
            "backoff": [base, cap],
            "timeout": self.timeout,
            "retry_on": [_label(c) for c in self.retry_on],
            "give_up_on": [_label(c) for c in self.give_up_on],
            "own": sorted(self.own_options()),
        }

    def own_options(self) -> set[str]:
        """The options this handler sets itself (the others follow the settings)."""
        own = set()
        if self.max_attempts is not None:
            own.add("max_attempts")
        if self.backoff is not None:
            own.add("backoff")
        if self.timeout is not None:
            own.add("timeout")
        if self.retry_on:
            own.add("retry_on")
        if self.give_up_on:
            own.add("give_up_on")
        return own


#: The policy of a handler that sets none of its own: the settings throughout.
DEFAULT = Policy()


def build(
    *,
    max_attempts: Any = None,
    backoff: Any = None,
    timeout: Any = None,
    retry_on: Any = (),
    give_up_on: Any = (),
) -> Policy:
    """Check the options of ``@event_handler`` and return them as a ``Policy``.

    Raises ``TypeError`` or ``ValueError`` naming the option and what it takes.
    """
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ValueError(
            f"@event_handler(max_attempts={max_attempts!r}): max_attempts is a whole number "
            "of 1 or more (1: no retry), or None to follow the MAX_ATTEMPTS setting."
        )
    return Policy(
        max_attempts=max_attempts,
        backoff=_backoff(backoff),
        timeout=_timeout(timeout),
        retry_on=_exception_classes("retry_on", retry_on),
        give_up_on=_exception_classes("give_up_on", give_up_on),
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _backoff(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and 0 < value[0] <= value[1]
    ):
        return float(value[0]), float(value[1])
    raise ValueError(
        f"@event_handler(backoff={value!r}): backoff is (base, max) seconds with "
        "0 < base <= max, e.g. backoff=(1.0, 60.0), or None to follow the BACKOFF setting."
    )


def _timeout(value: Any) -> float | None:
    if value is None:
        return None
    if _is_number(value) and value > 0:
        return float(value)
    raise ValueError(
        f"@event_handler(timeout={value!r}): timeout is seconds > 0 (a number), e.g. "
        "timeout=5.0, or None for no time limit."
    )


def _exception_classes(option: str, value: Any) -> tuple[type[BaseException], ...]:
    items: Iterable[Any]
    if isinstance(value, type):
        items = (value,)
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        raise TypeError(
            f"@event_handler({option}={value!r}): {option} takes an exception class or a "
            f"list of them, e.g. {option}=[TimeoutError, ConnectionError]."
        )
    classes = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(
                f"@event_handler({option}=...): {item!r} is not an exception class; "
                f"{option} takes exception classes such as TimeoutError (not instances)."
            )
        classes.append(item)
    return tuple(dict.fromkeys(classes))


def _label(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
