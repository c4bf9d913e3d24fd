"""One relay batch: claim, triage, publish, settle, report.

A batch is one claim statement that leases due events (``statements.claim_batch``), one
publish per configured publisher (a pipeline / one producer for the whole batch), and
one acknowledgement UPDATE fenced by the lease. Publishing happens outside any
transaction, so no row lock is held while talking to a broker. The fast path, the
Celery tasks and ``manage.py relay_outbox`` all call this module.

Delivery is at least once: a relay that dies after publishing and before the
acknowledgement leaves leased rows behind; when the lease (``LEASE``) expires another
relay claims and publishes them again. Consumers make the effect happen once
(``@event_handler(idempotent=True)``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn
from uuid import UUID

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction

from .. import signals
from ..conf import uow_settings
from ..db.features import features
from ..db.timeouts import apply_limits
from ..events.base import Envelope
from ..exceptions import (
    BlockedByEarlierFailure,
    HandlerFailed,
    PermanentFailure,
    RelayError,
    RetryAfter,
    UnknownEventType,
)
from ..models import OutboxEvent, OutboxStatus
from ..publishers import Publisher, get_publishers, record_sent, recording_deferred
from ..publishers.base import broker_label, for_another_thread
from ..retry import backoff_delay, describe, is_connection_error, logger_for
from ..tracing import span
from . import claims as statements
from .claimed import ClaimedRow
from .handoff import Handoff, PublishOverBudget
from .lease import LeaseGuard, LeaseLost, lease_kept

logger = logger_for("django_uow.relay")


@dataclass
class RelayResult:
    """What a batch, a drain or a loop did. ``claimed == 0`` means nothing was due.

    ``left`` counts the events still pending afterwards (drains only).
    """

    claimed: int = 0
    dispatched: int = 0
    retried: int = 0
    failed: int = 0
    handed_back: int = 0
    batches: int = 0
    left: int = 0

    @property
    def relayed(self) -> int:
        return self.dispatched

    @property
    def progressed(self) -> bool:
        return self.dispatched + self.retried + self.failed > 0

    def add(self, other: RelayResult) -> None:
        self.claimed += other.claimed
        self.dispatched += other.dispatched
        self.retried += other.retried
        self.failed += other.failed
        self.handed_back += other.handed_back
        self.batches += other.batches

    def __str__(self) -> str:
        return f"relayed {self.relayed}, failed {self.failed}, left {self.left}"


def default_relay_id() -> str:
    """A relay identity unique per process and thread: host, pid, thread, random suffix."""
    host = socket.gethostname()[:24]
    return f"{host}:{os.getpid()}:{threading.get_ident() % 100000}:{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------- publish


class BrokerOutage(ConnectionError):
    """A publisher could not reach its broker; the message names the publisher and the
    broker (password masked), so the one log line of the outage says which."""

    def __init__(self, publisher: Publisher, error: BaseException) -> None:
        super().__init__(f"{broker_label(publisher)}: {describe(error)}")


def publish_all(
    publishers: Sequence[Publisher],
    envelopes: Sequence[Envelope],
    check: Callable[[], None] | None = None,
) -> dict[UUID, BaseException]:
    """Run every publisher over the batch; return the per-event failures.

    A publisher that raises fails the whole batch, except a broker outage, which
    propagates (as ``BrokerOutage``) so the caller can give the claim back. An outage of
    one publisher does not stop the publishers that run handlers in this process
    (``in_process = True``, as ``InlinePublisher``): they still run, since their inbox
    makes the batch's later retry skip what they did; other brokers are left for that
    retry, not sent twice. ``check()`` runs before each publisher and may raise
    (``LeaseLost``) to stop the batch there.
    """
    failures: dict[UUID, BaseException] = {}
    outage: BaseException | None = None
    for publisher in publishers:
        if outage is not None and not getattr(publisher, "in_process", False):
            continue
        todo = [e for e in envelopes if e.event_id not in failures]
        if not todo:
            break
        if check is not None:
            check()
        try:
            result = publisher.publish(todo)
        except Exception as exc:
            if is_connection_error(exc):
                outage = outage or BrokerOutage(publisher, exc)
                outage.__cause__ = exc
                continue
            logger.warning(
                "Publisher %s failed a batch of %d event(s): %s",
                type(publisher).__name__,
                len(todo),
                describe(exc),
            )
            for env in todo:
                failures.setdefault(env.event_id, exc)
            continue
        for event_id, error in (result or {}).items():
            failures.setdefault(event_id, error)
    if outage is not None:
        raise outage
    return failures


def failure_for(row: ClaimedRow, exc: BaseException, max_attempts: int) -> statements.Failure:
    """The failure to record: dead letter, or a retry after backoff (or ``RetryAfter``)."""
    cause = exc.original if isinstance(exc, HandlerFailed) else exc
    dead = isinstance(cause, PermanentFailure | UnknownEventType) or row.attempts >= max_attempts
    if isinstance(exc, HandlerFailed) and exc.final is not None:
        dead = exc.final  # the handler's own max_attempts / give_up_on / retry_on decided
    if dead:
        return statements.Failure(error=describe(exc), dead=True)
    if isinstance(exc, HandlerFailed) and exc.retry_in is not None:
        return statements.Failure(error=describe(exc), dead=False, retry_in=exc.retry_in)
    if isinstance(cause, RetryAfter):
        delay = cause.seconds
    else:
        delay = backoff_delay(row.attempts, *uow_settings.BACKOFF)
    return statements.Failure(error=describe(exc), dead=False, retry_in=delay)


def _log_extra(row: ClaimedRow) -> dict[str, Any]:
    return {
        "event_id": str(row.event_id),
        "event_type": row.event_type,
        "aggregate_type": row.aggregate_type,
        "aggregate_id": row.aggregate_id,
    }


@dataclass
class _Batch:
    """The working state of one claimed batch, from triage to report."""

    rows: list[ClaimedRow]
    using: str
    relay_id: str
    max_attempts: int
    #: The direct mode: the rows are already marked dispatched in the caller's open
    #: transaction, held by its row locks (no lease: statements fence with "").
    direct: bool = False
    envelopes: dict[int, Envelope] = field(default_factory=dict)
    to_publish: list[ClaimedRow] = field(default_factory=list)
    dispatched: list[ClaimedRow] = field(default_factory=list)
    handed_back: list[int] = field(default_factory=list)
    failures: dict[int, statements.Failure] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)
    outage: BaseException | None = None
    #: Aggregates with an event acknowledged by this batch: what waited behind it is owed.
    acknowledged: set[statements.AggregateKey] = field(default_factory=set)
    #: ``time.monotonic()`` before the claim statement: the lease runs LEASE from then.
    claimed_at: float = field(default_factory=time.monotonic)
    #: Seconds the heartbeat keeps renewing the lease (None: while the publish lasts).
    renew_for: float | None = None

    def fail(self, row: ClaimedRow, exc: BaseException, failure: statements.Failure) -> None:
        # Signal receivers get what the handler raised, as before it was classified.
        self.errors[row.id] = exc.original if isinstance(exc, HandlerFailed) else exc
        self.failures[row.id] = failure

    def triage(self) -> None:
        """Build envelopes; dead-letter rows whose relays kept dying while holding them."""
        for row in self.rows:
            self.envelopes[row.id] = row.to_envelope()
            if row.attempts > self.max_attempts:
                exc = RelayError(
                    f"Event {row.event_id} was claimed {row.attempts} times without being "
                    "acknowledged (the relay holding it stopped); dead-lettered."
                )
                self.fail(row, exc, statements.Failure(error=describe(exc), dead=True))
            else:
                self.to_publish.append(row)

    def sort_outcomes(self, by_event: dict[UUID, BaseException]) -> None:
        """Split what was published into dispatched, handed back and failed, in order."""
        ordered = uow_settings.ORDERING == "aggregate"
        blocked: set[tuple[str, str]] = set()
        for row in self.to_publish:
            key = (row.aggregate_type, row.aggregate_id)
            exc = by_event.get(row.event_id)
            if ordered and row.aggregate_id and key in blocked:
                # An earlier event of this aggregate failed: even if this one went out, it
                # must not be marked, so it is relayed again after the earlier one.
                self.handed_back.append(row.id)
                continue
            if exc is None:
                self.dispatched.append(row)
                continue
            if row.aggregate_id:
                blocked.add(key)
            if isinstance(exc, BlockedByEarlierFailure):
                self.handed_back.append(row.id)
            elif is_connection_error(exc):
                self.outage = self.outage or exc
                self.handed_back.append(row.id)
            else:
                self.fail(row, exc, failure_for(row, exc, self.max_attempts))

    @property
    def fence(self) -> str:
        """The ``claimed_by`` value later statements of this batch match."""
        return "" if self.direct else self.relay_id

    def settle(self, result: RelayResult) -> None:
        """Write the outcome: one acknowledgement, one failure UPDATE, one give-back.

        In the direct mode the rows were marked dispatched by the claim: only the events
        that did not go out are written again.
        """
        ids = [r.id for r in self.dispatched]
        if not self.direct:
            marked = statements.acknowledge(using=self.using, relay_id=self.relay_id, ids=ids)
            lost = len(ids) - len(marked)
            if lost:
                logger.warning(
                    "Relay %s lost the lease on %d of %d published event(s); another relay "
                    "publishes them again (at-least-once delivery), so they are not counted "
                    "as relayed here.",
                    self.relay_id,
                    lost,
                    len(ids),
                )
                self.dispatched = [r for r in self.dispatched if r.id in marked]
        self.acknowledged = {
            (r.aggregate_type, r.aggregate_id) for r in self.dispatched if r.aggregate_id
        }
        statements.record_failures(using=self.using, relay_id=self.fence, failures=self.failures)
        result.handed_back += statements.give_back(
            using=self.using, relay_id=self.fence, ids=self.handed_back
        )

    def report(self, result: RelayResult) -> None:
        """Count, log and signal each outcome.

        The per-event debug line and ``event_dispatched`` are skipped as a whole when no
        one would see them: building them for 500 events was a measurable share of a batch.
        """
        result.dispatched += len(self.dispatched)
        debug = logger.isEnabledFor(logging.DEBUG)
        listened = signals.event_dispatched.has_listeners(OutboxEvent)
        for row in self.dispatched if debug or listened else ():
            if not debug:
                signals.event_dispatched.send(sender=OutboxEvent, envelope=self.envelopes[row.id])
                continue
            logger.debug(
                "Dispatched event %s (%s) of %s %s",
                row.event_id,
                row.event_type,
                row.aggregate_type,
                row.aggregate_id,
                extra=_log_extra(row),
            )
            signals.event_dispatched.send(sender=OutboxEvent, envelope=self.envelopes[row.id])
        by_id = {r.id: r for r in self.rows}
        for row_id, failure in self.failures.items():
            row = by_id[row_id]
            if failure.dead:
                result.failed += 1
                logger.error(
                    "Event %s (%s) of %s %s failed for good after %d attempt(s): %s",
                    row.event_id,
                    row.event_type,
                    row.aggregate_type,
                    row.aggregate_id,
                    row.attempts,
                    failure.error,
                    extra=_log_extra(row),
                )
            else:
                result.retried += 1
                logger.warning(
                    "Event %s (%s) of %s %s failed (attempt %d of %d), retrying in %.1fs: %s",
                    row.event_id,
                    row.event_type,
                    row.aggregate_type,
                    row.aggregate_id,
                    row.attempts,
                    self.max_attempts,
                    failure.retry_in,
                    failure.error,
                    extra=_log_extra(row),
                )
            signals.event_failed.send(
                sender=OutboxEvent,
                envelope=self.envelopes[row_id],
                error=self.errors[row_id],
                dead=failure.dead,
            )

    def run(self, publishers: Sequence[Publisher], result: RelayResult) -> None:
        self.publish_and_settle(publishers, result)
        self.finish(result)

    def publish_and_settle(self, publishers: Sequence[Publisher], result: RelayResult) -> None:
        """Publish and write the outcome; ``RelayError`` when the broker is unreachable.

        In the direct mode the caller's transaction rolls back on that error, which
        undoes the claim: nothing is marked, no attempt is spent.
        """
        self.triage()
        try:
            by_event = self._publish(publishers, keep_lease=not self.direct)
        except LeaseLost as exc:
            self._give_up(exc, result)
            return
        except Exception as exc:
            self._handed_back(exc, result)
        self.sort_outcomes(by_event)
        self.settle(result)

    def run_within(
        self, publishers: Sequence[Publisher], result: RelayResult, budget: float
    ) -> None:
        """``run``, waiting for the brokers no longer than ``budget`` seconds (lease mode).

        The publish runs on a helper thread (``handoff``); the delivery rows it sends
        are written here, with the acknowledgement. When the brokers answer later than
        the budget, ``PublishOverBudget`` is raised at once and the helper settles the
        batch when they do: a stalled broker that takes the message after all is not
        published to twice.
        """
        self.triage()
        lease = not connections[self.using].in_atomic_block
        # What the calling thread resolves for itself (Celery's current app) is fixed here.
        publishers = [for_another_thread(p) for p in publishers]

        sent: list[Any] = []  # the deliveries the publish sent, written by whoever settles

        def work() -> dict[UUID, BaseException]:
            with recording_deferred() as deferred:
                try:
                    return self._publish(publishers, keep_lease=lease)
                finally:
                    sent.extend(deferred)

        def late(value: Any, error: BaseException | None) -> None:
            try:
                late_result = RelayResult()
                self._settle_published(value, error, sent, late_result)
                self.finish(late_result)
                logger.info(
                    "Relay %s: the broker answered a fast-path batch of %d event(s) after "
                    "its budget; settled it.",
                    self.relay_id,
                    len(self.to_publish),
                )
            except RelayError as exc:
                logger.warning("Relay %s: a late fast-path batch: %s", self.relay_id, exc)
            finally:
                connections[self.using].close()  # the helper thread's own connection

        handed = Handoff(work).wait(budget, late)
        if handed is None:
            raise PublishOverBudget(
                f"The broker did not answer within {budget:g}s; the batch of "
                f"{len(self.to_publish)} event(s) is settled when it does."
            )
        self._settle_published(*handed, sent, result)
        self.finish(result)

    def _settle_published(
        self,
        by_event: dict[UUID, BaseException] | None,
        error: BaseException | None,
        sent: list[Any],
        result: RelayResult,
    ) -> None:
        """Write what a handed-off publish did: its delivery rows, then the outcome."""
        if isinstance(error, LeaseLost):
            self._give_up(error, result)
            return
        if error is not None:
            with contextlib.suppress(Exception):  # best effort: the outage is what counts
                record_sent(sent)
            self._handed_back(error, result)
        try:
            record_sent(sent)
        except Exception as exc:
            self._handed_back(exc, result)
        self.sort_outcomes(by_event or {})
        self.settle(result)

    def _publish(
        self, publishers: Sequence[Publisher], *, keep_lease: bool
    ) -> dict[UUID, BaseException]:
        guard = LeaseGuard(
            using=self.using,
            relay_id=self.relay_id,
            ids=[r.id for r in self.to_publish],
            lease=uow_settings.LEASE,
            held_at=self.claimed_at,
            direct=self.direct,
        )
        envelopes = [self.envelopes[r.id] for r in self.to_publish]
        if not keep_lease:
            return publish_all(publishers, envelopes, guard.confirm)
        with lease_kept(guard, bound=self.renew_for):
            return publish_all(publishers, envelopes, guard.confirm)

    def _give_up(self, exc: LeaseLost, result: RelayResult) -> None:
        """The claim is no longer this relay's: publish nothing more of it (the relay that
        took it over does), release what is still ours, and say so once."""
        logger.warning(
            "Relay %s: %s; it publishes nothing more of this batch of %d event(s) (the "
            "relay that took them over delivers them).",
            self.relay_id,
            exc,
            len(self.to_publish),
        )
        self.failures = {}
        if self.direct:
            raise RelayError(
                f"{exc}; nothing of the batch was published. It is relayed again."
            ) from exc
        result.handed_back += statements.give_back(
            using=self.using, relay_id=self.relay_id, ids=[r.id for r in self.to_publish]
        )

    def _handed_back(self, exc: BaseException, result: RelayResult) -> NoReturn:
        """The broker is unreachable: nothing is marked, no attempt is spent."""
        reason = str(exc) if isinstance(exc, BrokerOutage) else describe(exc)
        # The broker's own error stays the cause (callers catch it by its class).
        cause = exc.__cause__ if isinstance(exc, BrokerOutage) and exc.__cause__ else exc
        if not self.direct:
            statements.record_failures(
                using=self.using, relay_id=self.relay_id, failures=self.failures
            )
            result.failed += len(self.failures)
            result.handed_back += statements.give_back(
                using=self.using, relay_id=self.relay_id, ids=[r.id for r in self.to_publish]
            )
        raise RelayError(
            f"Could not reach the broker ({reason}); {len(self.to_publish)} claimed "
            "event(s) were handed back without spending an attempt. Check the broker and "
            "retry."
        ) from cause

    def finish(self, result: RelayResult) -> None:
        """Count, log and signal (after the direct mode's commit); raise a partial outage."""
        self.report(result)
        if self.outage is not None:
            raise RelayError(
                f"The broker refused part of a batch ({describe(self.outage)}); the affected "
                "events were handed back without spending an attempt."
            ) from self.outage


# ----------------------------------------------------------------------- entry points


def resolve_publishers(publishers: Sequence[Publisher] | None) -> list[Publisher]:
    """``publishers``, or the configured ones; refuse to relay into nothing.

    With no publisher every claimed event would be marked dispatched and no consumer
    would ever see it, so nothing is claimed: ``ImproperlyConfigured`` is raised instead
    (system check ``E004`` says the same, but workers and scripts may skip checks).
    """
    pubs = list(publishers) if publishers is not None else get_publishers()
    if not pubs:
        raise ImproperlyConfigured(
            "No publisher to relay to: DJANGO_UOW['PUBLISHERS'] is empty, so relayed events "
            "would be marked dispatched without reaching any consumer. No event was touched. "
            "Set DJANGO_UOW['PUBLISHERS'] to at least one publisher, e.g. "
            "['django_uow.publishers.CeleryPublisher'] or "
            "['django_uow.publishers.InlinePublisher']."
        )
    return pubs


def renewal_bound(publishers: Sequence[Publisher]) -> float | None:
    """How long the sweep's heartbeat renews a batch sent to brokers only: ``LEASE`` plus
    connect, send and confirm at ``BROKER_TIMEOUT`` each. None (no bound) when a
    publisher runs handlers in this process, which may rightly take long."""
    if any(getattr(p, "in_process", False) for p in publishers):
        return None
    return uow_settings.LEASE + 3 * uow_settings.BROKER_TIMEOUT


def relay_mode(publishers: Sequence[Publisher], using: str) -> str:
    """``"direct"`` or ``"lease"``: how a batch is claimed and acknowledged.

    ``RELAY_MODE`` decides when it is not ``"auto"``. Under ``"auto"`` the direct mode
    (claim, publish and mark dispatched in one transaction: one write per row) is used
    when every publisher says it finishes a batch in milliseconds (``direct_relay =
    True``, as ``RedisStreamPublisher`` does) and the database has row locks to skip
    (PostgreSQL, MariaDB, MySQL): a slow publish would hold the rows' locks, and on
    SQLite the database's single write lock, for its whole length.
    """
    mode = uow_settings.RELAY_MODE
    if mode != "auto":
        return mode
    fast = all(getattr(p, "direct_relay", False) for p in publishers)
    skip_locked = features(connections[using]).skip_locked
    return "direct" if fast and skip_locked else "lease"


def _claim(
    result: RelayResult,
    using: str,
    relay_id: str,
    size: int,
    event_ids: Sequence[UUID] | None,
    aggregates: Sequence[statements.AggregateKey] | None,
    direct: bool,
) -> _Batch | None:
    """Claim one batch (``None``: nothing was due); ``RelayError`` if the database fails."""
    started = time.monotonic()
    try:
        rows = statements.claim_batch(
            using=using,
            relay_id=relay_id,
            limit=size,
            lease=uow_settings.LEASE,
            ordered=uow_settings.ORDERING == "aggregate",
            event_ids=event_ids,
            aggregates=aggregates,
            dispatch=direct,
        )
    except Exception as exc:
        raise RelayError(
            f"Could not claim outbox events on database {using!r}: {describe(exc)}. "
            "Check that the database is reachable and migrated (manage.py migrate django_uow)."
        ) from exc
    result.claimed = len(rows)
    result.batches = 1
    if not rows:
        return None
    return _Batch(
        rows, using, relay_id, uow_settings.MAX_ATTEMPTS, direct=direct, claimed_at=started
    )


@contextmanager
def _batch_span(using: str, relay_id: str, result: RelayResult) -> Iterator[Any]:
    """One span per batch (never one for a whole loop), around publish and acknowledge."""
    with span(
        "django_uow.relay.batch", database=using, relay_id=relay_id, claimed=result.claimed
    ) as current:
        yield current


def _annotate(current: Any, result: RelayResult) -> None:
    if current is not None:
        current.set_attribute("dispatched", result.dispatched)
        current.set_attribute("failed", result.failed)
        current.set_attribute("retried", result.retried)


def _run_batch(
    *,
    using: str,
    batch_size: int | None,
    publishers: Sequence[Publisher] | None,
    relay_id: str | None,
    event_ids: Sequence[UUID] | None,
    aggregates: Sequence[statements.AggregateKey] | None = None,
    budget: float | None = None,
) -> tuple[RelayResult, set[statements.AggregateKey]]:
    """One batch; returns its result and the aggregates it acknowledged events of.

    With ``budget`` (the fast path) the batch is leased, whatever ``RELAY_MODE`` says,
    and waits for the brokers no longer than that (``_Batch.run_within``).
    """
    relay_id = relay_id or default_relay_id()
    size = batch_size or uow_settings.BATCH_SIZE
    pubs = resolve_publishers(publishers)
    direct = budget is None and relay_mode(pubs, using) == "direct"
    result = RelayResult()
    started = time.monotonic()
    if direct:
        # Claim (= mark dispatched), publish and settle in one short transaction: one
        # write per published row. An outage raises and rolls the claim back.
        with transaction.atomic(using=using):
            # No lease here: the row locks are the claim. The database ends this
            # transaction if the relay stalls inside it (a paused process) for LEASE, so
            # other relays wait no longer than they would for an expired lease.
            restore = apply_limits(connections[using], uow_settings.LEASE, idle=True)
            try:
                batch = _claim(result, using, relay_id, size, event_ids, aggregates, direct)
                if batch is None:
                    return result, set()  # an idle poll opens no span
                with _batch_span(using, relay_id, result) as current:
                    batch.publish_and_settle(pubs, result)
            finally:
                restore()
        batch.finish(result)  # counts, logs and signals once the marks are committed
        _annotate(current, result)
    else:
        batch = _claim(result, using, relay_id, size, event_ids, aggregates, direct)
        if batch is None:
            return result, set()  # an idle poll opens no span
        with _batch_span(using, relay_id, result) as current:
            if budget is None:
                batch.renew_for = renewal_bound(pubs)
                batch.run(pubs, result)
            else:
                batch.run_within(pubs, result, budget)
            _annotate(current, result)
    signals.relay_batch_finished.send(
        sender=OutboxEvent,
        using=using,
        relay_id=relay_id,
        result=result,
        duration=time.monotonic() - started,
    )
    return result, batch.acknowledged


def relay_batch(
    *,
    using: str = "default",
    batch_size: int | None = None,
    publishers: Sequence[Publisher] | None = None,
    relay_id: str | None = None,
) -> RelayResult:
    """Claim one due batch, publish it, acknowledge it. Raises ``RelayError`` on an outage.

    One batch only: a drain (``relay_pending``, ``relay_outbox``) claims again after
    each batch, so what waited behind the acknowledged events goes in its next batch.
    """
    result, _ = _run_batch(
        using=using,
        batch_size=batch_size,
        publishers=publishers,
        relay_id=relay_id,
        event_ids=None,
    )
    return result


def relay_events(
    event_ids: Iterable[UUID],
    using: str = "default",
    *,
    publishers: Sequence[Publisher] | None = None,
    relay_id: str | None = None,
    budget: float | None = None,
) -> RelayResult:
    """Relay exactly these (just committed) events, then what waited behind them.

    Events already claimed by another relay, not yet due, or waiting behind an earlier
    owed event of their aggregate are skipped here: the relay that acknowledges that
    earlier event delivers them (``follow_up``). After acknowledging, this relay goes
    on to the events of the same aggregates that waited behind the ones it
    acknowledged (commits that found them in flight, events recorded by handlers),
    within ``BATCH_SIZE`` events. ``budget`` bounds each batch's wait for the brokers
    (the fast path; see ``_run_batch``).
    """
    ids = list(event_ids)
    relay_id = relay_id or default_relay_id()
    pubs = resolve_publishers(publishers)
    total = RelayResult()
    acknowledged: set[statements.AggregateKey] = set()
    size = uow_settings.BATCH_SIZE
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        result, keys = _run_batch(
            using=using,
            batch_size=len(chunk),
            publishers=pubs,
            relay_id=relay_id,
            event_ids=chunk,
            budget=budget,
        )
        total.add(result)
        acknowledged |= keys
    total.add(
        follow_up(acknowledged, using=using, publishers=pubs, relay_id=relay_id, budget=budget)
    )
    return total


def follow_up(
    aggregates: Iterable[statements.AggregateKey],
    *,
    using: str = "default",
    publishers: Sequence[Publisher] | None = None,
    relay_id: str | None = None,
    limit: int | None = None,
    budget: float | None = None,
) -> RelayResult:
    """Deliver the events that waited behind acknowledged events of ``aggregates``.

    A commit whose earlier event of the aggregate was in flight on another relay skips
    its own events; the relay holding that earlier event comes here after acknowledging
    it. Round after round, restricted to the aggregates acknowledged in the previous
    round, until a round claims nothing or ``limit`` events (``BATCH_SIZE``) were
    claimed; the rest then waits for the sweep (logged). ``budget``: as for
    ``relay_events``.
    """
    keys = set(aggregates)
    remaining = uow_settings.BATCH_SIZE if limit is None else limit
    relay_id = relay_id or default_relay_id()
    total = RelayResult()
    while keys and remaining > 0:
        result, keys = _run_batch(
            using=using,
            batch_size=remaining,
            publishers=publishers,
            relay_id=relay_id,
            event_ids=None,
            aggregates=sorted(keys),
            budget=budget,
        )
        if not result.claimed:
            return total
        total.add(result)
        remaining -= result.claimed
    if keys:
        logger.warning(
            "Relay %s delivered %d waiting event(s) and stopped at its budget; the sweep "
            "delivers the rest of %d aggregate(s).",
            relay_id,
            total.dispatched,
            len(keys),
        )
    return total


def count_pending(using: str = "default") -> int:
    """Pending events, due or not (the ``left`` of a summary); uses the partial pending index."""
    return int(OutboxEvent.objects.using(using).filter(status=OutboxStatus.PENDING).count())


def connection_alias_ok(using: str) -> None:
    """Raise ``RelayError`` when database ``using`` cannot be reached."""
    try:
        connections[using].ensure_connection()
    except Exception as exc:
        raise RelayError(f"Cannot connect to database {using!r}: {describe(exc)}") from exc
