"""Writer threads: units of work on a few accounts, at the pace the trial sets.

Each writer draws its units from a generator seeded with the plan's seed and its index.
A unit counts one more on an account and records a ``Ticked`` and a ``Sequenced`` event
(sometimes a ``Flaky`` one); some units record one more event inside a savepoint that
rolls back, and some roll back whole. The book keeps what each writer knows for certain:
the units that committed (and how many events each wrote) and the ones that rolled back.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from django.db import connection

from django_uow import current_uow, unit_of_work

from .events import Ticked
from .models import Account
from .plan import Plan

#: Appended to a unit's token for the event recorded inside its rolled-back savepoint.
SAVEPOINT_SUFFIX = ":savepoint"


class RolledBackOnPurpose(Exception):
    """Raised inside a unit (or a savepoint) the writer wants rolled back."""


@dataclass
class Pace:
    """What writers do now: units per second (all writers together) and their events."""

    phase: str = "idle"
    rate: float = 0.0
    work_ms: int = 0
    doomed: bool = False


@dataclass
class Book:
    """What the writers know for certain about their units, filled from several threads."""

    committed: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    rolled_back: set[str] = field(default_factory=set)
    savepoints: set[str] = field(default_factory=set)
    per_account: Counter[int] = field(default_factory=Counter)
    flaky: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def commit(self, token: str, account: int, events: int, phase: str) -> None:
        with self.lock:
            self.committed[token] = (account, events, phase)
            self.per_account[account] += 1


class Writer(threading.Thread):
    def __init__(
        self,
        index: int,
        plan: Plan,
        accounts: list[int],
        pace: list[Pace],
        book: Book,
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"chaos-writer-{index}", daemon=True)
        self.index = index
        self.plan = plan
        self.accounts = accounts
        self.pace = pace
        self.book = book
        self.stop = stop
        self.rng = random.Random(plan.seed * 1000 + index)
        self.units = 0
        self.flaky_units = 0

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                pace = self.pace[0]  # the trial swaps in a new Pace between phases
                if pace.rate <= 0:
                    self.stop.wait(0.05)
                    next_at = time.monotonic()
                    continue
                next_at += self.plan.writers / pace.rate
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
                elif delay < -1.0:
                    next_at = time.monotonic()  # fell behind: do not burst to catch up
                if not self.stop.is_set():
                    self.one_unit(pace)
        finally:
            connection.close()

    def one_unit(self, pace: Pace) -> None:
        plan, rng = self.plan, self.rng
        self.units += 1
        token = f"w{self.index}-{self.units}"
        account = rng.choice(self.accounts)
        fail_times: int | None = None
        if rng.random() < plan.flaky_share:
            self.flaky_units += 1
            fail_times = rng.randint(*plan.flaky_fail_times)
            if pace.doomed and self.flaky_units % plan.doomed_every == 0:
                fail_times = plan.knobs.max_attempts + 1  # a dead letter first
        savepoint = rng.random() < plan.savepoint_share
        rollback = rng.random() < plan.rollback_share
        try:
            events = self.commit(token, account, pace.work_ms, fail_times, savepoint, rollback)
        except RolledBackOnPurpose:
            with self.book.lock:
                self.book.rolled_back.add(token)
                if savepoint:
                    self.book.savepoints.add(token + SAVEPOINT_SUFFIX)
            return
        except Exception:
            with self.book.lock:
                self.book.errors.append(f"{token}: {traceback.format_exc(limit=3)}")
            return
        self.book.commit(token, account, events, pace.phase)
        with self.book.lock:
            if savepoint:
                self.book.savepoints.add(token + SAVEPOINT_SUFFIX)
            if fail_times is not None:
                self.book.flaky[token] = fail_times

    @staticmethod
    @unit_of_work(retries=30)
    def commit(
        token: str,
        account_id: int,
        work_ms: int,
        fail_times: int | None,
        savepoint: bool,
        rollback: bool,
    ) -> int:
        account = Account.objects.get(pk=account_id)
        events = account.commit_unit(token, work_ms=work_ms, fail_times=fail_times)
        if savepoint:
            uow = current_uow()
            assert uow is not None  # inside @unit_of_work
            try:
                with uow.savepoint():
                    account.record_event(
                        Ticked(account_id=account_id, token=token + SAVEPOINT_SUFFIX)
                    )
                    raise RolledBackOnPurpose(token)
            except RolledBackOnPurpose:
                pass
        account.save()
        if rollback:
            raise RolledBackOnPurpose(token)
        return events
