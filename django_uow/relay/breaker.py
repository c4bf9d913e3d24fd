"""The fast path's circuit breaker: after a broker failure, commits stop trying for a while.

A broker that is down costs the first commit at most ``FAST_PATH_TIMEOUT``; the breaker
then opens and every commit during ``FAST_PATH_COOLDOWN`` skips the fast path at no cost,
leaving its events to the sweep. When the cool-down is over, one commit tries again (the
others keep skipping while it does): success closes the breaker, failure opens it for
another cool-down. One WARNING when it opens, one INFO when it closes, whatever the number
of commits in between. One breaker per process: the broker is shared by every thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..retry import logger_for

logger = logger_for("django_uow.fastpath")


class CircuitBreaker:
    """Closed (try every commit) or open until a monotonic deadline; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None
        self._opened_at = 0.0
        self._trial = False
        self.skipped = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """May this commit try the broker? False while open; one trial after the cool-down."""
        with self._lock:
            if self._open_until is None:
                return True
            if self._trial or self._clock() < self._open_until:
                self.skipped += 1
                return False
            self._trial = True
            return True

    def succeeded(self) -> None:
        """The broker took the send: close the breaker if it was open."""
        if self._open_until is None:  # the common case: no lock
            return
        with self._lock:
            if self._open_until is None:
                return
            down = self._clock() - self._opened_at
            skipped = self.skipped
            self._open_until = None
            self._trial = False
            self.skipped = 0
        logger.info(
            "Fast path: the broker answers again after %.1fs; the breaker is closed "
            "(%d commit(s) meanwhile left their events to the sweep).",
            down,
            skipped,
        )

    def failed(self, error: BaseException, cooldown: float, events: int = 0) -> None:
        """The broker failed a send of ``events``: open (or keep open) for ``cooldown`` s."""
        with self._lock:
            opening = self._open_until is None
            now = self._clock()
            if opening:
                self._opened_at = now
                self.skipped = 0
            self._open_until = now + cooldown
            self._trial = False
        if opening:
            logger.warning(
                "Fast path: the broker failed (%s: %s) on %d event(s); the sweep will "
                "deliver them. Commits skip the fast path for %.1fs at a time (breaker open).",
                type(error).__name__,
                error,
                events,
                cooldown,
            )
        else:
            logger.debug("Fast path: the broker still fails (%s); breaker stays open", error)

    def inconclusive(self) -> None:
        """A try failed for another reason than the broker: let the next commit try."""
        with self._lock:
            self._trial = False

    def reset(self) -> None:
        """Close without a log line (tests, or a process that knows the broker is back)."""
        with self._lock:
            self._open_until = None
            self._trial = False
            self.skipped = 0


#: The process's breaker, shared by every commit of every thread.
breaker = CircuitBreaker()
