"""The relay's statements: claim a batch under a lease, acknowledge it, record failures.

Claiming is ONE statement: a ``MATERIALIZED`` CTE picks the due candidates, oldest due
first (``ORDER BY available_at, id`` walks the partial index of pending rows, so the cost
does not grow with the dispatched rows the table holds; ``FOR UPDATE SKIP LOCKED`` where
the database supports it, so concurrent relays never pick the same row), and an
``UPDATE ... RETURNING`` takes the lease (``claimed_by``, ``claimed_until``) and counts
the attempt. Ordering is enforced in the same statement:

* a candidate is skipped before ``LIMIT`` when an event before it in its aggregate is
  owed and cannot be claimed now (failed, backing off, or leased to another relay),
  so a poisoned aggregate never fills the batch;
* a candidate is only leased when every owed (pending or failed) event before it in its
  aggregate is in this same batch (a concurrent relay holding an earlier one blocks it).

Per-aggregate order is order among due events: by due time (``deliver_at`` for a
scheduled event, ``created_at`` otherwise: the database's time at the INSERT, just
before the commit), then by record order (``id``); two events due at commit keep record
order. Every "now" in these statements is the database server's clock (``db.clock``),
never a relay's own: a relay whose clock runs fast takes no live lease and publishes no
scheduled event early. ``precedes`` is that rule, written once, and ``no_owed_predecessor`` the
"nothing before it is owed" test every claim builds on. A scheduled event that is not
due yet precedes no due event, so it never holds one back.

SQLite has no row locks but runs one writer at a time, so the single statement is the
claim (the documented fallback). Every later statement is fenced by the lease:
``WHERE id IN (...) AND claimed_by = <relay id>``, so a relay that lost its lease cannot
mark rows it no longer owns.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections, transaction
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    F,
    Q,
    Value,
    When,
)
from django.db.models.functions import Greatest

from ..db.clock import DatabaseNow, later_sql, now_sql, seconds_param
from ..db.clock import later as clock_later
from ..db.features import features
from ..models import OutboxEvent, OutboxStatus
from .claimed import CLAIM_COLUMNS, ClaimedRow, read_rows

PENDING = OutboxStatus.PENDING.value
DISPATCHED = OutboxStatus.DISPATCHED.value
FAILED = OutboxStatus.FAILED.value
#: What holds later events of an aggregate back; dispatched and discarded events do not.
OWED = (PENDING, FAILED)

#: True runs every claim through ``claim_portable`` (the tests run the claim of
#: MySQL/MariaDB on any database this way).
PORTABLE_ONLY = False


#: ``(aggregate_type, aggregate_id)``: the unit of per-aggregate ordering.
AggregateKey = tuple[str, str]


@dataclass(frozen=True)
class Failure:
    """What to write for one event whose attempt failed."""

    error: str
    dead: bool
    #: Seconds until the next attempt, counted on the database's clock.
    retry_in: float = 0.0


def _quote(using: str, name: str) -> str:
    return connections[using].ops.quote_name(name)


def _dt(using: str, value: datetime.datetime) -> Any:
    return connections[using].ops.adapt_datetimefield_value(value)


def _clock(using: str, now: datetime.datetime | None, plus: float = 0.0) -> tuple[str, list[Any]]:
    """SQL and params for "now" (plus ``plus`` seconds): the database's clock, or ``now``
    when a caller (a test) fixes the time."""
    if now is not None:
        return "%s", [_dt(using, now + datetime.timedelta(seconds=plus))]
    vendor = connections[using].vendor
    if not plus:
        return now_sql(vendor), []
    return later_sql(vendor), [seconds_param(vendor, plus)]


def one_statement(using: str) -> bool:
    """True when the claim can be one ``WITH ... UPDATE ... RETURNING`` statement.

    PostgreSQL, and SQLite from 3.35 (``RETURNING`` and ``MATERIALIZED``; Django's
    ``can_return_rows_from_bulk_insert`` feature flag tracks the same version).
    """
    connection = connections[using]
    return features(connection).returning and not PORTABLE_ONLY


def due_sql(alias: str) -> str:
    """SQL: when event ``alias`` is due (its schedule, or when it was written: its commit)."""
    return f"COALESCE({alias}.deliver_at, {alias}.created_at)"


def precedes(p: str, o: str) -> tuple[str, str]:
    """SQL: event ``p`` comes before event ``o`` of the same aggregate, in two parts.

    The first part covers events recorded before ``o`` (``p.id < o.id``, a range of
    ``uow_outbox_owed_idx``); the second, events recorded after it but due earlier,
    which only a scheduled ``o`` can have. Two events due at commit are in record order;
    otherwise the earlier due time goes first, and record order breaks a tie.
    """
    earlier = (
        f"{p}.id < {o}.id AND (({o}.deliver_at IS NULL AND ({p}.deliver_at IS NULL "
        f"OR {p}.deliver_at <= {o}.created_at)) OR ({o}.deliver_at IS NOT NULL "
        f"AND {due_sql(p)} <= {o}.deliver_at))"
    )
    later = f"{p}.id > {o}.id AND {due_sql(p)} < {o}.deliver_at"
    return earlier, later


def no_owed_predecessor(
    using: str, o: str, extra: str = "", extra_params: Sequence[Any] = ()
) -> tuple[str, list[Any]]:
    """SQL and params: no owed (pending/failed) event of ``o``'s aggregate precedes ``o``
    (among those matching ``extra``, a condition on alias ``p``).

    Events without an aggregate have no predecessor. The second ``NOT EXISTS`` only
    runs for a scheduled ``o`` (``OR`` short-circuits), so an ordinary event costs what
    it always did: a walk of the owed rows recorded before it.
    """
    t = _quote(using, OutboxEvent._meta.db_table)
    earlier, later = precedes("p", o)
    cond = f" AND ({extra})" if extra else ""
    base = (
        f"SELECT 1 FROM {t} p WHERE p.aggregate_type = {o}.aggregate_type "
        f"AND p.aggregate_id = {o}.aggregate_id AND p.status IN (%s, %s)"
    )
    sql = (
        f"({o}.aggregate_id = '' OR (NOT EXISTS ({base} AND {earlier}{cond}) "
        f"AND ({o}.deliver_at IS NULL OR NOT EXISTS ({base} AND {later}{cond}))))"
    )
    params = [PENDING, FAILED, *extra_params, PENDING, FAILED, *extra_params]
    return sql, params


def stuck(o: str, now: str = "%s") -> str:
    """SQL: owed event ``p`` cannot go before ``o`` in this claim (``now``: its SQL).

    Failed, leased to a relay, or later than ``o`` in the claim's ``(available_at, id)``
    scan (backing off, like a retried head due after its follower).
    """
    return (
        f"p.status = %s OR p.available_at > {o}.available_at "
        f"OR (p.available_at = {o}.available_at AND p.id > {o}.id) "
        f"OR (p.claimed_until IS NOT NULL AND p.claimed_until >= {now})"
    )


def delivery_order(rows: Sequence[ClaimedRow]) -> list[ClaimedRow]:
    """``rows`` in id order, each aggregate's events rearranged into delivery order.

    An aggregate's events due at commit stay in record order and its scheduled ones in
    ``(deliver_at, id)`` order; the two are merged by due time. Other aggregates' events
    keep their places, so a batch without scheduled events is exactly in id order.
    """
    ordered = sorted(rows, key=lambda row: row.id)
    if all(row.deliver_at is None for row in ordered):
        return ordered
    slots: dict[AggregateKey, list[int]] = {}
    for index, row in enumerate(ordered):
        if row.aggregate_id:
            slots.setdefault((row.aggregate_type, row.aggregate_id), []).append(index)
    result = list(ordered)
    for places in slots.values():
        events = [ordered[i] for i in places]
        if all(e.deliver_at is None for e in events):
            continue
        plain = [e for e in events if e.deliver_at is None]
        scheduled = sorted((e for e in events if e.deliver_at is not None), key=_due_key)
        merged: list[ClaimedRow] = []
        while plain and scheduled:
            first = scheduled if _due_key(scheduled[0]) < _due_key(plain[0]) else plain
            merged.append(first.pop(0))
        merged += plain + scheduled
        for place, event in zip(places, merged, strict=True):
            result[place] = event
    return result


def _due_key(row: ClaimedRow) -> tuple[datetime.datetime, int]:
    return (row.deliver_at or row.created_at, row.id)


def claim_batch(
    *,
    using: str,
    relay_id: str,
    limit: int,
    lease: float,
    ordered: bool,
    event_ids: Sequence[Any] | None = None,
    aggregates: Sequence[AggregateKey] | None = None,
    now: datetime.datetime | None = None,
    dispatch: bool = False,
) -> list[ClaimedRow]:
    """Lease up to ``limit`` due events to ``relay_id``; return them in delivery order.

    ``dispatch=True`` (the direct mode, inside the caller's transaction) marks them
    dispatched instead of leasing them: the one write each row gets when the publish
    succeeds, and the row locks of that transaction keep other relays off them meanwhile
    (no lease, so ``claimed_by`` stays empty: later statements of that transaction fence
    with ``relay_id=""``).

    ``event_ids`` restricts the claim to those events (the fast path); ``aggregates``
    to the events of those ``(aggregate_type, aggregate_id)`` keys (a relay going on
    to what waited behind the events it just acknowledged).

    A claim restricted to ``aggregates`` waits for rows another claim has locked instead
    of skipping them: a commit's own claim locks its event as a candidate and may lease
    nothing (an earlier event of the aggregate is owed outside its batch); skipping that
    row would leave it to nobody. The wait lasts one claim statement, and every claim
    locks rows in the same ``(available_at, id)`` order.
    """
    if limit <= 0 or (event_ids is not None and not event_ids):
        return []
    if aggregates is not None:
        aggregates = [key for key in aggregates if key[1]]
        if not aggregates:
            return []
    connection = connections[using]
    if not one_statement(using):
        return claim_portable(
            using=using,
            relay_id=relay_id,
            limit=limit,
            lease=lease,
            ordered=ordered,
            event_ids=event_ids,
            aggregates=aggregates,
            now=now,
            dispatch=dispatch,
        )
    t = _quote(using, OutboxEvent._meta.db_table)
    lock = ""
    if features(connection).skip_locked:
        lock = " FOR UPDATE" if aggregates is not None else " FOR UPDATE SKIP LOCKED"
    params: list[Any] = []

    clock, clock_params = _clock(using, now)
    where = [
        "o.status = %s",
        f"o.available_at <= {clock}",
        f"(o.claimed_until IS NULL OR o.claimed_until < {clock})",
    ]
    params += [PENDING, *clock_params, *clock_params]
    if event_ids is not None:
        uuid_field = OutboxEvent._meta.get_field("event_id")
        where.append(f"o.event_id IN ({', '.join(['%s'] * len(event_ids))})")
        params += [uuid_field.get_db_prep_value(e, connection) for e in event_ids]
    if aggregates is not None:
        where.append(
            "("
            + " OR ".join(["(o.aggregate_type = %s AND o.aggregate_id = %s)"] * len(aggregates))
            + ")"
        )
        params += [part for key in aggregates for part in key]
    if ordered:
        # Skip, before LIMIT, events behind an owed event of their aggregate that cannot be
        # claimed now (failed, leased elsewhere) or that comes later in the claim order (a
        # retried head due after its follower, or not due at all). So every candidate's
        # earlier owed events precede it in the scan: a batch never fills up with followers
        # whose heads lie past the LIMIT, which would stall the relay.
        skip, skip_params = no_owed_predecessor(
            using, "o", stuck("o", clock), [FAILED, *clock_params]
        )
        where.append(skip)
        params += skip_params
    cte = (
        "WITH cand AS MATERIALIZED (SELECT o.id, o.aggregate_type, o.aggregate_id, "
        f"o.deliver_at, o.created_at FROM {t} o "
        f"WHERE {' AND '.join(where)} ORDER BY o.available_at, o.id LIMIT %s{lock})"
    )
    params.append(limit)
    eligible = "SELECT c.id FROM cand c"
    full_params: list[Any] = []
    if ordered:
        # Every owed event before it in its aggregate must be in this batch. Per aggregate,
        # the first owed event NOT in the batch by id (found by walking uow_outbox_owed_idx,
        # so the cost grows with the batch, not with the backlog) settles the usual case.
        cte += (
            ", blockers AS MATERIALIZED (SELECT a.aggregate_type, a.aggregate_id, (SELECT p.id "
            f"FROM {t} p WHERE p.aggregate_type = a.aggregate_type "
            "AND p.aggregate_id = a.aggregate_id AND p.status IN (%s, %s) "
            "AND p.id NOT IN (SELECT id FROM cand) "
            "ORDER BY p.aggregate_type, p.aggregate_id, p.id LIMIT 1) AS blocker "
            "FROM (SELECT DISTINCT aggregate_type, aggregate_id FROM cand "
            "WHERE aggregate_id <> '') a)"
        )
        params += [PENDING, FAILED]
        # The cheap test decides for an event due at commit whose aggregate's first owed
        # event outside the batch comes after it; otherwise (that event may be scheduled
        # for later, or this one is scheduled) the full rule decides.
        full, full_params = no_owed_predecessor(using, "c", "p.id NOT IN (SELECT id FROM cand)")
        # A join (hashed), not a NOT EXISTS over the CTE: that one rescans every
        # aggregate's row for every candidate, quadratic in the batch size.
        eligible += (
            " LEFT JOIN blockers b ON b.aggregate_type = c.aggregate_type "
            "AND b.aggregate_id = c.aggregate_id "
            f"WHERE (c.deliver_at IS NULL AND (b.blocker IS NULL OR b.blocker > c.id)) OR {full}"
        )
    columns = ", ".join(_quote(using, c) for c in CLAIM_COLUMNS)
    q = _quote
    if dispatch:
        assignments = (
            f"{q(using, 'status')} = %s, {q(using, 'dispatched_at')} = {clock}, "
            f"{q(using, 'last_error')} = '', {q(using, 'claimed_by')} = '', "
            f"{q(using, 'claimed_until')} = NULL"
        )
        set_params: list[Any] = [DISPATCHED, *clock_params]
    else:
        until, until_params = _clock(using, now, lease)
        assignments = f"{q(using, 'claimed_by')} = %s, {q(using, 'claimed_until')} = {until}"
        set_params = [relay_id, *until_params]
    sql = (
        f"{cte} UPDATE {t} SET {assignments}, {q(using, 'attempts')} = "
        f"{q(using, 'attempts')} + 1 WHERE {q(using, 'id')} IN ({eligible}) "
        f"RETURNING {columns}"
    )
    # Parameters in statement order: the CTEs, the SET clause, then the WHERE clause.
    params += [*set_params, *full_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return delivery_order(read_rows(using, cursor.fetchall()))


def claim_portable(
    *,
    using: str,
    relay_id: str,
    limit: int,
    lease: float,
    ordered: bool,
    event_ids: Sequence[Any] | None,
    now: datetime.datetime | None,
    aggregates: Sequence[AggregateKey] | None = None,
    dispatch: bool = False,
) -> list[ClaimedRow]:
    """The same claim for databases without ``UPDATE ... RETURNING`` (MySQL, MariaDB...).

    One short transaction: lock the candidates (``SKIP LOCKED`` where supported), keep
    those that no owed event outside them precedes, lease them, read them.
    """
    connection = connections[using]
    manager = OutboxEvent.objects.using(using)
    at: Any = now if now is not None else DatabaseNow()
    with transaction.atomic(using=using):
        due = manager.filter(status=PENDING, available_at__lte=at).filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=at)
        )
        if event_ids is not None:
            due = due.filter(event_id__in=list(event_ids))
        if aggregates is not None:
            due = due.filter(_keys_q(aggregates))
        if ordered:
            t = _quote(using, OutboxEvent._meta.db_table)
            clock, clock_params = _clock(using, now)
            skip, skip_params = no_owed_predecessor(
                using, t, stuck(t, clock), [FAILED, *clock_params]
            )
            due = due.extra(where=[skip], params=skip_params)
        # See claim_batch: a follow-up waits for a row another claim has locked.
        skip_locked = features(connection).skip_locked and aggregates is None
        candidates = list(
            due.order_by("available_at", "id")
            .select_for_update(skip_locked=skip_locked)
            .values_list("id", "aggregate_type", "aggregate_id")[:limit]
        )
        ids = [pk for pk, _, _ in candidates]
        if ordered and any(a for _, _, a in candidates):
            # Lease only the candidates no owed event outside the batch precedes.
            marks = ", ".join(["%s"] * len(ids))
            eligible, eligible_params = no_owed_predecessor(using, t, f"p.id NOT IN ({marks})", ids)
            ids = list(
                manager.filter(id__in=ids)
                .extra(where=[eligible], params=eligible_params)
                .values_list("id", flat=True)
            )
        if not ids:
            return []
        until: Any = (
            now + datetime.timedelta(seconds=lease) if now is not None else clock_later(lease)
        )
        assignments: dict[str, Any] = {"claimed_by": relay_id, "claimed_until": until}
        if dispatch:
            assignments = {"status": DISPATCHED, "dispatched_at": at, "last_error": ""}
            assignments.update(claimed_by="", claimed_until=None)
        manager.filter(id__in=ids).update(attempts=F("attempts") + 1, **assignments)
        claimed = manager.filter(id__in=ids).values_list(*CLAIM_COLUMNS)
        return delivery_order([ClaimedRow(*values) for values in claimed])


def _keys_q(keys: Iterable[AggregateKey]) -> Q:
    """Rows of any of these aggregates."""
    owed = Q()
    for aggregate_type, aggregate_id in keys:
        owed |= Q(aggregate_type=aggregate_type, aggregate_id=aggregate_id)
    return owed


def _mine(using: str, relay_id: str, ids: Iterable[int]) -> Any:
    return OutboxEvent.objects.using(using).filter(id__in=list(ids), claimed_by=relay_id)


def acknowledge(*, using: str, relay_id: str, ids: Sequence[int]) -> set[int]:
    """Mark ``ids`` dispatched, fenced by the lease; return the ids it marked.

    Rows whose lease another relay took are left alone and not returned: this relay must
    not count them as relayed. One ``UPDATE ... RETURNING`` where the database has it;
    elsewhere one UPDATE, and a read of the rows only when it marked fewer than asked.
    """
    if not ids:
        return set()
    if one_statement(using):
        t = _quote(using, OutboxEvent._meta.db_table)
        q = _quote
        marks = ", ".join(["%s"] * len(ids))
        sql = (
            f"UPDATE {t} SET {q(using, 'status')} = %s, "
            f"{q(using, 'dispatched_at')} = {now_sql(connections[using].vendor)}, "
            f"{q(using, 'claimed_by')} = '', {q(using, 'claimed_until')} = NULL, "
            f"{q(using, 'last_error')} = '' "
            f"WHERE {q(using, 'id')} IN ({marks}) AND {q(using, 'claimed_by')} = %s "
            f"RETURNING {q(using, 'id')}"
        )
        with connections[using].cursor() as cursor:
            cursor.execute(sql, [DISPATCHED, *ids, relay_id])
            return {row[0] for row in cursor.fetchall()}
    marked = int(
        _mine(using, relay_id, ids).update(
            status=DISPATCHED,
            dispatched_at=DatabaseNow(),
            claimed_by="",
            claimed_until=None,
            last_error="",
        )
    )
    if marked == len(ids):
        return set(ids)
    # Rare: another relay took some of these leases. The ones it holds, or gave back, are
    # not ours; of the rest, no more than the UPDATE marked are counted.
    theirs = set(
        OutboxEvent.objects.using(using)
        .filter(id__in=list(ids))
        .exclude(status=DISPATCHED, claimed_by="")
        .values_list("id", flat=True)
    )
    return set([pk for pk in ids if pk not in theirs][:marked])


def renew(*, using: str, relay_id: str, ids: Sequence[int], lease: float) -> int:
    """Extend the lease of ``ids`` still held by ``relay_id`` to now + ``lease`` (one UPDATE)."""
    if not ids:
        return 0
    return int(
        _mine(using, relay_id, ids).filter(status=PENDING).update(claimed_until=clock_later(lease))
    )


def give_back(*, using: str, relay_id: str, ids: Sequence[int]) -> int:
    """Release ``ids`` untouched: the lease ends and the attempt counted at claim is refunded.

    Also undoes the direct mode's mark (status back to pending; a no-op for leased rows).
    """
    if not ids:
        return 0
    return int(
        _mine(using, relay_id, ids).update(
            status=PENDING,
            dispatched_at=None,
            claimed_by="",
            claimed_until=None,
            attempts=Greatest(F("attempts") - 1, Value(0)),
        )
    )


def record_failures(*, using: str, relay_id: str, failures: Mapping[int, Failure]) -> int:
    """Write every failure of a batch with one UPDATE (CASE per row), fenced by the lease."""
    if not failures:
        return 0
    status = Case(
        *[When(id=pk, then=Value(FAILED if f.dead else PENDING)) for pk, f in failures.items()],
        output_field=CharField(),
    )
    error = Case(
        *[When(id=pk, then=Value(f.error)) for pk, f in failures.items()],
        output_field=CharField(),
    )
    available = Case(
        *[When(id=pk, then=clock_later(f.retry_in)) for pk, f in failures.items()],
        output_field=DateTimeField(),
    )
    return int(
        _mine(using, relay_id, failures).update(
            status=status,
            dispatched_at=None,
            last_error=error,
            available_at=available,
            claimed_by="",
            claimed_until=None,
        )
    )
