"""Units with a time limit: the database stops them, they roll back, UnitOfWorkTimeout."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections
from django.test import override_settings

from django_uow import UnitOfWork, UnitOfWorkTimeout, unit_of_work
from tests.project.test_checks import ids, run
from tests.testapp.models import Counter, Order

pytestmark = pytest.mark.django_db(transaction=True)


def sleep_in_database(seconds: float) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_sleep(%s)", [seconds])
        elif connection.vendor == "mysql":
            cursor.execute("SELECT SLEEP(%s)", [seconds])
        else:
            pytest.skip("SQLite has no statement timeout: see the busy-timeout test")


@pytest.mark.parametrize("vendor", ["postgresql", "mysql"])
def test_a_statement_past_the_limit_rolls_back_everything(vendor: str) -> None:
    if connection.vendor != vendor:
        pytest.skip(f"needs {vendor}")
    started = time.monotonic()
    with pytest.raises(UnitOfWorkTimeout) as caught:
        with UnitOfWork(timeout=0.5):
            Counter.objects.create(name="written first")
            sleep_in_database(5)
    elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed  # stopped at about the limit, not after 5 s
    assert caught.value.limit == 0.5
    assert "UnitOfWork on 'default' ran past its time limit of 0.5s" in str(caught.value)
    assert not Counter.objects.exists()  # nothing written
    # The connection is clean afterwards: no leftover limit on the next unit.
    with UnitOfWork():
        sleep_in_database(0.8)
        Counter.objects.create(name="after")
    assert Counter.objects.count() == 1


def test_a_unit_blocked_on_a_row_lock_times_out_and_the_holder_is_unaffected() -> None:
    if connection.vendor not in ("postgresql", "mysql"):
        pytest.skip("needs row locks (PostgreSQL or MariaDB)")
    counter = Counter.objects.create(name="hot", value=1)
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        holder = connections.create_connection("default")  # a connection of its own
        holder.set_autocommit(False)
        with holder.cursor() as cursor:
            table = holder.ops.quote_name(Counter._meta.db_table)
            cursor.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", [counter.pk])
            locked.set()
            release.wait(20)
            cursor.execute(f"UPDATE {table} SET value = 42 WHERE id = %s", [counter.pk])
        holder.commit()
        holder.close()

    thread = threading.Thread(target=hold_the_row)
    thread.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        with pytest.raises(UnitOfWorkTimeout, match="time limit of 1s"):
            with UnitOfWork(timeout=1):
                Counter.objects.select_for_update().get(pk=counter.pk)
        assert time.monotonic() - started < 5
    finally:
        release.set()
        thread.join(30)
    assert Counter.objects.get(pk=counter.pk).value == 42  # the holder committed its change


def test_python_time_past_the_limit_rolls_back_at_commit() -> None:
    # PostgreSQL ends the idle transaction itself (idle_in_transaction_session_timeout);
    # elsewhere the unit finds its time spent when it is about to commit.
    with pytest.raises(UnitOfWorkTimeout, match="ran past its time limit of 0.2s"):
        with UnitOfWork(timeout=0.2):
            Counter.objects.create(name="slow")
            time.sleep(0.6)  # a slow HTTP call, say
    assert not Counter.objects.exists()
    with UnitOfWork():  # the connection works again
        Counter.objects.create(name="next")
    assert Counter.objects.count() == 1


def test_a_timeout_is_not_retried_unless_asked() -> None:
    calls: list[int] = []

    @unit_of_work(retries=3, timeout=0.1, backoff=(0.001, 0.001))
    def slow() -> None:
        calls.append(1)
        Counter.objects.create(name="x")
        time.sleep(0.3)

    with pytest.raises(UnitOfWorkTimeout, match="@unit_of_work .*slow"):
        slow()
    assert len(calls) == 1

    @unit_of_work(retries=2, timeout=0.1, backoff=(0.001, 0.001), retry_on=(UnitOfWorkTimeout,))
    def slow_but_retried() -> None:
        calls.append(1)
        time.sleep(0.3 if len(calls) < 3 else 0)
        Counter.objects.create(name="y")

    calls.clear()
    slow_but_retried()
    assert len(calls) == 3
    assert list(Counter.objects.values_list("name", flat=True)) == ["y"]


def test_nested_units_inherit_the_root_limit_and_cannot_raise_it() -> None:
    if connection.vendor not in ("postgresql", "mysql"):
        pytest.skip("needs a statement timeout")
    with pytest.raises(UnitOfWorkTimeout):
        with UnitOfWork(timeout=0.5) as root:
            with UnitOfWork(timeout=30) as inner:
                assert inner.limit == root.limit == 0.5
                started = time.monotonic()
                sleep_in_database(5)
    assert time.monotonic() - started < 3


def test_the_setting_gives_every_root_unit_a_limit() -> None:
    with override_settings(DJANGO_UOW={"TIMEOUT": 0.2}):
        with UnitOfWork() as uow:
            assert uow.limit == 0.2
        with pytest.raises(UnitOfWorkTimeout):
            with UnitOfWork():
                Order.objects.create(total=Decimal("1"))
                time.sleep(0.4)
    with UnitOfWork() as uow:
        assert uow.limit is None


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout=0"):
        UnitOfWork(timeout=0)
    with pytest.raises(ValueError, match="timeout=-1"):
        unit_of_work(timeout=-1)
    with pytest.raises(TypeError, match="retry_on="):
        unit_of_work(retry_on=UnitOfWorkTimeout)  # type: ignore[arg-type]
    assert "django_uow.E034" in ids(run(TIMEOUT=0))
    assert "django_uow.E034" in ids(run(TIMEOUT="5"))
    assert "django_uow.E034" not in ids(run(TIMEOUT=2.5))


def test_sqlite_waits_for_another_writer_only_up_to_the_limit(tmp_path: Any) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the busy timeout is SQLite's")
    from django_uow.db.timeouts import apply_limits

    with UnitOfWork(timeout=0.25):
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA busy_timeout")
            assert cursor.fetchone()[0] == 250
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        restored = cursor.fetchone()[0]
    assert restored != 250  # the connection's own busy timeout is back
    assert callable(apply_limits)
