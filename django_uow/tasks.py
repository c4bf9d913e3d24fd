"""Celery tasks (celery is an optional extra: this module imports without it).

- ``django_uow.tasks.relay_outbox``: the sweep for Celery beat; with ``event_ids`` it is
  also the on-commit fast path (``relay.fastpath.enqueue_relay`` sends it by name).
- ``django_uow.tasks.prune_outbox``: retention, for beat.
- ``django_uow.tasks.handle_event``: runs one handler for one event (sent by
  ``CeleryPublisher``); ``acks_late`` so a worker dying mid-handler gets it redelivered.

Beat schedule::

    CELERY_BEAT_SCHEDULE = {
        "django-uow-relay": {"task": "django_uow.tasks.relay_outbox", "schedule": 5.0},
        "django-uow-prune": {"task": "django_uow.tasks.prune_outbox", "schedule": 3600.0},
    }
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

from . import signals
from .conf import uow_settings
from .delivery.connections import prepare_handler_task
from .delivery.handlers import Handler
from .delivery.handlers import registry as handler_registry
from .delivery.rows import Outcome, mark_waiting
from .delivery.running import run_handler
from .events.base import Envelope
from .exceptions import PermanentFailure, PredecessorPending, RelayError, RetryAfter
from .models import OutboxEvent
from .publishers import CeleryPublisher, handler_task_id
from .publishers.celery_messages import HANDLE_BATCH_TASK, HANDLE_TASK
from .relay import prune, relay_events, relay_pending, republish_overdue, wake_blocked
from .retry import backoff_delay, logger_for

#: The handler tasks, which keep their worker's database connection between them
#: (``delivery.connections``).
HANDLER_TASKS = frozenset({HANDLE_TASK, HANDLE_BATCH_TASK})

logger = logger_for("django_uow.tasks")

try:
    from celery import shared_task
except ImportError:  # pragma: no cover - celery is an optional extra
    shared_task = None  # type: ignore[assignment]


def run_relay(
    event_ids: Sequence[str] | None = None,
    using: str = "default",
    limit: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Body of the relay task: relay ``event_ids``, or sweep what is due. Returns counts."""
    try:
        if event_ids:
            batch = relay_events([UUID(str(e)) for e in event_ids], using=using)
            return {
                "status": "ok",
                "relayed": batch.dispatched,
                "failed": batch.failed,
                "retried": batch.retried,
            }
        summary = relay_pending(using=using, limit=limit, batch_size=batch_size)
        republished = republish_overdue(using=using)
        woken = wake_blocked(using=using)
    except RelayError as exc:
        # The broker or database is down: the sweep tries again at its next run.
        logger.warning("Relay paused: %s", exc)
        return {"status": "paused", "error": str(exc)}
    return {
        "status": "ok",
        "relayed": summary.relayed,
        "failed": summary.failed,
        "retried": summary.retried,
        "left": summary.left,
        "republished": republished,
        "woken": woken,
    }


def run_prune(using: str = "default") -> dict[str, int]:
    """Body of the prune task: the outbox past RETENTION, the inbox past INBOX_RETENTION."""
    pruned = prune(using=using)
    return {"events": pruned.events, "inbox": pruned.inbox}


#: Re-queue delays (s) of an ordered handler's delivery waiting for its predecessor:
#: the first, and the cap it doubles up to.
ORDERED_POLL = (0.05, 0.5)


def ordered_poll_delay(waited: int) -> float:
    """How long a waiting delivery stays out of the queue before its next look."""
    first, cap = ORDERED_POLL
    return float(min(cap, first * 2 ** min(waited, 16)))


def ordered_polls(wait: timedelta) -> int:
    """How many re-queues add up to ``wait`` (``ORDERED_WAIT``); then the delivery blocks.

    Counted, not timed: the re-queues of one delivery run on workers whose clocks may
    disagree, so no start time is carried from one to the next.
    """
    budget = wait.total_seconds()
    polls, spent = 0, 0.0
    while spent < budget and ordered_poll_delay(polls) < ORDERED_POLL[1]:
        spent += ordered_poll_delay(polls)
        polls += 1
    if spent < budget:
        polls += math.ceil((budget - spent) / ORDERED_POLL[1])
    return polls


def celery_retry_limit(max_attempts: int, polls: int) -> int:
    """The ``max_retries`` every re-queue of a handler task states: beyond our own rules.

    Each of ``max_attempts`` attempts may first wait ``polls`` re-queues for its
    predecessor, and every attempt but the last is followed by one retry; django-uow's
    own rules (the delivery row's attempts, ``ORDERED_WAIT``) stop the task before
    Celery's counter gets there. Passing ``max_retries=None`` would mean Celery's
    default of 3 instead.
    """
    return max_attempts * (polls + 1)


def run_handler_task(
    task: Any,
    message: dict[str, Any],
    handler_name: str,
    waiting_since: float | None = None,
    waits: int = 0,
    waited: int = 0,
) -> bool:
    """Body of the handler task: rebuild the envelope, run the handler, retry on failure.

    The delivery row counts the attempts (a copy republished after ``HANDLER_DEADLINE``
    counts too): after the handler's ``max_attempts`` (default ``MAX_ATTEMPTS``) the row
    is ``failed`` and the task stops retrying; an error its policy gives up on
    (``give_up_on``, or not in ``retry_on``) is ``failed`` at once. The backoff
    (``backoff``, default ``BACKOFF``) grows with those attempts.

    An ordered handler's delivery whose predecessor has not succeeded is re-queued with
    a short countdown (no attempt is spent; ``waits`` counts every re-queue of the task,
    ``waited`` those since its last attempt) until ``ordered_polls(ORDERED_WAIT)``
    re-queues; then its row becomes ``blocked`` and the predecessor's success, or the
    sweep, publishes it again. ``waiting_since`` is accepted from messages sent by
    earlier releases and not used.
    """
    envelope = Envelope.from_message(message)
    handler = handler_registry.get(handler_name)
    polls = ordered_polls(uow_settings.ORDERED_WAIT)
    limit = celery_retry_limit(handler.policy.attempts(), polls)
    delays: list[float] = []
    outcomes: list[Outcome] = []

    def retry_delay(exc: BaseException, attempts: int) -> float:
        if isinstance(exc, RetryAfter):
            delay = exc.seconds
        else:
            delay = backoff_delay(attempts, *handler.policy.backoff_bounds())
        delays.append(delay)
        return delay

    def wake(follower_handler: Handler, follower: Envelope) -> None:
        CeleryPublisher(task.app).send_deliveries([(follower, follower_handler)], record=False)

    def requeue(countdown: float, exc: Exception | None, **kwargs: Any) -> Exception:
        return task.retry(  # type: ignore[no-any-return]
            args=(message, handler_name),
            kwargs=kwargs,
            exc=exc,
            countdown=countdown,
            max_retries=limit,
        )

    try:
        return run_handler(
            handler,
            envelope,
            retry_delay=retry_delay,
            report=outcomes.append,
            wait=waited < polls and _retries(task) < limit,
            wake=wake,
        )
    except PredecessorPending as pending:
        logger.debug("%s; re-queued (wait %d of %d)", pending, waited + 1, polls)
        if not waited:
            mark_waiting(handler_name, envelope)
        raise requeue(
            ordered_poll_delay(waited), None, waits=waits + 1, waited=waited + 1
        ) from None
    except PermanentFailure as exc:
        report_failure(handler_name, envelope, exc, dead=True)
        return False
    except Exception as exc:
        if outcomes:
            dead, attempts = outcomes[0].dead, outcomes[0].attempts
        else:  # the failure could not be recorded: count Celery's retries instead
            attempts = _retries(task) - waits + 1
            dead = attempts >= handler.policy.attempts() or handler.policy.gives_up(exc)
        report_failure(handler_name, envelope, exc, dead=dead, attempts=attempts)
        if dead:
            raise
        countdown = delays[0] if delays else retry_delay(exc, attempts)
        # A new wait starts afresh after an attempt.
        raise requeue(countdown, exc, waits=waits, waited=0) from exc


def _retries(task: Any) -> int:
    return int(getattr(task.request, "retries", 0) or 0)


def report_failure(
    handler_name: str, envelope: Envelope, exc: Exception, *, dead: bool, attempts: int = 0
) -> None:
    """Signal a failed delivery; log it when it is final (a permanent failure, or the last
    attempt)."""
    signals.event_failed.send(sender=OutboxEvent, envelope=envelope, error=exc, dead=dead)
    if not dead:
        return
    if isinstance(exc, PermanentFailure):
        verb, end = "gave up on", ""
    else:
        verb, end = "failed", f" for good after {attempts} attempt(s)"
    logger.error(
        "Handler %s %s event %s (%s) of %s %s%s: %s",
        handler_name,
        verb,
        envelope.event_id,
        envelope.event_type,
        envelope.aggregate_type,
        envelope.aggregate_id,
        end,
        exc,
    )


def run_handler_batch(task: Any, messages: Sequence[dict[str, Any]], handler_name: str) -> int:
    """Body of the batch handler task: run the handler for each event in turn.

    Each delivery is what ``handle_event`` would have run: its own unit of work and
    inbox row. One that must run again (a failure to retry, an ordered handler's
    predecessor not done yet) continues as a ``handle_event`` task of its own, sent with
    the countdown a retry would have had, so the rest of the batch is not held up.
    Returns the number of deliveries that ran.
    """
    ran = 0
    for message in messages:
        try:
            ran += _run_one_of_batch(task, message, handler_name)
        except Exception:
            # A message that cannot even be read, or a handler name unknown here: logged
            # like a failing task would be; its row is owed and the deadline sweep sends
            # it again.
            logger.exception(
                "Handler %s could not run a delivery of a batch (event %s)",
                handler_name,
                message.get("event_id") if isinstance(message, dict) else None,
            )
    return ran


def _run_one_of_batch(task: Any, message: dict[str, Any], handler_name: str) -> bool:
    envelope = Envelope.from_message(message)
    handler = handler_registry.get(handler_name)
    outcomes: list[Outcome] = []
    delays: list[float] = []

    def retry_delay(exc: BaseException, attempts: int) -> float:
        if isinstance(exc, RetryAfter):
            delay = exc.seconds
        else:
            delay = backoff_delay(attempts, *handler.policy.backoff_bounds())
        delays.append(delay)
        return delay

    def wake(follower_handler: Handler, follower: Envelope) -> None:
        CeleryPublisher(task.app).send_deliveries([(follower, follower_handler)], record=False)

    def again(countdown: float, **kwargs: Any) -> None:
        # Where the batch came from: the handler's queue, or CELERY_QUEUE.
        queue = handler.queue or uow_settings.CELERY_QUEUE
        task.app.send_task(
            HANDLE_TASK,
            args=(message, handler_name),
            kwargs=kwargs,
            countdown=countdown,
            task_id=handler_task_id(envelope.event_id, handler_name),
            ignore_result=True,
            soft_time_limit=handler.policy.timeout,
            **({"queue": queue} if queue else {}),
        )

    try:
        return run_handler(
            handler, envelope, retry_delay=retry_delay, report=outcomes.append, wait=True, wake=wake
        )
    except PredecessorPending:
        mark_waiting(handler_name, envelope)
        again(ordered_poll_delay(0), waits=1, waited=1)
        return False
    except PermanentFailure as exc:
        report_failure(handler_name, envelope, exc, dead=True)
        return False
    except Exception as exc:
        dead = outcomes[0].dead if outcomes else handler.policy.gives_up(exc)
        attempts = outcomes[0].attempts if outcomes else 1
        report_failure(handler_name, envelope, exc, dead=dead, attempts=attempts)
        if dead:
            return False
        logger.warning(
            "Handler %s failed event %s (a batch delivery); retried on its own: %s",
            handler_name,
            envelope.event_id,
            exc,
        )
        again(delays[0] if delays else retry_delay(exc, attempts), waits=0, waited=0)
        return False


if shared_task is not None:

    @shared_task(name="django_uow.tasks.relay_outbox", ignore_result=True)
    def relay_outbox(
        event_ids: Sequence[str] | None = None,
        using: str = "default",
        limit: int | None = None,
        batch_size: int | None = None,
    ) -> dict[str, Any]:
        """Relay due outbox events (beat), or exactly ``event_ids`` (fast path)."""
        return run_relay(event_ids, using=using, limit=limit, batch_size=batch_size)

    @shared_task(name="django_uow.tasks.prune_outbox", ignore_result=True)
    def prune_outbox(using: str = "default") -> dict[str, int]:
        """Prune the outbox (``RETENTION``) and the inbox (``INBOX_RETENTION``)."""
        return run_prune(using)

    @shared_task(
        name="django_uow.tasks.handle_event",
        bind=True,
        # Every re-queue states its own limit (celery_retry_limit); this is only the default.
        max_retries=None,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def handle_event(
        self: Any,
        message: dict[str, Any],
        handler_name: str,
        waiting_since: float | None = None,
        waits: int = 0,
        waited: int = 0,
    ) -> bool:
        """Run one handler for one event (idempotent handlers skip redeliveries)."""
        prepare_handler_task(self, HANDLER_TASKS)
        return run_handler_task(self, message, handler_name, waiting_since, waits, waited)

    @shared_task(
        name="django_uow.tasks.handle_events",
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
    )
    def handle_events(self: Any, messages: list[dict[str, Any]], handler_name: str) -> int:
        """Run one handler for several events in turn (``HANDLER_BATCH`` > 1)."""
        prepare_handler_task(self, HANDLER_TASKS)
        return run_handler_batch(self, messages, handler_name)
