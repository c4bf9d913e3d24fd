"""``InlinePublisher``: run the handlers in the relay's process (tests, demos, no broker)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar
from uuid import UUID

from ..delivery.handlers import Handler, handlers_for
from ..delivery.rows import Outcome
from ..delivery.running import run_handler
from ..events.base import Envelope
from ..exceptions import HandlerFailed, PermanentFailure, RetryAfter, UnknownEventType
from ..retry import backoff_delay
from .base import OrderedFailures


class InlinePublisher:
    """Call the handlers in the relay process (tests, demos, no broker).

    A handler that raises fails its event; the relay retries it with backoff. Its
    exception reaches the relay wrapped in ``HandlerFailed`` (``PermanentFailure`` and
    ``RetryAfter`` as they are), so a handler's ``ConnectionError`` is never taken for a
    broker outage.
    """

    #: Every event it is given reaches handlers (system check W100 relies on it).
    runs_handlers: ClassVar[bool] = True
    #: Runs the handlers here: an outage of another publisher of the batch does not stop
    #: it (each handler's inbox row makes the batch's retry skip what already ran).
    in_process: ClassVar[bool] = True

    def publish(self, envelopes: Sequence[Envelope]) -> Mapping[UUID, Exception] | None:
        outcome = OrderedFailures()
        for envelope in envelopes:
            if outcome.blocked(envelope):
                continue
            try:
                envelope.event_class()
            except UnknownEventType as exc:
                outcome.fail(envelope, exc)
                continue
            for handler in handlers_for(envelope.event_type):
                failure = _run(handler, envelope)
                if failure is not None:
                    outcome.fail(envelope, failure)
                    break
        return outcome.result()


def _run(handler: Handler, envelope: Envelope) -> Exception | None:
    """Run one handler; the error for the relay when it failed, or None.

    A handler with a policy of its own (``max_attempts``, ``backoff``, ``retry_on``,
    ``give_up_on``) decides whether the event is a dead letter and when it is due again;
    the others leave it to the relay's ``MAX_ATTEMPTS`` and ``BACKOFF``.
    """
    outcomes: list[Outcome] = []
    delays: list[float] = []
    policy = handler.policy

    def retry_delay(exc: BaseException, attempts: int) -> float | None:
        if isinstance(exc, RetryAfter):
            return exc.seconds
        delays.append(backoff_delay(attempts, *policy.backoff_bounds()))
        return delays[-1]

    # Without a policy of its own the event's row keeps the retry rhythm (MAX_ATTEMPTS,
    # BACKOFF), and its delivery row none: "Retry now" on the event runs it again at once.
    own = bool(policy.own_options() - {"timeout"})
    try:
        run_handler(
            handler,
            envelope,
            retry_delay=retry_delay if own else None,
            report=outcomes.append,
        )
    except (PermanentFailure, RetryAfter) as exc:
        return exc
    except Exception as exc:
        if not own:
            return HandlerFailed(handler.name, exc)
        dead = outcomes[0].dead if outcomes else policy.gives_up(exc)
        return HandlerFailed(
            handler.name, exc, final=dead, retry_in=None if dead or not delays else delays[0]
        )
    return None
