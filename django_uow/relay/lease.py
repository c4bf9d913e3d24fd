"""Keep a batch's lease while it is in flight, and stop publishing the moment it is lost.

A relay that dies holding a claim blocks its events (and, with per-aggregate order, the
later events of their aggregates) until its lease runs out. A short ``LEASE`` makes that
seconds, but a batch may take longer than the lease to publish (slow handlers, a slow
broker): a heartbeat thread renews the lease of the claimed rows every ``LEASE / 3``
seconds while the batch is published, fenced by ``claimed_by``. A killed relay's
heartbeat dies with it.

A relay that was *paused* (SIGSTOP, a frozen VM) past its lease may find, when it
resumes, that another relay took its events over and already published later versions.
Publishing its old batch then would put stale copies after newer ones. So the relay
confirms the lease is still its own immediately before each publisher gets the batch
(``LeaseGuard.confirm``), and the heartbeat marks it lost as soon as a renewal finds a
row that is no longer this relay's; the batch then stops. A heartbeat also stops
renewing a batch stuck past a bound, so that a publish that never returns does not hold
its events forever.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import DatabaseError, connections

from ..retry import logger_for
from . import claims as statements

logger = logger_for("django_uow.relay")


class LeaseLost(Exception):
    """This relay no longer owns the batch it claimed: another relay took it over (it
    was paused past ``LEASE``), or the database ended its direct-mode transaction."""


@dataclass
class LeaseGuard:
    """What this relay knows of its claim on ``ids``: when it last held it for certain.

    ``held_at`` is a ``time.monotonic()`` reading taken *before* the statement that last
    set the lease (the claim, or a renewal): the lease runs at least ``lease`` seconds
    from then on the database's clock, so within ``lease / 2`` of it (room for clocks
    that tick at slightly different rates) no statement is needed to know it is held.
    ``direct`` batches hold row locks in an open transaction instead of a lease: the
    check is that the transaction is still alive.
    """

    using: str
    relay_id: str
    ids: Sequence[int]
    lease: float
    held_at: float
    direct: bool = False
    lost: threading.Event = field(default_factory=threading.Event)

    def fresh(self) -> bool:
        return time.monotonic() - self.held_at < self.lease / 2

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost`` set) when a row is no longer ours."""
        before = time.monotonic()
        renewed = statements.renew(
            using=self.using, relay_id=self.relay_id, ids=self.ids, lease=self.lease
        )
        if renewed < len(self.ids):
            self.lost.set()
            return False
        self.held_at = max(self.held_at, before)
        return True

    def confirm(self) -> None:
        """Raise ``LeaseLost`` unless this relay still holds the whole batch."""
        if self.lost.is_set():
            raise LeaseLost(f"Relay {self.relay_id} lost the lease of its batch")
        if not self.ids or self.lease <= 0 or self.fresh():
            return
        if self.direct:
            try:
                with connections[self.using].cursor() as cursor:
                    cursor.execute("SELECT 1")
            except DatabaseError as exc:
                self.lost.set()
                raise LeaseLost(
                    f"The database ended relay {self.relay_id}'s transaction ({exc})"
                ) from exc
            self.held_at = time.monotonic()
            return
        if connections[self.using].in_atomic_block:
            return  # a caller's transaction: nothing is committed, nobody else sees the rows
        if not self.renew():
            raise LeaseLost(
                f"Relay {self.relay_id} no longer holds {len(self.ids)} event(s) it claimed"
            )


@contextmanager
def lease_kept(guard: LeaseGuard, *, bound: float | None = None) -> Iterator[None]:
    """Renew ``guard``'s lease every ``lease / 3`` seconds until the block exits.

    A renewal that finds a row gone marks the lease lost and stops. With ``bound``, the
    heartbeat renews for no longer than that many seconds, then lets the lease lapse
    (logged once): another relay takes the batch.

    Nothing to do inside a caller's transaction: the claim is not committed, so no other
    relay sees the rows free, and a second connection would wait on their row locks.
    """
    using, relay_id, lease = guard.using, guard.relay_id, guard.lease
    if not guard.ids or lease <= 0 or connections[using].in_atomic_block:
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        try:
            while not stop.wait(lease / 3):
                if bound is not None and time.monotonic() - started > bound:
                    logger.warning(
                        "Relay %s: a batch of %d event(s) has been in flight for more than "
                        "%.0fs; its lease is no longer renewed, so another relay takes it.",
                        relay_id,
                        len(guard.ids),
                        bound,
                    )
                    return
                try:
                    if not guard.renew():
                        logger.warning(
                            "Relay %s lost the lease of a batch of %d event(s) in flight "
                            "(it was paused past LEASE); it publishes nothing more of it.",
                            relay_id,
                            len(guard.ids),
                        )
                        return
                except Exception as exc:  # the next beat tries again; the lease may lapse
                    logger.warning("Relay %s could not renew its lease: %s", relay_id, exc)
        finally:
            connections[using].close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"uow-lease-{relay_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
