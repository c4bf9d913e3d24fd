"""The ledger: what committed, what took effect, and how each delivery travelled.

Read once the trial has settled, then checked:

- ``units``: every committed unit's events are in the outbox, each once; rolled-back
  units and savepoints left none; each account counts exactly its committed units;
- ``effects``: every committed event's effect, at each of its handlers, exactly once;
- ``order``: per account, the ordered handler's effects are a prefix of the account's
  events in (version, id) order: none ran before an earlier one had;
- ``settled``: nothing is left published, retrying, blocked or failed (nor an outbox
  event pending or failed) once HANDLER_DEADLINE plus one sweep has passed;
- ``one publish``: a delivery that lived through no fault reached the worker fresh
  (Celery retries 0) exactly once: relays do not publish twice, the deadline sweep does
  not copy what is still queued, a retry is the task's own;
- ``flaky attempts``: such a delivery of the flaky handler ran exactly fail_times + 1
  times, and its row says so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django_uow.models import OutboxEvent, ProcessedEvent

from .events import Flaky, Sequenced
from .handlers import EXPECTED, FLAKY, SEQUENCE, TICK
from .models import Account, Arrival, Effect
from .runs import runs_of
from .writers import Book

#: Seconds around a delivery's life within which a fault makes it "touched".
MARGIN = 1.0
OPEN_STATUSES = ("published", "retrying", "blocked", "failed")


@dataclass(frozen=True)
class Event:
    pk: int
    event_id: UUID
    event_type: str
    account: str
    version: int | None
    created_at: datetime
    status: str
    token: str
    fail_times: int | None


@dataclass
class Ledger:
    events: list[Event]
    effects: list[tuple[int, UUID, str, str, datetime]]
    inbox: dict[tuple[UUID, str], dict[str, Any]]
    arrivals: dict[tuple[UUID, str], list[tuple[float, int, int]]]
    runs: dict[UUID, int]
    units: dict[int, int]
    book: Book
    t0: float
    windows: list[tuple[float, float]] = field(default_factory=list)
    effect_times: dict[tuple[UUID, str], list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        times: dict[tuple[UUID, str], list[float]] = defaultdict(list)
        for _, event_id, handler, _, at in self.effects:
            times[(event_id, handler)].append(at.timestamp())
        self.effect_times = dict(times)

    def rel(self, when: float | datetime) -> str:
        stamp = when.timestamp() if isinstance(when, datetime) else when
        return f"+{stamp - self.t0:.1f}s"


def read_ledger(
    using: str, book: Book, counter: Any, t0: float, windows: list[tuple[float, float]]
) -> Ledger:
    events = []
    rows = OutboxEvent.objects.using(using).filter(event_type__in=list(EXPECTED))
    columns = (
        "id", "event_id", "event_type", "aggregate_id", "aggregate_version", "created_at",
        "status", "payload",
    )  # fmt: skip
    for pk, event_id, event_type, agg, version, created, status, payload in rows.values_list(
        *columns
    ):
        fail = payload.get("fail_times") if event_type == Flaky.event_type else None
        events.append(
            Event(pk, event_id, event_type, agg, version, created, status, payload["token"], fail)
        )
    effects = list(
        Effect.objects.using(using)
        .order_by("id")
        .values_list("id", "event_id", "handler", "aggregate_id", "created_at")
    )
    fields = (
        "event_id", "handler", "status", "attempts", "published_at", "due_at",
        "first_attempt_at", "processed_at", "last_error",
    )  # fmt: skip
    deliveries = ProcessedEvent.objects.using(using).filter(handler__startswith="chaos.")
    inbox = {(row["event_id"], row["handler"]): row for row in deliveries.values(*fields)}
    arrivals: dict[tuple[UUID, str], list[tuple[float, int, int]]] = defaultdict(list)
    for event_id, handler, retries, waits, at in (
        Arrival.objects.using(using)
        .order_by("id")
        .values_list("event_id", "handler", "retries", "waits", "at")
    ):
        arrivals[(event_id, handler)].append((at.timestamp(), retries, waits))
    flaky = [e.event_id for e in events if e.event_type == Flaky.event_type]
    units = dict(Account.objects.using(using).values_list("id", "units"))
    return Ledger(
        events, effects, inbox, dict(arrivals), runs_of(counter, flaky), units, book, t0, windows
    )


def touched(lo: float, hi: float, windows: list[tuple[float, float]]) -> bool:
    return any(start <= hi and end >= lo for start, end in windows)


def check_units(ledger: Ledger) -> list[str]:
    book = ledger.book
    evidence = []
    per_token = Counter(e.token for e in ledger.events)
    for token, (account, expected, phase) in sorted(book.committed.items()):
        if per_token[token] != expected:
            evidence.append(
                f"unit {token} on account {account} ({phase}) committed {expected} events; "
                f"the outbox holds {per_token[token]}"
            )
    for token in sorted(book.rolled_back | book.savepoints):
        if per_token[token]:
            evidence.append(f"rolled-back {token} left {per_token[token]} event(s) in the outbox")
    known = set(book.committed) | book.rolled_back | book.savepoints
    for token in sorted(set(per_token) - known):
        evidence.append(f"the outbox holds {per_token[token]} event(s) of {token}, never committed")
    for account, count in sorted(book.per_account.items()):
        if ledger.units.get(account) != count:
            evidence.append(
                f"account {account} counts {ledger.units.get(account)} units; "
                f"{count} committed on it"
            )
    return evidence


def check_effects(ledger: Ledger) -> list[str]:
    """Effects twice (or more) first, then missing ones, then effects of unknown events;
    the first line counts each kind."""
    done = Counter((event_id, handler) for _, event_id, handler, _, _ in ledger.effects)
    twice, missing = [], []
    expected: set[tuple[UUID, str]] = set()
    for event in ledger.events:
        for handler in EXPECTED[event.event_type]:
            key = (event.event_id, handler)
            expected.add(key)
            if done[key] != 1:
                row = ledger.inbox.get(key, {})
                (twice if done[key] > 1 else missing).append(
                    f"{handler} had {done[key]} effect(s) of {event.event_type} {event.event_id} "
                    f"(account {event.account} v{event.version}, committed "
                    f"{ledger.rel(event.created_at)}); inbox: {row.get('status', 'no row')}, "
                    f"{row.get('attempts', 0)} attempt(s)"
                )
    unknown = [
        f"{done[key]} effect(s) of {key[1]} for event {key[0]}, never committed"
        for key in sorted(set(done) - expected, key=str)
    ]
    if not (twice or missing or unknown):
        return []
    counts = (
        f"{len(twice)} effect(s) more than once, {len(missing)} missing, "
        f"{len(unknown)} of events nobody committed"
    )
    return [counts, *twice, *missing, *unknown]


def check_order(ledger: Ledger) -> list[str]:
    by_account: dict[str, list[Event]] = defaultdict(list)
    for event in ledger.events:
        if event.event_type == Sequenced.event_type:
            by_account[event.account].append(event)
    ran: dict[str, list[UUID]] = defaultdict(list)
    seen: set[UUID] = set()
    for _, event_id, handler, account, _ in ledger.effects:
        if handler == SEQUENCE and event_id not in seen:  # a duplicate is check_effects'
            seen.add(event_id)
            ran[account].append(event_id)
    evidence = []
    for account, events in sorted(by_account.items()):
        expected = [e.event_id for e in sorted(events, key=lambda e: (e.version or 0, e.pk))]
        got = ran[account]
        if got == expected[: len(got)]:
            continue
        at = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
        versions = {e.event_id: e.version for e in events}
        evidence.append(
            f"account {account}: ordered effect #{at + 1} was v{versions.get(got[at])} "
            f"({got[at]}) where v{versions.get(expected[at])} ({expected[at]}) comes first; "
            f"versions as they ran: {[versions.get(e) for e in got[max(0, at - 3) : at + 4]]}"
        )
    return evidence


def check_settled(ledger: Ledger, now: datetime) -> list[str]:
    evidence = []
    for (event_id, handler), row in sorted(ledger.inbox.items(), key=lambda kv: str(kv[0])):
        if row["status"] not in OPEN_STATUSES:
            continue
        since = row["due_at"] or row["published_at"]
        age = f"{(now - since).total_seconds():.1f}s" if since else "?"
        error = (row["last_error"] or "").splitlines()[:1]
        evidence.append(
            f"{handler} {event_id}: {row['status']}, {row['attempts']} attempt(s), due/published "
            f"{age} ago; {error[0][:160] if error else 'no error'}"
        )
    for event in ledger.events:
        if event.status in ("pending", "failed"):
            evidence.append(
                f"outbox event {event.event_id} ({event.event_type}, account {event.account}) "
                f"still {event.status}"
            )
    if not evidence:
        return []
    left = Counter(row["status"] for row in ledger.inbox.values() if row["status"] in OPEN_STATUSES)
    events = Counter(e.status for e in ledger.events if e.status in ("pending", "failed"))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(left.items()))
    counts += "; outbox: " + (", ".join(f"{n} {s}" for s, n in sorted(events.items())) or "none")
    return [f"deliveries left: {counts}", *evidence]


def _life(ledger: Ledger, event: Event, handler: str) -> tuple[float, float]:
    """From the commit to the delivery's last arrival or effect; a delivery with no
    effect yet is still alive at the end of the trial."""
    key = (event.event_id, handler)
    effects = ledger.effect_times.get(key, [])
    if not effects:
        return event.created_at.timestamp() - MARGIN, float("inf")
    ends = [at for at, _, _ in ledger.arrivals.get(key, [])] + effects
    return event.created_at.timestamp() - MARGIN, max(ends) + MARGIN


def calm_deliveries(ledger: Ledger, handler: str) -> list[tuple[Event, list[Any]]]:
    """Deliveries of ``handler`` whose whole life no fault or operator action touched
    (a delivery still unfinished at the end is the ``settled`` check's)."""
    found = []
    for event in ledger.events:
        if handler not in EXPECTED[event.event_type]:
            continue
        lo, hi = _life(ledger, event, handler)
        if hi != float("inf") and not touched(lo, hi, ledger.windows):
            found.append((event, ledger.arrivals.get((event.event_id, handler), [])))
    return found


def _arrivals_text(ledger: Ledger, arrivals: list[tuple[float, int, int]]) -> str:
    return ", ".join(f"{ledger.rel(at)} retries={r}" for at, r, _ in arrivals) or "none"


def check_one_publish(ledger: Ledger) -> tuple[list[str], dict[str, int]]:
    """Calm deliveries of the idempotent and the flaky handler, each published once.

    The ordered handler is left out: a delivery of it that waited ``ORDERED_WAIT`` is
    woken by a publish of its own, on purpose."""
    evidence: list[str] = []
    sizes: dict[str, int] = {}
    twice: Counter[str] = Counter()
    for handler in (TICK, FLAKY):
        calm = calm_deliveries(ledger, handler)
        sizes[handler] = len(calm)
        for event, arrivals in calm:
            fresh = [a for a in arrivals if a[1] == 0]
            if len(fresh) != 1:
                twice[handler] += 1
                row = ledger.inbox.get((event.event_id, handler), {})
                evidence.append(
                    f"{handler} {event.event_id} (account {event.account}, committed "
                    f"{ledger.rel(event.created_at)}, {ledger.book.committed.get(event.token, ('', 0, '?'))[2]}): "
                    f"reached the worker fresh {len(fresh)} times; arrivals: "
                    f"{_arrivals_text(ledger, arrivals)}; inbox {row.get('status')}, "
                    f"{row.get('attempts')} attempt(s)"
                )
    if evidence:
        summary = ", ".join(f"{twice[h]} of {sizes[h]} {h}" for h in (TICK, FLAKY))
        evidence.insert(0, f"published other than once: {summary}")
    return evidence, sizes


def check_flaky_attempts(ledger: Ledger, max_attempts: int) -> tuple[list[str], int]:
    evidence = []
    calm = [
        (event, arrivals)
        for event, arrivals in calm_deliveries(ledger, FLAKY)
        if event.fail_times is not None and event.fail_times < max_attempts
    ]
    for event, arrivals in calm:
        row = ledger.inbox.get((event.event_id, FLAKY), {})
        runs = ledger.runs.get(event.event_id, 0)
        want = (event.fail_times or 0) + 1
        if row.get("status") != "succeeded" or row.get("attempts") != want or runs != want:
            evidence.append(
                f"flaky {event.event_id} fails {event.fail_times} times then succeeds: ran {runs} "
                f"times, inbox {row.get('status')} with {row.get('attempts')} attempt(s) (want "
                f"{want}); arrivals: {_arrivals_text(ledger, arrivals)}"
            )
    return evidence, len(calm)
