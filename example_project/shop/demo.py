"""The demo scenario: concurrent buyers, payments and cancellations, then the relay.

``run_scenario`` is what ``manage.py demo`` runs (and what the test suite runs with
small numbers). It returns a ``DemoReport`` whose ``problems()`` lists every
inconsistency found between the write model, the outbox and the handlers' effects.
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import OperationalError, connections
from django.db.models import Sum
from django.test import Client

from django_uow import ConcurrencyError, unit_of_work
from django_uow.models import OutboxEvent, ProcessedEvent

from . import services
from .errors import OutOfStock
from .models import Notification, Order, Payment, Product, ProductSales

#: How often an entry point re-runs after a conflict before giving up, and the backoff
#: (base, cap) in seconds: generous, because on a busy machine SQLite's single writer
#: can hold the lock for a while.
RETRIES = 20
BACKOFF = (0.02, 1.0)

#: (sku, name, price, stock). LIMITED is scarce on purpose: some orders must be refused.
CATALOG = [
    ("TEA", "Green tea", Decimal("4.50"), 10_000),
    ("MUG", "Stoneware mug", Decimal("12.00"), 10_000),
    ("BEANS", "Coffee beans 1 kg", Decimal("9.90"), 10_000),
    ("LIMITED", "Limited edition grinder", Decimal("89.00"), 0),  # stock set per run
]

#: The product every buyer of a rush round wants at the same instant.
RUSH_SKU = "MUG"


@dataclass
class DemoConfig:
    orders: int = 60
    threads: int = 4
    rush_rounds: int = 3
    pay_ratio: float = 0.5
    cancel_ratio: float = 0.25
    seed: int = 7
    timeout: float = 60.0


@dataclass
class DemoReport:
    database: str = ""
    relay_mode: str = ""
    orders_attempted: int = 0
    orders_placed: int = 0
    orders_rejected: int = 0
    orders_paid: int = 0
    orders_cancelled: int = 0
    gave_up: int = 0
    conflicts_retried: int = 0
    conflicts_by_error: dict[str, int] = field(default_factory=dict)
    #: SQLite "database is locked" retries: waits for the one writer, not stale versions.
    lock_waits_retried: int = 0
    #: Whether buyers' transactions overlap (False on SQLite with IMMEDIATE transactions,
    #: where writers run one after the other and so never see stale versions).
    rush_collides: bool = True
    events_written: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    events_relayed: int = 0
    relayed_on_commit: int = 0
    relayed_by_sweep: int = 0
    events_failed: int = 0
    events_pending: int = 0
    relay_lag_p50_ms: float | None = None
    relay_lag_max_ms: float | None = None
    notifications: dict[str, int] = field(default_factory=dict)
    placed_orders_with_one_notification: int = 0
    processed_rows: int = 0
    expected_processed_rows: int = 0
    redelivered: int = 0
    effects_after_redelivery: int = 0
    effects_before_redelivery: int = 0
    stock_matches_projection: bool = False
    stale_restock_status: int | None = None
    fresh_restock_status: int | None = None
    revenue_matches_payments: bool = False
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        """Every inconsistency between the orders, the outbox and the handlers' effects."""
        found = list(self.errors)
        expected_events = self.orders_placed + self.orders_paid + self.orders_cancelled
        if self.events_written != expected_events:
            found.append(
                f"{self.events_written} events written, but placed + paid + cancelled = "
                f"{expected_events}"
            )
        accounted = self.events_relayed + self.events_failed + self.events_pending
        if self.events_written != accounted:
            found.append(
                f"{self.events_written} events written != relayed + failed + pending = {accounted}"
            )
        if self.events_pending or self.events_failed:
            found.append(
                f"{self.events_pending} event(s) still pending and {self.events_failed} failed "
                "when the demo ended"
            )
        if self.placed_orders_with_one_notification != self.orders_placed:
            found.append(
                f"only {self.placed_orders_with_one_notification} of {self.orders_placed} placed "
                "orders have exactly one order_placed notification"
            )
        for kind, count in (
            ("order_paid", self.orders_paid),
            ("order_cancelled", self.orders_cancelled),
        ):
            if self.notifications.get(kind, 0) != count:
                found.append(f"{self.notifications.get(kind, 0)} {kind} notifications for {count}")
        if self.processed_rows != self.expected_processed_rows:
            found.append(
                f"{self.processed_rows} handler runs recorded, expected "
                f"{self.expected_processed_rows} (one per relayed event and handler)"
            )
        if self.effects_after_redelivery != self.effects_before_redelivery:
            found.append(
                f"redelivering {self.redelivered} events changed the effects from "
                f"{self.effects_before_redelivery} to {self.effects_after_redelivery}"
            )
        if (self.stale_restock_status, self.fresh_restock_status) != (412, 200):
            found.append(
                f"restocking with a stale ETag answered {self.stale_restock_status} (expected "
                f"412), with the fresh one {self.fresh_restock_status} (expected 200)"
            )
        if not self.stock_matches_projection:
            found.append("the sales projection does not match the stock taken")
        if not self.revenue_matches_payments:
            found.append("the projected revenue does not match the payments")
        if self.gave_up:
            found.append(f"{self.gave_up} operation(s) gave up after {RETRIES} retries")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "problems": self.problems()}

    def render(self) -> str:
        by_error = ", ".join(f"{k}: {v}" for k, v in sorted(self.conflicts_by_error.items()))
        lag = (
            "n/a"
            if self.relay_lag_p50_ms is None
            else f"median {self.relay_lag_p50_ms:.1f} ms, max {self.relay_lag_max_ms:.1f} ms"
        )
        notes = ", ".join(f"{k} {v}" for k, v in sorted(self.notifications.items()))
        lines = [
            f"django-uow demo: {self.database}, relay {self.relay_mode}",
            "",
            "Orders",
            f"  attempted                 {self.orders_attempted}",
            f"  placed                    {self.orders_placed}",
            f"  refused (out of stock)    {self.orders_rejected}",
            f"  paid                      {self.orders_paid}",
            f"  cancelled                 {self.orders_cancelled}",
            "Optimistic locking",
            f"  conflicts retried         {self.conflicts_retried}"
            + (f" ({by_error})" if by_error else ""),
            f"  gave up                   {self.gave_up}",
            f"  SQLite lock waits retried {self.lock_waits_retried}"
            + ("" if self.rush_collides else "  (IMMEDIATE transactions: writers queue)"),
            "Outbox",
            f"  events written            {self.events_written}"
            f"  (placed {self.orders_placed} + paid {self.orders_paid}"
            f" + cancelled {self.orders_cancelled})",
            f"  relayed                   {self.events_relayed}"
            + (
                f"  (on commit {self.relayed_on_commit}, by the sweep {self.relayed_by_sweep})"
                if self.relay_mode.startswith("in-process")
                else f"  (while orders were placed {self.relayed_on_commit},"
                f" afterwards {self.relayed_by_sweep})"
            ),
            f"  failed (dead letter)      {self.events_failed}",
            f"  pending                   {self.events_pending}",
            f"  relay lag                 {lag} (commit to dispatched)",
            "Handlers",
            f"  notifications             {notes or 'none'}",
            f"  placed orders notified    {self.placed_orders_with_one_notification} of "
            f"{self.orders_placed} exactly once",
            f"  handler runs recorded     {self.processed_rows}"
            f" (expected {self.expected_processed_rows})",
            f"  redelivered events        {self.redelivered}:"
            f" effects {self.effects_before_redelivery} -> {self.effects_after_redelivery}",
            f"  restock, stale If-Match   HTTP {self.stale_restock_status}"
            f" (fresh: HTTP {self.fresh_restock_status})",
            "  sales projection          "
            + ("matches the stock taken" if self.stock_matches_projection else "MISMATCH"),
            "  projected revenue         "
            + ("matches the payments" if self.revenue_matches_payments else "MISMATCH"),
            "",
        ]
        problems = self.problems()
        if problems:
            lines.append("PROBLEMS:")
            lines += [f"  - {p}" for p in problems]
        else:
            lines.append(f"All numbers consistent ({self.seconds:.1f} s).")
        return "\n".join(lines)


# ------------------------------------------------------------------ entry points
# The transaction boundary: each call is one unit of work, re-run on conflicts.


@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def buy(
    customer: str, items: dict[str, int], after_reserve: Callable[[], None] | None = None
) -> Order:
    return services.place_order(customer, items, after_reserve=after_reserve)


@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def pay(order_id: int) -> Order:
    return services.pay_order(order_id)


@unit_of_work(retries=RETRIES, backoff=BACKOFF)
def cancel(order_id: int) -> Order:
    return services.cancel_order(order_id, reason="changed their mind")


class RetryCounter(logging.Handler):
    """Counts the retries ``@unit_of_work(retries=...)`` logs: conflicts by error type,
    and SQLite lock waits apart (they are not optimistic-locking conflicts)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.by_error: Counter[str] = Counter()
        self.lock_waits = 0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        error = args[4] if len(args) > 4 else "unknown"
        if error == "OperationalError" and len(args) > 5 and "is locked" in str(args[5]):
            self.lock_waits += 1
            return
        self.by_error[str(error)] += 1


@contextmanager
def counting_retries() -> Iterator[RetryCounter]:
    logger = logging.getLogger("django_uow.retry")
    counter = RetryCounter()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)


class Tally:
    """Thread-safe outcome counters of the scenario's workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


class OneShotBarrier:
    """Waits at ``barrier`` the first time it is called only (a retry must not wait)."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier
        self.used = False

    def __call__(self) -> None:
        if self.used:
            return
        self.used = True
        with suppress(threading.BrokenBarrierError):
            self.barrier.wait()


def _run_threads(target: Callable[[int], None], threads: int, errors: list[str]) -> None:
    def run(index: int) -> None:
        try:
            target(index)
        except Exception as error:  # reported by problems(), never lost with the thread
            errors.append(f"thread {index}: {type(error).__name__}: {error}")
        finally:
            connections.close_all()  # this thread's connections

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _attempt(tally: Tally, key: str, fn: Callable[[], Any]) -> Any:
    try:
        result = fn()
    except OutOfStock:
        tally.add("rejected")
    except (ConcurrencyError, OperationalError) as error:
        tally.add("gave_up")
        tally.error(f"{key}: gave up: {type(error).__name__}: {error}")
    except Exception as error:  # reported, not swallowed: problems() lists it
        tally.error(f"{key}: {type(error).__name__}: {error}")
    else:
        tally.add(key)
        return result
    return None


def _api(tally: Tally, key: str, client: Client, path: str, body: dict[str, Any]) -> None:
    """POST to one of the shop's JSON views (the same views a browser or app would call)."""
    response = client.post(path, body, content_type="application/json")
    if response.status_code in (200, 201):
        tally.add(key)
    elif response.status_code == 409 and "in stock" in response.json().get("error", ""):
        tally.add("rejected")
    else:
        tally.error(f"POST {path}: HTTP {response.status_code}: {response.content[:300]!r}")


# ------------------------------------------------------------------ the scenario


def seed_catalog(config: DemoConfig) -> dict[str, int]:
    """Create the products; return their initial stock by SKU."""
    limited_stock = max(3, config.orders // 2)
    initial = {}
    for sku, name, price, stock in CATALOG:
        stock = stock or limited_stock
        Product.objects.create(sku=sku, name=name, price=price, stock=stock)
        initial[sku] = stock
    return initial


def writers_overlap() -> bool:
    """False when the database runs write transactions one after the other.

    SQLite with ``transaction_mode: IMMEDIATE`` takes the write lock at BEGIN: a buyer
    waiting at the rush's barrier inside its transaction would hold every other buyer
    at their BEGIN, so there the buyers queue instead of colliding.
    """
    connection = connections["default"]
    options = connection.settings_dict.get("OPTIONS", {})
    return not (connection.vendor == "sqlite" and options.get("transaction_mode") == "IMMEDIATE")


def rush(config: DemoConfig, tally: Tally) -> None:
    """Every thread buys the same product at the same instant: all but one must retry."""
    collide = writers_overlap()
    for round_no in range(config.rush_rounds):
        barrier = threading.Barrier(config.threads, timeout=10)

        def buyer(
            index: int, barrier: threading.Barrier = barrier, round_no: int = round_no
        ) -> None:
            tally.add("attempted")
            wait = OneShotBarrier(barrier) if collide else None
            _attempt(
                tally,
                "placed",
                lambda: buy(f"rush-{round_no}-{index}", {RUSH_SKU: 1}, after_reserve=wait),
            )

        _run_threads(buyer, config.threads, tally.errors)


def traffic(config: DemoConfig, tally: Tally) -> None:
    """``orders`` orders of random baskets from ``threads`` threads."""
    skus = [sku for sku, *_ in CATALOG]

    def shopper(index: int) -> None:
        rng = random.Random(config.seed * 1000 + index)
        client = Client(raise_request_exception=False)
        for n in range(index, config.orders, config.threads):
            basket = {sku: rng.randint(1, 3) for sku in rng.sample(skus, rng.randint(1, 3))}
            tally.add("attempted")
            if n % 2:  # half of the orders go through the JSON API, the rest call buy()
                body = {"customer": f"customer-{n}", "items": basket}
                _api(tally, "placed", client, "/api/orders/", body)
            else:
                _attempt(tally, "placed", lambda basket=basket, n=n: buy(f"customer-{n}", basket))

    _run_threads(shopper, config.threads, tally.errors)


def after_sales(config: DemoConfig, tally: Tally) -> None:
    """Pay some placed orders and cancel some others, from several threads."""
    rng = random.Random(config.seed)
    plan: list[tuple[str, int]] = []
    for order_id in (
        Order.objects.filter(status=Order.Status.PLACED).order_by("id").values_list("id", flat=True)
    ):
        roll = rng.random()
        if roll < config.pay_ratio:
            plan.append(("paid", order_id))
        elif roll < config.pay_ratio + config.cancel_ratio:
            plan.append(("cancelled", order_id))
    actions = {"paid": pay, "cancelled": cancel}

    def clerk(index: int) -> None:
        client = Client(raise_request_exception=False)
        for n, (action, order_id) in enumerate(plan[index :: config.threads]):
            if n % 2:
                path = f"/api/orders/{order_id}/{'pay' if action == 'paid' else 'cancel'}/"
                _api(tally, action, client, path, {})
            else:
                _attempt(tally, action, lambda a=action, o=order_id: actions[a](o))

    _run_threads(clerk, config.threads, tally.errors)


def restock(report: DemoReport, tally: Tally) -> dict[str, int]:
    """Staff restock from a page loaded before a sale: refused (412), then done on a fresh one."""
    client = Client()
    product = Product.objects.get(sku=RUSH_SKU)
    page = client.get(f"/api/products/{product.pk}/")
    stale_etag = page["ETag"]
    tally.add("attempted")
    _attempt(tally, "placed", lambda: buy("walk-in", {RUSH_SKU: 1}))  # changes the product
    path = f"/api/products/{product.pk}/restock/"
    body = {"quantity": 10}
    stale = client.post(
        path, body, content_type="application/json", headers={"If-Match": stale_etag}
    )
    fresh_etag = client.get(f"/api/products/{product.pk}/")["ETag"]
    fresh = client.post(
        path, body, content_type="application/json", headers={"If-Match": fresh_etag}
    )
    report.stale_restock_status = stale.status_code
    report.fresh_restock_status = fresh.status_code
    return {RUSH_SKU: 10} if fresh.status_code == 200 else {}


def relay_mode() -> str:
    mode = settings.DJANGO_UOW.get("RELAY_ON_COMMIT", "celery")
    return "in-process (RELAY_ON_COMMIT='inline')" if mode == "inline" else f"through {mode}"


def drain(config: DemoConfig, deadline: float) -> None:
    """Deliver what the fast path left (retries after "database is locked", ...)."""
    if settings.DJANGO_UOW.get("RELAY_ON_COMMIT") != "inline":
        wait_for_workers(deadline)
        return
    from django_uow.relay import relay_pending

    while time.monotonic() < deadline:
        relay_pending()
        if not OutboxEvent.objects.filter(status=OutboxEvent.Status.PENDING).exists():
            return
        time.sleep(0.05)  # a retry is not due yet: its backoff is short in the demo


def expected_processed_rows() -> int:
    """One succeeded delivery row per dispatched event and handler of its type."""
    from django_uow.delivery.handlers import handlers_for

    per_type = Counter(
        OutboxEvent.objects.filter(status=OutboxEvent.Status.DISPATCHED).values_list(
            "event_type", flat=True
        )
    )
    return sum(count * len(handlers_for(event_type)) for event_type, count in per_type.items())


def wait_for_workers(deadline: float) -> None:
    """With Celery, the worker and beat do the relaying: wait until all effects are in."""
    while time.monotonic() < deadline:
        pending = OutboxEvent.objects.filter(status=OutboxEvent.Status.PENDING).exists()
        if not pending and succeeded_deliveries() >= expected_processed_rows():
            return
        time.sleep(0.2)


def succeeded_deliveries() -> int:
    """Handler deliveries that had their effect (published or failed ones do not count)."""
    return ProcessedEvent.objects.filter(status=ProcessedEvent.Status.SUCCEEDED).count()


def effects_count() -> int:
    return Notification.objects.count() + succeeded_deliveries()


def redeliver_some(count: int = 5) -> int:
    """Hand a few dispatched events to their handlers again, as a broker redelivery would."""
    from django_uow.delivery.handlers import handlers_for
    from django_uow.delivery.running import run_handler

    rows = list(
        OutboxEvent.objects.filter(status=OutboxEvent.Status.DISPATCHED).order_by("id")[:count]
    )
    for row in rows:
        envelope = row.to_envelope()
        for handler in handlers_for(envelope.event_type):
            run_handler(handler, envelope)
    return len(rows)


def measure(report: DemoReport, initial_stock: dict[str, int], restocked: dict[str, int]) -> None:
    statuses = Counter(Order.objects.values_list("status", flat=True))
    report.orders_cancelled = statuses.get(Order.Status.CANCELLED, 0)
    report.orders_paid = statuses.get(Order.Status.PAID, 0)
    report.orders_placed = sum(statuses.values()) - statuses.get(Order.Status.NEW, 0)

    events = OutboxEvent.objects.all()
    report.events_written = events.count()
    report.events_by_type = dict(Counter(events.values_list("event_type", flat=True)))
    by_status = Counter(events.values_list("status", flat=True))
    report.events_relayed = by_status.get(OutboxEvent.Status.DISPATCHED, 0)
    report.events_failed = by_status.get(OutboxEvent.Status.FAILED, 0)
    report.events_pending = by_status.get(OutboxEvent.Status.PENDING, 0)
    lags = [
        (dispatched - created).total_seconds() * 1000
        for created, dispatched in events.filter(dispatched_at__isnull=False).values_list(
            "created_at", "dispatched_at"
        )
    ]
    if lags:
        report.relay_lag_p50_ms = statistics.median(lags)
        report.relay_lag_max_ms = max(lags)

    report.notifications = dict(Counter(Notification.objects.values_list("kind", flat=True)))
    placed_notes = Counter(
        Notification.objects.filter(kind="order_placed").values_list("order_id", flat=True)
    )
    placed_ids = Order.objects.exclude(status=Order.Status.NEW).values_list("id", flat=True)
    report.placed_orders_with_one_notification = sum(
        1 for order_id in placed_ids if placed_notes.get(order_id) == 1
    )
    report.processed_rows = succeeded_deliveries()
    report.expected_processed_rows = expected_processed_rows()

    sales = {s.sku: s for s in ProductSales.objects.all()}
    report.stock_matches_projection = all(
        (sales[p.sku].units_ordered - sales[p.sku].units_cancelled if p.sku in sales else 0)
        == initial_stock[p.sku] + restocked.get(p.sku, 0) - p.stock
        for p in Product.objects.all()
    )
    revenue = sum((s.revenue for s in sales.values()), Decimal("0"))
    paid = Payment.objects.aggregate(total=Sum("amount"))["total"] or Decimal("0")
    report.revenue_matches_payments = revenue == paid


def run_scenario(
    config: DemoConfig, *, progress: Callable[[str], None] | None = None
) -> DemoReport:
    """Run the whole scenario on a migrated, empty database and measure the result."""
    say = progress or (lambda text: None)
    started = time.monotonic()
    connection = connections["default"]
    report = DemoReport(
        database=f"{connection.vendor} ({connection.settings_dict['NAME']})",
        relay_mode=relay_mode(),
    )
    initial_stock = seed_catalog(config)
    tally = Tally()
    with counting_retries() as retries:
        say(
            f"Rush: {config.threads} buyers want {RUSH_SKU} at the same instant, "
            f"{config.rush_rounds} times..."
        )
        rush(config, tally)
        say(f"Traffic: {config.orders} orders from {config.threads} threads...")
        traffic(config, tally)
        say("After-sales: paying and cancelling...")
        after_sales(config, tally)
        say("Restock: a stale page, then a fresh one...")
        restocked = restock(report, tally)
    report.conflicts_by_error = dict(retries.by_error)
    report.conflicts_retried = sum(retries.by_error.values())
    report.lock_waits_retried = retries.lock_waits
    report.rush_collides = writers_overlap()
    report.orders_attempted = tally.counts["attempted"]
    report.orders_rejected = tally.counts["rejected"]
    report.gave_up = tally.counts["gave_up"]
    report.errors = tally.errors
    report.relayed_on_commit = OutboxEvent.objects.filter(
        status=OutboxEvent.Status.DISPATCHED
    ).count()

    say("Relaying what is left...")
    drain(config, time.monotonic() + config.timeout)
    report.relayed_by_sweep = (
        OutboxEvent.objects.filter(status=OutboxEvent.Status.DISPATCHED).count()
        - report.relayed_on_commit
    )
    report.effects_before_redelivery = effects_count()
    report.redelivered = redeliver_some()
    report.effects_after_redelivery = effects_count()
    measure(report, initial_stock, restocked)
    report.seconds = time.monotonic() - started
    return report
