"""Running a handler for a delivered event, with its inbox row.

Every run leaves its outcome in the handler's delivery row (``ProcessedEvent``, see
``django_uow.deliveries``). An idempotent handler (the default) runs inside a unit of
work that first marks ``(event_id, handler)`` succeeded; a redelivered event finds the
row already succeeded and is skipped, so its effect happens once. If the handler raises,
that transaction rolls back and the failure (attempts, error, traceback) is written
after it, outside it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

from django.db import router

from ..events.audit import attributed_to
from ..events.base import Envelope, event_context
from ..exceptions import HandlerTimeout, PredecessorPending
from ..models import ProcessedEvent
from ..retry import backoff_delay, is_retryable, logger_for
from ..tracing import span
from ..uow.unit_of_work import UnitOfWork
from . import ordering
from .async_calls import call_handler
from .handlers import Handler
from .rows import Outcome, record_failure, record_success

logger = logger_for("django_uow.handlers")

#: Backoff (base, cap) in seconds between re-runs of a handler with ``retries=``.
HANDLER_RETRY_BACKOFF = (0.01, 0.5)


class Ran(enum.Enum):
    """How one run of a delivery ended (when it did not raise)."""

    RAN = "ran"
    SKIPPED = "skipped"
    BLOCKED = "blocked"


#: Seconds until a failed delivery is due again, from the error and its attempts so far
#: (this one included); None: due at once.
RetryDelay = Callable[[BaseException, int], float | None]

#: Wakes a blocked delivery taken back for it (publishes it); None runs it in this process.
Wake = Callable[[Handler, Envelope], None]


def run_handler(
    handler: Handler,
    envelope: Envelope,
    *,
    using: str | None = None,
    retry_delay: RetryDelay | None = None,
    report: Callable[[Outcome], None] | None = None,
    wait: bool = False,
    wake: Wake | None = None,
) -> bool:
    """Call ``handler`` for ``envelope``; return False when skipped as already processed.

    Runs inside ``event_context`` so events the handler records point back to this one.
    An idempotent handler runs inside a ``UnitOfWork`` that also marks its delivery
    succeeded: if it raises, neither its effect nor the mark is kept and a redelivery
    runs it again. A handler that raises has the failure recorded (due again after
    ``retry_delay(exc, attempts)`` seconds; ``report`` gets the row's new status and attempts),
    then the exception propagates unchanged.

    An ordered handler whose predecessor has not succeeded yet raises
    ``PredecessorPending`` when ``wait`` (the caller runs it again later; nothing is
    recorded), else its delivery is marked ``blocked`` and False is returned. After an
    ordered delivery succeeds, the next blocked one of its aggregate is woken: passed to
    ``wake``, or run here when ``wake`` is None.
    """
    return (
        run_delivery(
            handler,
            envelope,
            using=using,
            retry_delay=retry_delay,
            report=report,
            wait=wait,
            wake=wake,
        )
        is Ran.RAN
    )


def run_delivery(
    handler: Handler,
    envelope: Envelope,
    *,
    using: str | None = None,
    retry_delay: RetryDelay | None = None,
    report: Callable[[Outcome], None] | None = None,
    wait: bool = False,
    wake: Wake | None = None,
) -> Ran:
    """``run_handler``, telling a skipped delivery from a blocked one."""
    db = using or router.db_for_write(ProcessedEvent)
    outcome = _attempt(handler, envelope, db, retry_delay, report, wait)
    if outcome is not Ran.BLOCKED and ordering.is_ordered(handler, envelope):
        _wake_followers(handler, envelope, db, wake)
    return outcome


def _attempt(
    handler: Handler,
    envelope: Envelope,
    db: str,
    retry_delay: RetryDelay | None,
    report: Callable[[Outcome], None] | None,
    wait: bool,
) -> Ran:
    while True:
        try:
            return Ran.RAN if _run(handler, envelope, db) else Ran.SKIPPED
        except PredecessorPending as pending:
            if wait:
                raise
            ordering.record_blocked(handler, envelope, pending, db)
            # Read again now that the row says blocked: a success committed meanwhile
            # may have looked for blocked deliveries before this one was written.
            if not ordering.predecessor_done(handler, envelope, db):
                return Ran.BLOCKED
            if not ordering.unblock(handler, envelope.event_id, db):
                return Ran.BLOCKED  # woken by that success: it runs there
        except Exception as exc:
            outcome = _record_failure(handler, envelope, exc, db, retry_delay)
            if outcome is not None and report is not None:
                report(outcome)
            raise


def _wake_followers(handler: Handler, envelope: Envelope, db: str, wake: Wake | None) -> None:
    """Wake the next blocked delivery of the aggregate; in-process, the chain behind it."""
    current = envelope
    while True:
        try:
            follower = ordering.claim_next_blocked(handler, current, db)
        except Exception:
            logger.exception("Could not look for blocked deliveries of handler %s", handler.name)
            return
        if follower is None:
            return
        if wake is not None:
            try:
                wake(handler, follower)
            except Exception:
                # The row says published and due now: the deadline sweep publishes it again.
                logger.exception(
                    "Could not publish the blocked delivery of event %s to handler %s",
                    follower.event_id,
                    handler.name,
                )
            return
        try:
            outcome = _attempt(handler, follower, db, None, None, wait=False)
        except Exception:
            logger.exception(
                "Handler %s failed event %s, woken after its predecessor succeeded",
                handler.name,
                follower.event_id,
            )
            return
        if outcome is Ran.BLOCKED:
            return
        current = follower


def _run(handler: Handler, envelope: Envelope, db: str) -> bool:
    event = envelope.to_event()
    kwargs = {"envelope": envelope} if handler.wants_envelope else {}
    context = event_context(
        correlation_id=envelope.correlation_id or str(envelope.event_id),
        causation_id=str(envelope.event_id),
    )
    # Events the handler records are attributed to whoever caused this one.
    attribution = attributed_to(
        actor=envelope.headers.get("actor"), request_id=envelope.headers.get("request_id")
    )
    trace = span(
        f"handle {envelope.event_type}",
        envelope.headers,
        kind="consumer",
        handler=handler.name,
        event_id=str(envelope.event_id),
        aggregate_type=envelope.aggregate_type or None,
        aggregate_id=envelope.aggregate_id or None,
    )
    with context, attribution, trace:
        if (
            not handler.idempotent
            and not handler.retries
            and not handler.ordered
            and handler.policy.timeout is None
        ):
            call_handler(handler.func, event, **kwargs)
            record_success(handler.name, envelope, using=db, only_once=False)
            return True
        attempt = 0
        while True:
            try:
                return _run_in_unit(handler, envelope, event, kwargs, db)
            except BaseException as error:
                if attempt >= handler.retries or not is_retryable(error):
                    raise
                attempt += 1
                delay = backoff_delay(attempt, *HANDLER_RETRY_BACKOFF)
                logger.info(
                    "Re-running handler %s for event %s (%s) of %s %s (run %d of %d) in "
                    "%.3fs after %s: %s",
                    handler.name,
                    envelope.event_id,
                    envelope.event_type,
                    envelope.aggregate_type,
                    envelope.aggregate_id,
                    attempt + 1,
                    handler.retries + 1,
                    delay,
                    type(error).__name__,
                    error,
                )
                time.sleep(delay)


def _run_in_unit(
    handler: Handler, envelope: Envelope, event: Any, kwargs: dict[str, Any], db: str
) -> bool:
    """One run of the handler's unit of work (marking its delivery when idempotent).

    A handler with ``timeout=`` that returns after it raises ``HandlerTimeout`` inside
    its unit, so its effect rolls back and the attempt counts as failed. (The unit's
    database limits are not used: PostgreSQL ends a session idle in its transaction past
    them, and the failure could then not be recorded on that connection.)
    """
    limit = handler.policy.timeout
    started = time.monotonic()
    with UnitOfWork(using=db):
        if handler.idempotent and not record_success(handler.name, envelope, using=db):
            logger.info(
                "Skipped event %s (%s) of %s %s for handler %s: already processed",
                envelope.event_id,
                envelope.event_type,
                envelope.aggregate_type,
                envelope.aggregate_id,
                handler.name,
            )
            return False
        if handler.ordered:
            ordering.check_predecessor(handler, envelope, db)
        call_handler(handler.func, event, **kwargs)
        if limit is not None and (elapsed := time.monotonic() - started) > limit:
            raise HandlerTimeout(handler.name, limit, elapsed)
    if not handler.idempotent:
        record_success(handler.name, envelope, using=db, only_once=False)
    return True


def _record_failure(
    handler: Handler,
    envelope: Envelope,
    exc: BaseException,
    db: str,
    retry_delay: RetryDelay | None,
) -> Outcome | None:
    """Write the failed run; never let a failure to write it hide the handler's error."""
    try:
        return record_failure(
            handler.name,
            envelope,
            exc,
            using=db,
            max_attempts=handler.policy.attempts(),
            dead=handler.policy.gives_up(exc),
            attempts_floor=envelope.attempts,
            retry_in=(lambda attempts: retry_delay(exc, attempts)) if retry_delay else None,
        )
    except Exception:
        logger.exception(
            "Could not record the failure of handler %s for event %s (%s)",
            handler.name,
            envelope.event_id,
            envelope.event_type,
        )
        return None
