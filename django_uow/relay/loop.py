"""The relay loop behind ``manage.py relay_outbox``, and the drain every sweep uses.

Each round calls ``close_old_connections()`` and drains what is due (batch after batch;
the check runs before each batch too when ``CONN_MAX_AGE`` keeps connections), then waits
``interval`` seconds — or less on PostgreSQL, where a dedicated connection LISTENs on
``django_uow_outbox`` and a commit's ``NOTIFY`` wakes the loop at once. A lost LISTEN
connection (a database restart, a terminated backend) is reopened with backoff; the
loop polls at ``interval`` meanwhile and drains once it is back.
SIGINT/SIGTERM set a flag: the current batch finishes (publish and acknowledgement),
then the loop exits. Database and broker errors are logged and retried next round.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from django.db import DatabaseError, close_old_connections, connections

from ..conf import uow_settings
from ..db.features import features
from ..exceptions import RelayError
from ..publishers import Publisher
from ..retry import logger_for
from .batch import RelayResult, count_pending, default_relay_id, relay_batch
from .fastpath import NOTIFY_CHANNEL
from .redelivery import republish_overdue, wake_blocked
from .retention import prune

logger = logger_for("django_uow.relay")

#: How often a looping relay with ``prune=True`` prunes (seconds).
PRUNE_EVERY = 3600.0
#: Reopening a lost LISTEN connection: the first delay and the cap (seconds), doubling.
LISTEN_BACKOFF = (0.5, 30.0)
#: libpq keepalive settings of the LISTEN connection (the database's own OPTIONS win).
LISTEN_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


class Listener:
    """A dedicated autocommit psycopg connection LISTENing for outbox commits."""

    def __init__(self, using: str) -> None:
        import psycopg

        params = connections[using].get_connection_params()
        kwargs = {
            k: v
            for k, v in params.items()
            if k in {"dbname", "user", "password", "host", "port", "sslmode", "options"}
            or k.startswith(("ssl", "keepalives"))
        }
        # TCP keepalives: a peer that vanished without a word (a failover, a dropped
        # route) fails the idle LISTEN connection within about a minute, so it is reopened.
        for key, value in LISTEN_KEEPALIVES.items():
            kwargs.setdefault(key, value)
        self.conn = psycopg.connect(autocommit=True, connect_timeout=5, **kwargs)
        self.conn.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when a notification arrived."""
        woke = any(True for _ in self.conn.notifies(timeout=timeout, stop_after=1))
        if woke:
            # Drop the ones queued behind it: one wake-up drains them all.
            for _ in self.conn.notifies(timeout=0.01):
                pass
        return woke

    def close(self) -> None:
        self.conn.close()


@dataclass
class RelayLoop:
    """Relay until stopped. ``once=True`` drains what is due and returns."""

    using: str = "default"
    interval: float = 1.0
    batch_size: int | None = None
    limit: int | None = None
    once: bool = False
    prune: bool = False
    listen: bool = True
    on_batch: Callable[[RelayResult, RelayResult], None] | None = None
    publishers: Sequence[Publisher] | None = None
    relay_id: str = field(default_factory=default_relay_id)
    total: RelayResult = field(default_factory=RelayResult)
    stopping: threading.Event = field(default_factory=threading.Event)
    _last_prune: float = float("-inf")
    _listener_conn: Listener | None = None
    _listen_retry_at: float = float("inf")
    _listen_delay: float = 0.0
    pruned: int = 0
    pruned_inbox: int = 0
    republished: int = 0
    woken: int = 0

    def stop(self, *args: Any) -> None:
        self.stopping.set()

    @contextmanager
    def signals_handled(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into "stop after this batch" (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            logger.info(
                "Relay %s: signal %d, stopping after the current batch", self.relay_id, signum
            )
            self.stop()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _close_old_connections(self) -> None:
        # Drops broken or expired connections; never inside a caller's transaction
        # (a test, or a relay started from inside atomic()), which it would break.
        if not connections[self.using].in_atomic_block:
            close_old_connections()

    def _before_batch(self) -> None:
        # With CONN_MAX_AGE = 0 (Django's default) every check closes the connection:
        # reconnecting for every batch would cost more than the batch. A drain then keeps
        # its connection and the check runs once per round; a broken one is still dropped.
        connection = connections[self.using]
        if connection.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            self._close_old_connections()
        elif (
            connection.connection is not None
            and connection.errors_occurred
            and not connection.in_atomic_block
            and not connection.is_usable()
        ):
            connection.close()

    def _remaining(self) -> int | None:
        if self.limit is None:
            return None
        return max(0, self.limit - self.total.relayed - self.total.failed)

    def drain(self, *, count_left: bool) -> RelayResult:
        """Relay what is due, batch after batch, until nothing is due, ``limit`` or a stop.

        ``on_batch(batch, drain_so_far)`` runs after each batch. Raises ``RelayError``
        when the database or the broker is unreachable.
        """
        size = self.batch_size or uow_settings.BATCH_SIZE
        drained = RelayResult()
        while True:
            remaining = self._remaining()
            if remaining is not None:
                remaining -= drained.relayed + drained.failed
                if remaining <= 0:
                    break
            if self.stopping.is_set():
                break
            self._before_batch()
            room = size if remaining is None else min(size, remaining)
            batch = relay_batch(
                using=self.using,
                batch_size=room,
                publishers=self.publishers,
                relay_id=self.relay_id,
            )
            if batch.claimed == 0:
                break
            drained.add(batch)
            if self.on_batch is not None:
                self.on_batch(batch, drained)
            if not batch.progressed:
                break  # everything claimed was handed back: wait for the blocker
        if count_left:  # a looping relay counts once, when it stops, not every round
            drained.left = count_pending(self.using)
        return drained

    def round(self) -> RelayResult:
        """One drain; raises ``RelayError`` when the database or broker is unreachable."""
        self._close_old_connections()
        drained = self.drain(count_left=self.once)
        self.total.add(drained)
        if self.once:
            self.total.left = drained.left
        self.republished += republish_overdue(using=self.using, publishers=self.publishers)
        self.woken += wake_blocked(using=self.using, publishers=self.publishers)
        if self.prune and time.monotonic() - self._last_prune >= (0 if self.once else PRUNE_EVERY):
            pruned = prune(using=self.using)
            self.pruned += pruned.events
            self.pruned_inbox += pruned.inbox
            self._last_prune = time.monotonic()
        return drained

    def run(self) -> RelayResult:
        if self.once:
            self.round()
            return self.total
        self._listener_conn = self._listener()
        try:
            while not self.stopping.is_set():
                try:
                    self.round()
                except (RelayError, DatabaseError) as exc:  # transient: log, retry next round
                    logger.warning(
                        "Relay %s: %s; retrying in %.1fs", self.relay_id, exc, self.interval
                    )
                    self._close_old_connections()
                if self._remaining() == 0:
                    break
                self._wait()
            try:
                self.total.left = count_pending(self.using)
            except DatabaseError as exc:
                logger.warning("Relay %s: could not count pending events: %s", self.relay_id, exc)
        finally:
            if self._listener_conn is not None:
                self._listener_conn.close()
                self._listener_conn = None
        return self.total

    def _listens(self) -> bool:
        return self.listen and features(connections[self.using]).notify

    def _listener(self) -> Listener | None:
        if not self._listens():
            return None
        try:
            return Listener(self.using)
        except Exception as exc:
            logger.warning(
                "LISTEN %s unavailable (%s); polling every %.1fs, reopening it with backoff",
                NOTIFY_CHANNEL,
                exc,
                self.interval,
            )
            self._schedule_reopen(first=True)
            return None

    def _schedule_reopen(self, *, first: bool) -> None:
        """Back off between attempts to reopen LISTEN: ``LISTEN_BACKOFF`` doubling to a cap."""
        start, cap = LISTEN_BACKOFF
        self._listen_delay = start if first else min(cap, self._listen_delay * 2)
        self._listen_retry_at = time.monotonic() + self._listen_delay

    def _reopen(self) -> bool:
        """Try to reopen a lost LISTEN connection; True when it is open again."""
        try:
            self._listener_conn = Listener(self.using)
        except Exception as exc:
            logger.debug("Reopening LISTEN %s failed (%s)", NOTIFY_CHANNEL, exc)
            self._schedule_reopen(first=False)
            return False
        logger.info("LISTEN %s reopened; waking on commits again", NOTIFY_CHANNEL)
        return True

    def _wait(self) -> None:
        deadline = time.monotonic() + self.interval
        while not self.stopping.is_set():
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            listener = self._listener_conn
            if listener is None and self._listens() and now >= self._listen_retry_at:
                if self._reopen():
                    return  # notifications sent while it was closed are lost: drain now
                continue
            step = min(left, 0.25)
            if listener is not None:
                try:
                    if listener.wait(step):
                        return
                except Exception as exc:
                    logger.warning(
                        "LISTEN connection lost (%s); polling every %.1fs, reopening it "
                        "with backoff",
                        exc,
                        self.interval,
                    )
                    self._listener_conn = None
                    with contextlib.suppress(Exception):  # already broken
                        listener.close()
                    self._schedule_reopen(first=True)
            else:
                self.stopping.wait(step)


def relay_pending(
    *,
    using: str = "default",
    limit: int | None = None,
    batch_size: int | None = None,
    publishers: Sequence[Publisher] | None = None,
    relay_id: str | None = None,
) -> RelayResult:
    """Relay what is due, batch after batch, until nothing is due or ``limit`` is reached.

    Raises ``RelayError`` when the database or the broker is unreachable.
    """
    loop = RelayLoop(
        using=using,
        limit=limit,
        batch_size=batch_size,
        publishers=publishers,
        relay_id=relay_id or default_relay_id(),
        once=True,
        listen=False,
    )
    return loop.drain(count_left=True)
