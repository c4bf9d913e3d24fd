"""Keep a batch's lease while it is in flight, so the lease itself can be short.

A relay that dies holding a claim blocks its events (and, with per-aggregate order, the
later events of their aggregates) until its lease runs out. A short ``LEASE`` makes that
seconds, but a batch may take longer than the lease to publish (slow handlers, a slow
broker): a heartbeat thread renews the lease of the claimed rows every ``LEASE / 3``
seconds while the batch is published, fenced by ``claimed_by``. A killed relay's
heartbeat dies with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from django.db import connections

from ..retry import logger_for
from . import claims as statements

logger = logger_for("django_uow.relay")


@contextmanager
def lease_kept(*, using: str, relay_id: str, ids: Sequence[int], lease: float) -> Iterator[None]:
    """Renew the lease of ``ids`` every ``lease / 3`` seconds until the block exits.

    Nothing to do inside a caller's transaction: the claim is not committed, so no other
    relay sees the rows free, and a second connection would wait on their row locks.
    """
    if not ids or lease <= 0 or connections[using].in_atomic_block:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(lease / 3):
                try:
                    statements.renew(using=using, relay_id=relay_id, ids=ids, lease=lease)
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
