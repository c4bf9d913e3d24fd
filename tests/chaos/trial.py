"""One chaos trial from start to ledger: ``run_trial(plan, database)``.

1. Start the trial's two Redis servers (the broker, restarted on purpose, and the
   flaky handler's run counter), two relays (one with a skewed clock) and a Celery
   worker, all on ``database``; warm up until one unit of work has had its effects.
2. Overload: writers outrun the worker (its idempotent handler sleeps) for a minute,
   then the worker catches up. The broker and the reports are sampled throughout.
3. Chaos: writers at a moderate rate while the fault driver injects the plan's faults.
4. Settle: the faults stop, everything killed or stopped runs again, the operator runs
   the dead letters again; the trial waits, bounded, until nothing is owed.
5. The ledger and the samples are checked; the report lists every violated check.

The trial's own process commits the units of work (writer threads), acts as the
operator and reads the reports, with the same DJANGO_UOW as the children.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import connection, connections
from django.test import override_settings

from django_uow.models import OutboxEvent, ProcessedEvent

from . import ledger as ledger_checks
from . import monitoring
from .cluster import WORKER, Cluster
from .faults import FaultDriver, FaultLog, FaultRecord
from .models import Account, Arrival, Effect
from .operators import TRIAL_APP, Operator, celery_app
from .plan import KINDS, Plan
from .probes import Reported, read_reported, read_tables
from .report import Report, violation
from .servers import RedisServer
from .writers import Book, Pace, Writer

#: A directory to keep the children's whole logs in (they are discarded otherwise).
LOGS_ENV = "UOW_CHAOS_LOGS"
WARM_UP_BOUND = 120.0
#: Below this many owed deliveries at its peak, the overload phase did not overload.
OVERLOAD_MIN_OWED = 150


class Sampler(threading.Thread):
    """Reads the tables, the broker and the reports every ``every`` seconds."""

    def __init__(
        self, using: str, broker: RedisServer, every: float, phase: list[str], cluster: Cluster
    ):
        super().__init__(name="chaos-sampler", daemon=True)
        self.using = using
        self.cluster = cluster
        #: Children found dead that nobody killed: (when, name, the end of its log).
        self.exits: list[tuple[float, str, str]] = []
        self.broker = broker.client(timeout=1.0)
        self.every = every
        self.phase = phase
        self.samples: list[Reported] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                for name in self.cluster.exited_by_themselves():
                    child = self.cluster[name]
                    self.exits.append((time.time(), name, child.tail(1500)))
                    child.start()
                try:
                    self.samples.append(read_reported(self.using, self.broker, self.phase[0]))
                except Exception:
                    self.errors.append(traceback.format_exc(limit=4))
                    connection.close()
                self.stop.wait(max(0.0, self.every - (time.monotonic() - started)))
        finally:
            connection.close()


class Trial:
    def __init__(
        self, plan: Plan, database: str, using: str = "default", log: Callable[[str], None] = print
    ):
        self.plan = plan
        self.database = database
        self.using = using
        self.log = log
        self.t0 = time.time()
        self.started = time.monotonic()
        self.report = Report(seed=plan.seed, plan=plan.describe())
        self.book = Book()
        self.pace = [Pace()]
        self.phase = ["start"]
        self.faults = FaultLog()
        self.stop_writers = threading.Event()
        self.stop_faults = threading.Event()
        self.broker = RedisServer("broker")
        self.counter = RedisServer("counter")
        self.cluster: Cluster | None = None
        self.writers: list[Writer] = []
        self.sampler: Sampler | None = None
        self.driver: FaultDriver | None = None
        self.phase_started = time.monotonic()

    # -- phases -----------------------------------------------------------------------------

    def enter(self, phase: str, pace: Pace | None = None) -> None:
        now = time.monotonic()
        self.report.phases[self.phase[0]] = now - self.phase_started
        self.phase_started = now
        self.phase[0] = phase
        if pace is not None:
            self.pace[0] = pace
        self.log(f"[chaos +{now - self.started:5.1f}s] {phase}")

    def run(self) -> Report:
        plan = self.plan
        settings = {
            **plan.knobs.django_uow(),
            "PUBLISHERS": ["tests.chaos.operators.OperatorPublisher"],
            "HEALTH": plan.knobs.health(),
        }
        self.log(plan.describe())
        try:
            self.counter.start()
            self.broker.start()
            TRIAL_APP[:] = [celery_app(self.broker.url)]
            with override_settings(DJANGO_UOW=settings):
                self._run()
        finally:
            self._shut_down()
            self.report.seconds = time.monotonic() - self.started
        return self.report

    def _run(self) -> None:
        plan = self.plan
        accounts = [
            Account.objects.using(self.using).create(name=f"chaos-{i}").pk
            for i in range(plan.accounts)
        ]
        operator = Operator(self.using)
        self.cluster = Cluster(plan, self.database, self.broker, self.counter)
        self.cluster.start()
        self.writers = [
            Writer(i, plan, accounts, self.pace, self.book, self.stop_writers)
            for i in range(plan.writers)
        ]
        self.enter("warm-up")
        self._warm_up(accounts[0])
        self.sampler = Sampler(self.using, self.broker, plan.sample_every, self.phase, self.cluster)
        self.sampler.start()
        for writer in self.writers:
            writer.start()

        self.enter("overload", Pace("overload", plan.overload_rate, plan.overload_work_ms))
        time.sleep(plan.overload_seconds)
        self.enter("catch-up", Pace("catch-up", plan.chaos_rate))
        self._wait(lambda t: t.owed < 10 and t.true_age < 3.0, plan.catchup_bound)

        self.enter("chaos", Pace("chaos", plan.chaos_rate, doomed=True))
        self.driver = FaultDriver(
            plan, self.cluster, self.broker, operator, self.faults, self.stop_faults
        )
        self.driver.start()
        time.sleep(plan.chaos_seconds)
        self.stop_faults.set()
        self.driver.join(timeout=60)

        self.enter("settle", Pace("settle"))
        self.stop_writers.set()
        for writer in self.writers:
            writer.join(timeout=60)
        restarted = self.cluster.ensure_running()
        if restarted:  # the driver resumes and restarts what it stopped: nothing, normally
            self.log(f"settle: {', '.join(restarted)}")
        settled_at = self._settle(operator)
        self.sampler.stop.set()
        self.sampler.join(timeout=30)
        self.enter("ledger")
        self._judge(settled_at)

    def _warm_up(self, account: int) -> None:
        writer = Writer(99, self.plan, [account], self.pace, self.book, threading.Event())
        writer.one_unit(Pace("warm-up"))
        writer.units = 0
        deadline = time.monotonic() + WARM_UP_BOUND
        while time.monotonic() < deadline:
            if Effect.objects.using(self.using).count() >= 2:
                return
            assert self.cluster is not None
            gone = self.cluster.exited_by_themselves()
            if gone:
                raise RuntimeError(
                    f"{', '.join(gone)} exited at start-up: "
                    + " | ".join(self.cluster[name].tail(1500) for name in gone)
                )
            time.sleep(0.25)
        raise RuntimeError(
            "the warm-up unit of work had no effect within "
            f"{WARM_UP_BOUND:.0f}s; worker log: {self.cluster and self.cluster['worker'].tail(1500)}"
        )

    def _wait(self, done: Callable[[Any], bool], bound: float) -> bool:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if done(read_tables(self.using)):
                return True
            time.sleep(0.5)
        return False

    def _settle(self, operator: Operator) -> float | None:
        """Wait until nothing is owed; run dead letters again as an operator would.

        The bound is ``settle_bound`` while the backlog stands still, and stretches (up to
        ``settle_cap``) while it keeps shrinking: a worker that fell behind on a loaded
        machine is catching up, not stuck. Returns how long it took, or None when no
        progress was seen for ``settle_bound`` (or the cap was reached)."""
        start = time.monotonic()
        cap = start + self.plan.settle_cap
        last_duty = 0.0
        best: int | None = None
        progressed = start
        while time.monotonic() < cap and time.monotonic() - progressed < self.plan.settle_bound:
            tables = read_tables(self.using)
            if tables.quiet:
                return time.monotonic() - start
            left = tables.missing + tables.owed + tables.blocked + tables.pending
            if best is None or left < best:
                best, progressed = left, time.monotonic()
            if (tables.failed_deliveries or tables.failed_events) and (
                time.monotonic() - last_duty > 3.0
            ):
                self._operator_duty(operator)
                last_duty = time.monotonic()
            time.sleep(0.5)
        return None

    def _operator_duty(self, operator: Operator) -> None:
        for kind, action in (
            ("settle_redeliver_failed", operator.redeliver_failed),
            ("settle_retry_failed_events", lambda: operator.retry_now(operator.failed_events())),
        ):
            start, detail, error = time.time(), "", ""
            try:
                detail = action()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            self.faults.add(FaultRecord(kind, "", start, time.time(), detail, error))

    # -- judging -----------------------------------------------------------------------------

    def _judge(self, settled_after: float | None) -> None:
        plan, report = self.plan, self.report
        knobs = plan.knobs
        assert self.sampler is not None
        samples = self.sampler.samples
        final = self._final_reading()
        led = ledger_checks.read_ledger(
            self.using, self.book, self.counter.client(), self.t0, self.faults.windows()
        )
        one_publish, calm = ledger_checks.check_one_publish(led)
        flaky, calm_flaky = ledger_checks.check_flaky_attempts(led, knobs.max_attempts)
        lag = monitoring.check_lag(samples, self.t0)
        waited = (
            f"settled {settled_after:.1f}s after the faults stopped"
            if settled_after is not None
            else f"not settled: no progress for {plan.settle_bound:.0f}s (or {plan.settle_cap:.0f}s in all)"
        )
        checks: list[tuple[str, str, list[str]]] = [
            (
                "units",
                "every committed unit's events are in the outbox once; rolled-back units and "
                "savepoints left none",
                ledger_checks.check_units(led),
            ),
            (
                "effects exactly once",
                "every committed event had its effect once at each of its handlers",
                ledger_checks.check_effects(led),
            ),
            (
                "aggregate order",
                "the ordered handler ran each account's events in version order",
                ledger_checks.check_order(led),
            ),
            (
                "settled",
                f"nothing left published, retrying, blocked or failed past HANDLER_DEADLINE "
                f"({knobs.handler_deadline:g}s) plus one sweep ({waited})",
                ledger_checks.check_settled(led, final.after.db_now),
            ),
            (
                "one publish per delivery",
                "a delivery no fault touched reached the worker fresh exactly once "
                f"({calm.get('chaos.tick', 0)} idempotent, {calm.get('chaos.flaky', 0)} flaky "
                "deliveries untouched by faults)",
                one_publish,
            ),
            (
                "flaky retries",
                f"an untouched flaky delivery ran fail_times + 1 times (past Celery's default "
                f"3 retries, MAX_ATTEMPTS {knobs.max_attempts}) and its row counts them "
                f"({calm_flaky} deliveries)",
                flaky,
            ),
            (
                "queue bound",
                "while the worker was behind, the broker held at most the owed deliveries "
                f"plus {monitoring.queue_slack(knobs)} (2 relays x BATCH_SIZE x 3 handlers "
                "+ 2 in the worker)",
                monitoring.check_queue(samples, knobs, self.t0),
            ),
            *[
                (
                    f"consumer lag: {name}",
                    "the reported consumer lag stayed within 10 % + "
                    f"{monitoring.LAG_TOLERANCE:g}s of the true age of the oldest missing effect",
                    evidence,
                )
                for name, evidence in lag.items()
            ],
            (
                "health: MAX_CONSUMER_LAG",
                f"the health view answered 503 while the true lag was over "
                f"{knobs.max_consumer_lag:g}s, 200 while under",
                monitoring.check_health_lag(samples, knobs, self.t0),
            ),
            (
                "failed handler deliveries",
                "health (MAX_FAILED 0), outbox_status and a gauge counted the failed handler "
                "deliveries the table holds",
                monitoring.check_failed(samples, knobs, self.t0),
            ),
            (
                "no relay exited by itself",
                "relay_outbox ran until killed (a relay found dead was restarted)",
                [
                    f"{name} found dead at {led.rel(at)}: {' / '.join(tail.splitlines()[-4:])}"
                    for at, name, tail in self.sampler.exits
                    if name != WORKER
                ],
            ),
            (
                "monitoring at the end",
                "once settled, outbox_status, health and the collector agree with the tables",
                monitoring.check_end(final, knobs),
            ),
        ]
        for name, summary, evidence in checks:
            report.checks.append(name)
            report.violations += violation(name, summary, evidence)
        for at, name, tail in self.sampler.exits:
            if name == WORKER:  # Celery's own process: a supervisor restarts it, as here
                last = [line for line in tail.splitlines() if line.strip()][-1:]
                report.notes.append(
                    f"the Celery worker exited by itself at {led.rel(at)} and was restarted: "
                    f"{last[0].strip() if last else '(no output)'}"
                )
        self._sanity(samples, calm, calm_flaky)

    def _final_reading(self) -> Reported:
        """The reports once nothing moves: both reads of the tables agree (a few tries)."""
        client = self.broker.client()
        reading = read_reported(self.using, client, "end")
        for _ in range(5):
            if reading.before == reading.after or (reading.before.quiet and reading.after.quiet):
                break
            time.sleep(1.0)
            reading = read_reported(self.using, client, "end")
        return reading

    def _sanity(self, samples: list[Reported], calm: dict[str, int], calm_flaky: int) -> None:
        """Did the trial do what it claims? Failing these is the harness's problem."""
        report, plan = self.report, self.plan
        counts = self.faults.counts()
        report.faults = counts
        report.fault_errors = Counter(r.kind for r in self.faults.records if r.error)
        report.fault_lines = [r.describe(self.t0) for r in self.faults.records]
        missing = [kind for kind in KINDS if not counts.get(kind)]
        if missing:
            report.harness.append(f"faults never injected: {', '.join(missing)}")
        if self.driver is not None and self.driver.crashed:
            report.harness.append(f"the fault driver crashed: {self.driver.crashed}")
        overload = [s for s in samples if s.phase == "overload"]
        peak = max((s.before.owed for s in overload), default=0)
        depth = max(((s.queued or 0) + (s.unacked or 0) for s in overload), default=0)
        age = max((s.before.true_age for s in overload), default=0.0)
        report.stats["overload peak"] = (
            f"{peak} owed deliveries, {depth} broker messages, oldest missing effect {age:.1f}s"
        )
        if peak < OVERLOAD_MIN_OWED:
            report.harness.append(
                f"the overload phase peaked at {peak} owed deliveries (< {OVERLOAD_MIN_OWED}): "
                "the writers did not outrun the worker"
            )
        committed = len(self.book.committed)
        report.stats["units"] = (
            f"{committed} committed, {len(self.book.rolled_back)} rolled back, "
            f"{len(self.book.savepoints)} savepoints rolled back, "
            f"{len(self.book.flaky)} with a flaky event"
        )
        report.stats["samples"] = f"{len(samples)} ({self.plan.sample_every:g}s apart)"
        if self.book.errors:
            report.harness.append(
                f"{len(self.book.errors)} unit(s) of work raised unexpectedly: {self.book.errors[0]}"
            )
        if calm.get("chaos.tick", 0) < 50 or calm_flaky < 3:
            report.harness.append(
                f"too few deliveries untouched by faults to judge one publish per delivery: "
                f"{calm} (flaky {calm_flaky})"
            )
        if not any(t > plan.knobs.max_attempts for t in self.book.flaky.values()):
            report.harness.append("no flaky event failed past MAX_ATTEMPTS (no dead letter)")
        if self.sampler is not None and self.sampler.errors:
            report.harness.append(
                f"{len(self.sampler.errors)} sample(s) failed: {self.sampler.errors[0]}"
            )

    # -- shutting down -----------------------------------------------------------------------

    def _shut_down(self) -> None:
        self.stop_faults.set()
        self.stop_writers.set()
        for thread in [*self.writers, self.driver, self.sampler]:
            if thread is not None and thread.is_alive():
                if isinstance(thread, Sampler):
                    thread.stop.set()
                thread.join(timeout=30)
        if self.cluster is not None:
            self.report.tails = {
                name: child.tail(3000) for name, child in self.cluster.children.items()
            }
            keep = os.environ.get(LOGS_ENV)
            self.cluster.close(Path(keep) if keep else None)
        self.broker.close()
        self.counter.close()
        TRIAL_APP.clear()
        for alias in connections:
            connections[alias].close()


def run_trial(
    plan: Plan, database: str, *, using: str = "default", log: Callable[[str], None] = print
) -> Report:
    """Run one trial of ``plan`` on the database named ``database`` (alias ``using``)."""
    return Trial(plan, database, using, log).run()


def reset_tables(using: str = "default") -> None:
    """Empty what a trial writes (the benchmark's database is reused between runs)."""
    from django.contrib.auth import get_user_model

    tables = [m._meta.db_table for m in (OutboxEvent, ProcessedEvent, Effect, Arrival, Account)]
    with connections[using].cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
    get_user_model().objects.using(using).filter(username="chaos-operator").delete()
