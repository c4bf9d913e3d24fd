"""The chaos trial's handlers; each effect is an ``Effect`` row the ledger counts."""

from __future__ import annotations

import time

from django_uow import Envelope, event_handler

from .events import Flaky, Sequenced, Ticked
from .models import Effect
from .runs import count_run

TICK = "chaos.tick"
SEQUENCE = "chaos.sequence"
FLAKY = "chaos.flaky"
#: Each event type and the handlers whose effects the ledger expects for it.
EXPECTED = {
    Ticked.event_type: (TICK,),
    Sequenced.event_type: (SEQUENCE,),
    Flaky.event_type: (FLAKY,),
}


class FlakeOnPurpose(Exception):
    """The flaky handler's failure: it has not run ``fail_times`` times yet."""


def _effect(envelope: Envelope, handler: str) -> None:
    Effect.objects.create(
        event_id=envelope.event_id,
        handler=handler,
        aggregate_id=envelope.aggregate_id,
        aggregate_version=envelope.aggregate_version,
    )


@event_handler(Ticked, name=TICK)
def tick(event: Ticked, envelope: Envelope) -> None:
    if event.work_ms:
        time.sleep(event.work_ms / 1000)
    _effect(envelope, TICK)


@event_handler(Sequenced, name=SEQUENCE, ordered=True)
def sequence(event: Sequenced, envelope: Envelope) -> None:
    _effect(envelope, SEQUENCE)


@event_handler(Flaky, name=FLAKY)
def flaky(event: Flaky, envelope: Envelope) -> None:
    run = count_run(envelope.event_id)
    if run <= event.fail_times:
        raise FlakeOnPurpose(
            f"account {event.account_id}: run {run} of event {envelope.event_id} fails on "
            f"purpose ({event.fail_times} failing runs before it succeeds)"
        )
    _effect(envelope, FLAKY)
