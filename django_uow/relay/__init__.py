"""The relay: deliver committed outbox events to the publishers, at least once, in order.

- ``statements``: the claim, acknowledgement and failure statements (leases, ordering);
- ``batch``: one batch (triage, publish, settle, report), the one result type, and the
  follow-up that delivers what waited behind acknowledged events;
- ``heartbeat``: renewing the lease of a batch in flight;
- ``loop``: the drain every sweep uses, and the looping relay with LISTEN;
- ``fastpath``: the on-commit receiver, its broker work bounded by a time budget;
- ``breaker``: the fast path's circuit breaker (skip the broker for a cool-down);
- ``retention``: pruning dispatched events and succeeded handler deliveries;
- ``redelivery``: the handler deadline sweep, waking blocked deliveries, and
  ``redeliver`` for operators.
"""

from __future__ import annotations

from ..exceptions import BlockedByEarlierFailure
from .batch import (
    RelayResult,
    connection_alias_ok,
    count_pending,
    default_relay_id,
    relay_batch,
    relay_events,
)
from .loop import RelayLoop, relay_pending
from .redelivery import Redelivery, redeliver, republish_overdue, wake_blocked
from .retention import Pruned, prune, prune_inbox, prune_outbox

__all__ = [
    "BlockedByEarlierFailure",
    "Pruned",
    "Redelivery",
    "RelayLoop",
    "RelayResult",
    "connection_alias_ok",
    "count_pending",
    "default_relay_id",
    "prune",
    "prune_inbox",
    "prune_outbox",
    "redeliver",
    "relay_batch",
    "relay_events",
    "relay_pending",
    "republish_overdue",
    "wake_blocked",
]
