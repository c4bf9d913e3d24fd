"""Signals for observability; every one is sent with keyword arguments only."""

from django.dispatch import Signal

#: Events written to the outbox, inside the transaction. kwargs: uow, events, using.
events_staged = Signal()
#: An event was published. kwargs: envelope.
event_dispatched = Signal()
#: A publish attempt failed. kwargs: envelope, error, dead (True when dead-lettered).
event_failed = Signal()
#: A unit of work committed (sent after the real COMMIT). kwargs: uow, events.
uow_committed = Signal()
#: A unit of work or savepoint rolled back. kwargs: uow.
uow_rolled_back = Signal()
#: A relay batch finished (published and settled). kwargs: using, relay_id, result, duration.
relay_batch_finished = Signal()
