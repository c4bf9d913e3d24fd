"""``@unit_of_work(retries=N)``: re-run the whole function on conflicts, outermost only.

The thread tests need PostgreSQL: each worker runs on its own connection, so two
transactions really race for the same row.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Concat

from django_uow import ConcurrencyError, UnitOfWork, UnitOfWorkError, unit_of_work
from django_uow.models import OutboxEvent
from django_uow.retry import backoff_delay, is_retryable
from tests.testapp.models import Counter, Note, Order

TIMEOUT = 20.0  # seconds any thread handshake may wait before the test fails


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``target`` on its own thread (and so its own connection); collect its error."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def join(thread: threading.Thread, errors: list[BaseException]) -> None:
    thread.join(TIMEOUT)
    assert not thread.is_alive(), "worker thread did not finish"
    if errors:
        raise errors[0]


# -- retrying on version conflicts (any database) ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_conflict_rolls_back_and_reruns_the_whole_function() -> None:
    counter = Counter.objects.create(name="c")
    attempts: list[int] = []

    @unit_of_work(retries=3, backoff=(0.0, 0.0))
    def increment() -> int:
        attempts.append(len(attempts) + 1)
        loaded = Counter.objects.get(pk=counter.pk)
        Note.objects.create(text=f"attempt {len(attempts)}")
        if len(attempts) == 1:
            # Another writer gets in between our read and our save.
            Counter.objects.filter(pk=counter.pk).update_versioned(value=F("value") + 100)
        loaded.value += 1
        loaded.save()
        return loaded.value

    assert increment() == 1
    assert attempts == [1, 2]
    row = Counter.objects.get(pk=counter.pk)
    # The first attempt (its note and the +100) was rolled back as a whole.
    assert (row.value, row.version) == (1, 2)
    assert list(Note.objects.values_list("text", flat=True)) == ["attempt 2"]


@pytest.mark.django_db(transaction=True)
def test_events_of_a_failed_attempt_are_discarded() -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("3.00"))
    attempts: list[int] = []

    @unit_of_work(retries=2, backoff=(0.0, 0.0))
    def place() -> None:
        attempts.append(1)
        loaded = Order.objects.get(pk=order.pk)
        loaded.place()
        if len(attempts) == 1:
            Order.objects.filter(pk=order.pk).update_versioned(note="concurrent")
        loaded.save()

    place()
    assert len(attempts) == 2
    (event,) = OutboxEvent.objects.all()  # one OrderPlaced, from the attempt that committed
    assert event.event_type.endswith("OrderPlaced")
    assert event.aggregate_version == Order.objects.get(pk=order.pk).version == 2


@pytest.mark.django_db(transaction=True)
def test_final_failure_reraises_the_original_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="django_uow.retry")
    raised: list[ConcurrencyError] = []

    @unit_of_work(retries=2, backoff=(0.0, 0.0))
    def always_conflicts() -> None:
        Note.objects.create(text="never kept")
        error = ConcurrencyError("testapp.Counter", 7, 3, actual_version=4)
        raised.append(error)
        raise error

    with pytest.raises(ConcurrencyError) as caught:
        always_conflicts()
    assert len(raised) == 3  # the first run and two retries
    assert caught.value is raised[-1]
    assert caught.value.expected_version == 3
    assert not Note.objects.exists()
    retries = [r for r in caplog.records if r.name == "django_uow.retry"]
    assert [r.getMessage().split(" in ")[0] for r in retries] == [
        "Retrying test_final_failure_reraises_the_original_error.<locals>.always_conflicts "
        "(attempt 2 of 3)",
        "Retrying test_final_failure_reraises_the_original_error.<locals>.always_conflicts "
        "(attempt 3 of 3)",
    ]


@pytest.mark.django_db(transaction=True)
def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    @unit_of_work(retries=5, backoff=(0.0, 0.0))
    def broken() -> None:
        calls.append(1)
        Note.objects.create(text="rolled back")
        raise ValueError("business rule violated")

    with pytest.raises(ValueError, match="business rule violated"):
        broken()
    assert calls == [1]
    assert not Note.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_without_retries_a_conflict_propagates_at_once() -> None:
    counter = Counter.objects.create(name="c")
    stale = Counter.objects.get(pk=counter.pk)
    counter.save()
    calls: list[int] = []

    @unit_of_work
    def save_stale() -> None:
        calls.append(1)
        stale.save()

    with pytest.raises(ConcurrencyError):
        save_stale()
    assert calls == [1]


@pytest.mark.django_db(transaction=True)
def test_retries_inside_a_unit_of_work_join_it() -> None:
    """The outer unit owns the transaction: the inner function runs once, as a savepoint
    (tests/uow/test_retries_compose.py covers who re-runs on a conflict)."""
    calls: list[int] = []

    @unit_of_work(retries=3)
    def inner() -> None:
        calls.append(1)
        Note.objects.create(text="inner")

    with UnitOfWork():
        inner()
    assert calls == [1]
    assert Note.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_retries_are_refused_inside_atomic() -> None:
    """E.g. ATOMIC_REQUESTS: a retry would re-run only part of the transaction."""

    @unit_of_work(retries=1)
    def inner() -> None:
        raise AssertionError("must not run")

    with pytest.raises(UnitOfWorkError, match="Put retries= on the outermost"):
        with transaction.atomic():
            inner()


@pytest.mark.django_db(transaction=True)
def test_nested_without_retries_is_a_savepoint_and_allowed() -> None:
    @unit_of_work
    def inner() -> None:
        Note.objects.create(text="inner")

    @unit_of_work(retries=2)
    def outer() -> None:
        inner()

    outer()
    assert Note.objects.count() == 1


def test_retries_option_is_validated() -> None:
    with pytest.raises(ValueError, match=r"retries=-1\): retries must be 0 or more"):
        unit_of_work(retries=-1)
    with pytest.raises(TypeError, match="cannot take retries="):
        with unit_of_work(retries=2):
            pass


def test_backoff_is_exponential_capped_and_jittered() -> None:
    random.seed(1234)
    samples = {
        attempt: [backoff_delay(attempt, 0.01, 0.5) for _ in range(200)]
        for attempt in (1, 2, 3, 10)
    }
    for attempt, delays in samples.items():
        ceiling = min(0.5, 0.01 * 2 ** (attempt - 1))
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jitter: not one fixed delay
    assert max(samples[10]) > 0.25  # grows up to the cap...
    assert max(samples[1]) <= 0.01  # ...from a small start


def test_retryable_errors() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    def wrapped(sqlstate: str) -> OperationalError:
        error = OperationalError("wrapped")
        error.__cause__ = PgError(sqlstate)
        return error

    assert is_retryable(ConcurrencyError("a.B", 1, 1))
    assert is_retryable(wrapped("40001"))  # serialization_failure
    assert is_retryable(wrapped("40P01"))  # deadlock_detected
    assert not is_retryable(wrapped("23505"))  # unique_violation is a bug, not a race
    assert not is_retryable(ValueError("x"))


# -- real races on a database server --------------------------------------------------


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_four_writers_lose_no_increment() -> None:
    """Guarantee 6: 4 workers x 50 read-modify-write increments of one row end at 200."""
    counter = Counter.objects.create(name="shared")
    workers, per_worker = 4, 50
    attempts = 0
    attempts_lock = threading.Lock()
    start = threading.Barrier(workers, timeout=TIMEOUT)

    # One decorated function shared by every thread, as a module-level service would be.
    @unit_of_work(retries=50, backoff=(0.001, 0.05))
    def increment() -> None:
        nonlocal attempts
        with attempts_lock:
            attempts += 1
        loaded = Counter.objects.get(pk=counter.pk)
        time.sleep(0.0005)  # some work between the read and the write
        loaded.value += 1
        loaded.save()

    def worker() -> None:
        start.wait()
        for _ in range(per_worker):
            increment()

    threads = [in_thread(worker) for _ in range(workers)]
    for thread, errors in threads:
        join(thread, errors)

    row = Counter.objects.get(pk=counter.pk)
    assert row.value == workers * per_worker
    assert row.version == 1 + workers * per_worker
    conflicts = attempts - workers * per_worker
    assert conflicts > 0, "the workers never conflicted, so the test proved nothing"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_serialization_failure_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="django_uow.retry")
    note = Note.objects.create(text="0")
    has_read, other_committed = threading.Event(), threading.Event()
    attempts: list[int] = []

    @unit_of_work(retries=3, backoff=(0.0, 0.0))
    def append_a() -> None:
        attempts.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        current = Note.objects.get(pk=note.pk).text  # the snapshot is taken here
        if len(attempts) == 1:
            has_read.set()
            assert other_committed.wait(TIMEOUT)
        Note.objects.filter(pk=note.pk).update(text=current + "a")

    thread, errors = in_thread(append_a)
    assert has_read.wait(TIMEOUT)
    Note.objects.filter(pk=note.pk).update(text=Concat(F("text"), Value("b")))  # commits at once
    other_committed.set()
    join(thread, errors)

    assert len(attempts) == 2
    assert Note.objects.get(pk=note.pk).text == "0ba"  # b's write was not lost
    (retry,) = [r for r in caplog.records if r.name == "django_uow.retry"]
    assert "OperationalError" in retry.getMessage()
    assert "could not serialize access" in retry.getMessage()


@pytest.mark.server_db
@pytest.mark.django_db(transaction=True)
def test_deadlock_victim_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="django_uow.retry")
    first = Note.objects.create(text="")
    second = Note.objects.create(text="")
    both_locked_one = threading.Barrier(2, timeout=TIMEOUT)
    attempts = {"x": 0, "y": 0}
    # The victim's retry waits for the other writer's commit: otherwise, on a loaded
    # machine, the retry can take a row before the survivor does and deadlock it in turn.
    committed = {"x": threading.Event(), "y": threading.Event()}

    def writer(name: str, order: list[int]) -> Callable[[], None]:
        other = "y" if name == "x" else "x"

        @unit_of_work(retries=3, backoff=(0.0, 0.01))
        def write() -> None:
            attempts[name] += 1
            if attempts[name] > 1:
                assert committed[other].wait(TIMEOUT), "the surviving writer never committed"
            Note.objects.filter(pk=order[0]).update(text=Concat(F("text"), Value(name)))
            if attempts[name] == 1:
                both_locked_one.wait()  # each holds one row and wants the other's
            Note.objects.filter(pk=order[1]).update(text=Concat(F("text"), Value(name)))

        def write_then_say_so() -> None:
            write()
            committed[name].set()

        return write_then_say_so

    x = in_thread(writer("x", [first.pk, second.pk]))
    y = in_thread(writer("y", [second.pk, first.pk]))
    join(*x)
    join(*y)

    assert sorted(attempts.values()) == [1, 2]  # exactly one deadlock victim, retried once
    texts = sorted(Note.objects.values_list("text", flat=True))
    assert [sorted(t) for t in texts] == [["x", "y"], ["x", "y"]]  # both writes, both rows
    (retry,) = [r for r in caplog.records if r.name == "django_uow.retry"]
    # PostgreSQL: "deadlock detected"; MariaDB: "Deadlock found when trying to get lock".
    assert "deadlock" in retry.getMessage().lower()


@pytest.mark.django_db
def test_retries_work_inside_a_test_case_transaction() -> None:
    """The atomic block Django's TestCase (and plain ``django_db``) opens does not count as
    an outer transaction: the unit of work is a savepoint that a retry rolls back."""
    counter = Counter.objects.create(name="c")
    stale = Counter.objects.get(pk=counter.pk)
    counter.save()  # stale is now one version behind
    calls: list[int] = []

    @unit_of_work(retries=2, backoff=(0.0, 0.0))
    def bump() -> None:
        calls.append(1)
        Note.objects.create(text=f"attempt {len(calls)}")
        target = stale if len(calls) == 1 else Counter.objects.get(pk=counter.pk)
        target.value += 1
        target.save()

    bump()
    assert calls == [1, 1]
    counter.refresh_from_db()
    assert (counter.value, counter.version) == (1, 3)
    # The first attempt's note was rolled back with its savepoint.
    assert list(Note.objects.values_list("text", flat=True)) == ["attempt 2"]
