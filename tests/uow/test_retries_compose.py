"""``retries=`` composes: a retrying service joins the unit it is called in, the outermost
unit that owns retries re-runs, handlers have ``retries=`` of their own, and deadlocks,
serialization failures and SQLite lock errors count as conflicts."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from django_uow import ConcurrencyError, Envelope, UnitOfWork, UnitOfWorkError, unit_of_work
from django_uow.delivery.handlers import event_handler, registry
from django_uow.delivery.running import run_handler
from django_uow.models import ProcessedEvent
from django_uow.retry import is_retryable
from django_uow.testing import simulate_conflict
from tests.testapp.events import Pinged
from tests.testapp.models import Counter, Note

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 20.0


def bump_counter(counter_id: int, attempts: list[int], stale_on: set[int]) -> None:
    attempts.append(1)
    counter = Counter.objects.get(pk=counter_id)
    if len(attempts) in stale_on:
        simulate_conflict(counter)
    counter.value += 1
    counter.save()


@pytest.fixture
def counter() -> Counter:
    return Counter.objects.create(name="c")


def test_a_retrying_service_joins_the_unit_it_is_called_in(counter: Counter) -> None:
    inner_attempts: list[int] = []

    @unit_of_work(retries=3, backoff=(0.0, 0.0))
    def service() -> None:
        Note.objects.create(text="service")
        bump_counter(counter.pk, inner_attempts, stale_on=set())

    with UnitOfWork():
        Note.objects.create(text="caller")
        service()
        assert connection.in_atomic_block
    assert sorted(Note.objects.values_list("text", flat=True)) == ["caller", "service"]
    assert inner_attempts == [1]


def test_the_outermost_unit_that_owns_retries_reruns(counter: Counter) -> None:
    outer_runs: list[int] = []
    inner_attempts: list[int] = []

    @unit_of_work(retries=3, backoff=(0.0, 0.0))
    def inner() -> None:
        bump_counter(counter.pk, inner_attempts, stale_on={1})

    @unit_of_work(retries=2, backoff=(0.0, 0.0))
    def outer() -> None:
        outer_runs.append(1)
        Note.objects.create(text=f"outer run {len(outer_runs)}")
        inner()

    outer()
    assert (len(outer_runs), len(inner_attempts)) == (2, 2)
    assert list(Note.objects.values_list("text", flat=True)) == ["outer run 2"]
    counter.refresh_from_db()
    # The conflicting bump was part of the first run, rolled back with it.
    assert (counter.value, counter.version) == (1, 2)


def test_inside_a_unit_without_retries_the_conflict_reaches_the_caller(counter: Counter) -> None:
    attempts: list[int] = []

    @unit_of_work(retries=3, backoff=(0.0, 0.0))
    def service() -> None:
        bump_counter(counter.pk, attempts, stale_on={1})

    with pytest.raises(ConcurrencyError), UnitOfWork():
        service()
    assert attempts == [1]  # nobody owning the whole transaction could re-run it


def test_inside_a_plain_atomic_block_retries_are_still_refused(counter: Counter) -> None:
    @unit_of_work(retries=1)
    def service() -> None:
        raise AssertionError("must not run")

    with pytest.raises(UnitOfWorkError, match="retries=1"), transaction.atomic():
        service()


# -- handlers with retries= -------------------------------------------------------------


@pytest.fixture
def temp_handlers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        registry.unregister(name)


def ping_envelope() -> Envelope:
    event = Pinged(note="x")
    return Envelope(
        event_id=uuid.uuid4(),
        event_type=Pinged.event_type,
        aggregate_type="",
        aggregate_id="",
        aggregate_version=None,
        occurred_at=timezone.now(),
        payload=event.to_payload(),
        headers={"schema_version": 1},
    )


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_handler_with_retries_reruns_its_unit_on_a_conflict(
    idempotent: bool, counter: Counter, temp_handlers: list[str]
) -> None:
    attempts: list[int] = []
    name = f"test.retrying_{idempotent}"

    @event_handler(Pinged, name=name, retries=2, idempotent=idempotent)
    def retrying(event: Pinged) -> None:
        Note.objects.create(text=f"attempt {len(attempts) + 1}")
        bump_counter(counter.pk, attempts, stale_on={1})

    temp_handlers.append(name)
    handler = registry.get(name)
    assert handler.retries == 2
    envelope = ping_envelope()
    assert run_handler(handler, envelope) is True
    assert len(attempts) == 2
    assert list(Note.objects.values_list("text", flat=True)) == ["attempt 2"]
    (delivery,) = ProcessedEvent.objects.filter(handler=name)
    assert delivery.status == "succeeded"


def test_a_handler_without_retries_fails_on_the_first_conflict(
    counter: Counter, temp_handlers: list[str]
) -> None:
    attempts: list[int] = []

    @event_handler(Pinged, name="test.no_retries")
    def once(event: Pinged) -> None:
        bump_counter(counter.pk, attempts, stale_on={1})

    temp_handlers.append("test.no_retries")
    with pytest.raises(ConcurrencyError):
        run_handler(registry.get("test.no_retries"), ping_envelope())
    assert attempts == [1]
    (delivery,) = ProcessedEvent.objects.filter(handler="test.no_retries")
    assert (delivery.status, delivery.attempts) == ("retrying", 1)  # a failed attempt


def test_a_retrying_service_called_by_a_handler_joins_the_handlers_unit(
    counter: Counter, temp_handlers: list[str]
) -> None:
    attempts: list[int] = []

    @unit_of_work(retries=5, backoff=(0.0, 0.0))
    def service() -> None:
        bump_counter(counter.pk, attempts, stale_on={1})

    @event_handler(Pinged, name="test.calls_service", retries=1)
    def calls_service(event: Pinged) -> None:
        service()

    temp_handlers.append("test.calls_service")
    assert run_handler(registry.get("test.calls_service"), ping_envelope()) is True
    assert len(attempts) == 2  # the handler's unit re-ran, with the service inside it
    (delivery,) = ProcessedEvent.objects.filter(handler="test.calls_service")
    assert delivery.status == "succeeded"


def test_handler_retries_are_validated() -> None:
    with pytest.raises(ValueError, match="retries"):
        event_handler(Pinged, retries=-1)


# -- what counts as a conflict ----------------------------------------------------------


class DriverError(Exception):
    def __init__(self, *args: Any, sqlstate: str | None = None) -> None:
        super().__init__(*args)
        self.sqlstate = sqlstate


def wrapped(message: str, cause: BaseException | None = None) -> OperationalError:
    error = OperationalError(message)
    error.__cause__ = cause
    return error


def test_deadlocks_serialization_failures_and_lock_errors_are_retryable() -> None:
    assert is_retryable(wrapped("deadlock", DriverError(sqlstate="40P01")))
    assert is_retryable(wrapped("serialize", DriverError(sqlstate="40001")))
    assert is_retryable(wrapped("mysql", DriverError(1213, "Deadlock found")))
    assert is_retryable(wrapped("database is locked"))
    assert is_retryable(wrapped("database table is locked"))
    assert is_retryable(wrapped("database table is locked: testapp_counter"))
    assert not is_retryable(wrapped("no such table: x"))
    assert not is_retryable(wrapped("dup", DriverError(sqlstate="23505")))


@pytest.mark.postgres
def test_a_deadlock_that_outlasts_the_retries_reraises_the_original_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="django_uow.retry")
    attempts: list[int] = []

    @unit_of_work(retries=2, backoff=(0.0, 0.0))
    def always_deadlocks() -> None:
        attempts.append(1)
        Note.objects.create(text="rolled back")
        with connection.cursor() as cursor:
            cursor.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected (test)' "
                "USING ERRCODE = '40P01'; END $$"
            )

    with pytest.raises(OperationalError, match="deadlock detected") as caught:
        always_deadlocks()
    assert getattr(caught.value.__cause__, "sqlstate", None) == "40P01"
    assert len(attempts) == 3
    assert not Note.objects.exists()
    assert len([r for r in caplog.records if r.name == "django_uow.retry"]) == 2


@pytest.mark.postgres
def test_versioned_saves_in_opposite_orders_deadlock_and_both_succeed_with_retries() -> None:
    first = Counter.objects.create(name="first")
    second = Counter.objects.create(name="second")
    both_hold_one = threading.Barrier(2, timeout=TIMEOUT)
    attempts = {"x": 0, "y": 0}
    errors: list[BaseException] = []

    def writer(name: str, order: list[int]) -> None:
        @unit_of_work(retries=3, backoff=(0.0, 0.01))
        def write() -> None:
            attempts[name] += 1
            rows = [Counter.objects.get(pk=pk) for pk in order]
            rows[0].value = F("value") + 1
            rows[0].save()
            if attempts[name] == 1:
                both_hold_one.wait()
            rows[1].value = F("value") + 1
            rows[1].save()

        try:
            write()
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=writer, args=("x", [first.pk, second.pk]), daemon=True),
        threading.Thread(target=writer, args=("y", [second.pk, first.pk]), daemon=True),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert errors == []
    assert sum(attempts.values()) >= 3  # someone lost a deadlock or a version race
    assert sorted(Counter.objects.values_list("value", flat=True)) == [2, 2]
