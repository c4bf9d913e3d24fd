"""``InlinePublisher``: run the handlers in the relay's process (tests, demos, no broker)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar
from uuid import UUID

from ..delivery.handlers import handlers_for
from ..delivery.running import run_handler
from ..events.base import Envelope
from ..exceptions import HandlerFailed, PermanentFailure, RetryAfter, UnknownEventType
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
                try:
                    run_handler(handler, envelope)
                except (PermanentFailure, RetryAfter) as exc:
                    outcome.fail(envelope, exc)
                    break
                except Exception as exc:
                    outcome.fail(envelope, HandlerFailed(handler.name, exc))
                    break
        return outcome.result()
