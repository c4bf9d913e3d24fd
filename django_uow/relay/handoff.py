"""Hand a slow publish to a helper thread, so that the commit path keeps its budget.

The fast path waits for the broker no longer than ``FAST_PATH_TIMEOUT``. A broker that
stalls longer (a pause, a slow disk) may still take the message it was sent: giving the
events back at once would have the sweep publish them a second time. So the publish runs
on a helper thread of the committing thread (kept between commits, with its broker
connections); the committing thread waits for it up to the budget, and when the publish
is late it returns, and the helper finishes the batch when the broker answers (or its
reply timeout passes): acknowledge, or give back, with a database connection of its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ..retry import logger_for

logger = logger_for("django_uow.fastpath")

Late = Callable[[Any, BaseException | None], None]


class PublishOverBudget(TimeoutError):
    """The broker did not answer within the fast path's budget; the batch finishes on its
    helper thread (a broker failure for the circuit breaker)."""


class _Helper(threading.Thread):
    """One thread that runs jobs in turn; it ends after a job it was told is its last."""

    def __init__(self) -> None:
        super().__init__(name="uow-fast-path-publish", daemon=True)
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            job()


_local = threading.local()


def _helper() -> _Helper:
    helper: _Helper | None = getattr(_local, "helper", None)
    if helper is None or not helper.is_alive():
        helper = _local.helper = _Helper()
    return helper


class Handoff:
    """``work()`` on this thread's helper; ``wait`` for it, or leave it to ``late``."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self._work = work
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._late: Late | None = None
        self._value: Any = None
        self._error: BaseException | None = None
        self._helper = _helper()
        self._helper.jobs.put(self._run)

    def _run(self) -> None:
        try:
            value, error = self._work(), None
        except BaseException as exc:  # handed to whoever settles the batch
            value, error = None, exc
        with self._lock:
            self._value, self._error = value, error
            self._done.set()
            late = self._late
        if late is not None:
            try:
                late(value, error)
            except Exception:
                logger.exception("A fast-path batch finished late and could not be settled")

    def wait(self, budget: float, late: Late) -> tuple[Any, BaseException | None] | None:
        """The work's (value, error) if it ends within ``budget`` seconds; otherwise None,
        and ``late(value, error)`` runs on the helper when it ends."""
        if not self._done.wait(budget):
            with self._lock:
                if not self._done.is_set():
                    self._late = late
                    # The helper is busy for a while: this thread gets a new one, and the
                    # busy one ends after this job.
                    _local.helper = None
                    self._helper.jobs.put(None)
                    return None
        return self._value, self._error
