"""Handlers over several event types, and handlers with a delivery policy of their own.

Imported by ``tests.testapp.handlers``, so a worker process knows them too.
"""

from __future__ import annotations

import random
import time

from django_uow import Envelope
from django_uow.delivery.handlers import event_handler

from .models import Effect
from .show_events import HookFired, SeatsReleased, SeatsReserved, ShowEvent, ShowSoldOut

#: The longest random pause of the show projection (a real worker's threads then race).
PROJECTION_JITTER: list[float] = [0.02]


@event_handler(SeatsReserved, SeatsReleased, ShowSoldOut, ordered=True, name="shows.projection")
def project_show(event: ShowEvent, envelope: Envelope) -> None:
    time.sleep(random.uniform(0, PROJECTION_JITTER[0]))
    Effect.objects.create(
        event_id=envelope.event_id, handler="shows.projection", aggregate_id=envelope.aggregate_id
    )


@event_handler(ShowEvent, name="shows.audit")
def audit_show(event: ShowEvent, envelope: Envelope) -> None:
    Effect.objects.create(
        event_id=envelope.event_id, handler="shows.audit", aggregate_id=envelope.aggregate_id
    )


def _done(handler: str, envelope: Envelope) -> None:
    Effect.objects.create(event_id=envelope.event_id, handler=handler)


@event_handler(HookFired, name="hooks.three_tries", max_attempts=3, backoff=(0.01, 0.05))
def three_tries(event: HookFired, envelope: Envelope) -> None:
    if event.hook == "flaky":
        raise ValueError(f"webhook {event.hook} answered 503")
    _done("hooks.three_tries", envelope)


@event_handler(HookFired, name="hooks.default_policy")
def default_policy(event: HookFired, envelope: Envelope) -> None:
    if event.hook == "flaky":
        raise ValueError(f"webhook {event.hook} answered 503")
    _done("hooks.default_policy", envelope)


@event_handler(HookFired, name="hooks.gives_up", give_up_on=[LookupError], backoff=(0.01, 0.05))
def gives_up(event: HookFired, envelope: Envelope) -> None:
    if event.hook == "missing":
        raise KeyError(f"no subscriber for {event.hook}")
    _done("hooks.gives_up", envelope)


@event_handler(
    HookFired,
    name="hooks.retries_timeouts",
    retry_on=TimeoutError,
    max_attempts=3,
    backoff=(0.01, 0.05),
)
def retries_timeouts(event: HookFired, envelope: Envelope) -> None:
    if event.hook == "slow-upstream":
        raise TimeoutError(f"webhook {event.hook} timed out")
    if event.hook == "bad-request":
        raise ValueError(f"webhook {event.hook} answered 400")
    _done("hooks.retries_timeouts", envelope)


@event_handler(HookFired, name="hooks.deadline", timeout=1.0, max_attempts=2, backoff=(0.01, 0.05))
def deadline(event: HookFired, envelope: Envelope) -> None:
    if event.hook == "hang":
        time.sleep(30)  # a webhook that never answers
    _done("hooks.deadline", envelope)
