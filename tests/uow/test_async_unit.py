"""``async with UnitOfWork()`` under bare ``asyncio.run``: the same unit as the sync form
(tracking, versions, events in one INSERT, savepoints), on one thread and connection of
its own, refusing every use that would share its transaction by accident."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import connection, transaction

from django_uow import (
    UnitOfWork,
    UnitOfWorkContextError,
    UnitOfWorkTimeout,
    current_uow,
    signals,
    unit_of_work,
)
from django_uow.models import OutboxEvent
from tests.support.aio import (
    in_atomic_block,
    on_unit_thread,
    record_statements,
    run,
    statements_of_new_connections,
    wait_for_flag,
)
from tests.support.helpers import capture_statements
from tests.testapp.events import Pinged
from tests.testapp.models import Note, Order

pytestmark = pytest.mark.django_db(transaction=True)


def outbox() -> list[tuple[str, str, int | None]]:
    return list(
        OutboxEvent.objects.order_by("id").values_list(
            "event_type", "aggregate_id", "aggregate_version"
        )
    )


# -- the unit itself ----------------------------------------------------------------------


def test_an_async_unit_tracks_versions_and_writes_its_events_in_one_insert() -> None:
    placed = Order.objects.create(total=Decimal("5"))

    async def main() -> tuple[Any, ...]:
        async with UnitOfWork() as uow:
            statements, stop = await record_statements()
            order = await Order.objects.aget(pk=placed.pk)
            order.place()
            await order.asave()
            fresh = await Order.objects.acreate(total=Decimal("7"))
            fresh.place()
            await fresh.asave()
            uow.record_event(Pinged(note="async"))
            seen = (current_uow() is uow, await on_unit_thread(in_atomic_block), uow.tracked)
        stop()
        return (
            *seen,
            uow.state,
            order.version,
            fresh.version,
            current_uow(),
            fresh.pk,
            statements,
        )

    (is_current, atomic, tracked, state, version, fresh_version, after, fresh_pk, statements) = run(
        main
    )

    assert is_current and atomic and state == "committed" and after is None
    assert len(tracked) == 2
    assert (version, fresh_version) == (placed.version + 1, 2)
    assert outbox() == [
        ("testapp.OrderPlaced", str(placed.pk), version),
        ("testapp.OrderPlaced", str(fresh_pk), 2),
        ("testapp.Pinged", "", None),
    ]
    assert statements.count("INSERT django_uow_outboxevent") == 1

    # The same work in a sync unit runs the same statements: the async form adds none.
    other = Order.objects.create(total=Decimal("5"))
    with capture_statements() as sync_statements, UnitOfWork() as uow:
        order = Order.objects.get(pk=other.pk)
        order.place()
        order.save()
        fresh = Order.objects.create(total=Decimal("7"))
        fresh.place()
        fresh.save()
        uow.record_event(Pinged(note="sync"))
    assert list(statements) == list(sync_statements)


def test_adelete_and_queryset_methods_take_part_in_the_unit() -> None:
    doomed = Order.objects.create(total=Decimal("1"))
    kept = Order.objects.create(total=Decimal("2"))

    async def main() -> list[int]:
        async with UnitOfWork():
            order = await Order.objects.aget(pk=doomed.pk)
            order.cancel("gone")
            await order.adelete()  # version-checked, its event kept
            await Note.objects.abulk_create([Note(text="a"), Note(text="b")])
            await Note.objects.filter(text="b").adelete()
            inside = [pk async for pk in Order.objects.values_list("pk", flat=True)]
            async with UnitOfWork():
                await Note.objects.filter(text="a").aupdate(text="updated")
            assert await Order.objects.filter(pk=kept.pk).aexists()
        return inside

    assert run(main) == [kept.pk]
    assert list(Order.objects.values_list("pk", flat=True)) == [kept.pk]
    assert list(Note.objects.values_list("text", flat=True)) == ["updated"]
    assert outbox() == [("orders.cancelled", str(doomed.pk), doomed.version)]


def test_nested_async_with_is_a_savepoint() -> None:
    async def main() -> list[str]:
        threads = []
        async with UnitOfWork() as outer:
            outer.record_event(Pinged(note="kept"))
            await Note.objects.acreate(text="kept")
            threads.append(await on_unit_thread(threading.get_ident))
            with pytest.raises(ValueError):
                async with UnitOfWork() as inner:
                    assert inner._parent is outer
                    inner.record_event(Pinged(note="dropped"))
                    await Note.objects.acreate(text="dropped")
                    threads.append(await on_unit_thread(threading.get_ident))
                    raise ValueError("inner fails")
            async with outer.savepoint():
                await Note.objects.acreate(text="released")
        return [str(t == threads[0]) for t in threads]

    assert run(main) == ["True", "True"]  # one thread, one connection
    assert sorted(Note.objects.values_list("text", flat=True)) == ["kept", "released"]
    assert [e.payload["note"] for e in OutboxEvent.objects.all()] == ["kept"]


def test_an_exception_rolls_back_and_propagates_unchanged() -> None:
    class Refused(Exception):
        pass

    async def main() -> None:
        async with UnitOfWork() as uow:
            uow.record_event(Pinged(note="never"))
            await Note.objects.acreate(text="never")
            raise Refused("no")

    with pytest.raises(Refused):
        run(main)
    assert not Note.objects.exists() and not OutboxEvent.objects.exists()


def test_acommit_and_arollback_and_hooks_from_the_coroutine() -> None:
    ran: list[str] = []
    hook_threads: list[tuple[int, int | None]] = []

    async def main() -> None:
        async with UnitOfWork() as uow:
            uow.on_commit(lambda: ran.append("committed"))
            # Registered from the coroutine, run after the COMMIT on the unit's thread.
            uow.on_commit(lambda: hook_threads.append((threading.get_ident(), uow._thread_id)))
            assert ran == []
            uow.on_rollback(lambda: ran.append("rolled back"))
            await Note.objects.acreate(text="committed early")
            with pytest.raises(UnitOfWorkContextError, match=r"await uow\.acommit\(\)"):
                uow.commit()
            await uow.acommit()
        async with UnitOfWork() as uow:
            uow.on_rollback(lambda: ran.append("rolled back"))
            await Note.objects.acreate(text="rolled back")
            with pytest.raises(UnitOfWorkContextError, match=r"await uow\.arollback\(\)"):
                uow.rollback()
            await uow.arollback()

    run(main)
    assert list(Note.objects.values_list("text", flat=True)) == ["committed early"]
    assert ran == ["committed", "rolled back"]
    ((hook_thread, unit_thread),) = hook_threads
    assert hook_thread == unit_thread


def test_each_async_unit_has_its_own_correlation_id() -> None:
    async def main() -> None:
        for note in ("first", "second"):
            async with UnitOfWork() as uow:
                uow.record_event(Pinged(note=note))

    run(main)
    correlations = [e.headers["correlation_id"] for e in OutboxEvent.objects.order_by("id")]
    assert len(set(correlations)) == 2


def test_a_time_limit_holds_across_awaits() -> None:
    async def slow() -> None:
        async with UnitOfWork(timeout=0.2):
            await Note.objects.acreate(text="too late")
            await asyncio.sleep(0.4)  # a long await: the unit's time runs out meanwhile

    with pytest.raises(UnitOfWorkTimeout, match="time limit of 0.2s"):
        run(slow)
    assert not Note.objects.exists()


# -- isolation between tasks --------------------------------------------------------------


@pytest.mark.server_db
def test_two_tasks_each_with_its_own_unit_interleave_in_isolation() -> None:
    written = {name: asyncio.Event() for name in ("a", "b")}

    async def task(name: str, other: str) -> tuple[list[str], int]:
        async with UnitOfWork() as uow:
            uow.record_event(Pinged(note=name))
            await Note.objects.acreate(text=name)
            written[name].set()
            await wait_for_flag(written[other])  # the other has written, not committed
            seen = [n.text async for n in Note.objects.order_by("text")]
            thread = await on_unit_thread(threading.get_ident)
        return seen, thread

    async def main() -> list[tuple[list[str], int]]:
        return list(await asyncio.gather(task("a", "b"), task("b", "a")))

    (seen_a, thread_a), (seen_b, thread_b) = run(main)
    assert (seen_a, seen_b) == (["a"], ["b"])  # neither saw the other's uncommitted row
    assert thread_a != thread_b
    assert sorted(Note.objects.values_list("text", flat=True)) == ["a", "b"]
    assert sorted(e.payload["note"] for e in OutboxEvent.objects.all()) == ["a", "b"]


def test_tasks_started_inside_a_unit_are_refused() -> None:
    async def gathered() -> None:
        async with UnitOfWork():
            await Note.objects.acreate(text="owner")
            await asyncio.gather(Note.objects.acreate(text="x"), Note.objects.acreate(text="y"))

    async def nested_in_a_child() -> None:
        async def child() -> None:
            async with UnitOfWork():
                await Note.objects.acreate(text="child")

        async with UnitOfWork():
            await asyncio.create_task(child())

    async def outlives_the_unit() -> None:
        started = asyncio.Event()

        async def child() -> None:
            await wait_for_flag(started)
            await Note.objects.acreate(text="late")

        async with UnitOfWork():
            late = asyncio.create_task(child())
        started.set()
        await late

    with pytest.raises(UnitOfWorkContextError, match="another task"):
        run(gathered)
    with pytest.raises(UnitOfWorkContextError, match="another task"):
        run(nested_in_a_child)
    with pytest.raises(UnitOfWorkContextError, match="has ended"):
        run(outlives_the_unit)
    assert not Note.objects.exists()


def test_cancelling_mid_unit_rolls_back_and_the_next_unit_works() -> None:
    ended: list[str] = []

    def rolled_back(**kwargs: Any) -> None:
        ended.append("rolled back")

    async def main() -> bool:
        inside = asyncio.Event()

        async def request() -> None:
            async with UnitOfWork() as uow:
                uow.record_event(Pinged(note="cancelled"))
                await Note.objects.acreate(text="cancelled")
                inside.set()
                await asyncio.sleep(30)  # a slow await: the client goes away meanwhile

        task = asyncio.create_task(request())
        await wait_for_flag(inside)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with UnitOfWork():
            await Note.objects.acreate(text="next")
        return task.cancelled()

    signals.uow_rolled_back.connect(rolled_back)
    try:
        cancelled = run(main)
    finally:
        signals.uow_rolled_back.disconnect(rolled_back)
    assert cancelled and ended == ["rolled back"]
    assert list(Note.objects.values_list("text", flat=True)) == ["next"]
    assert not OutboxEvent.objects.exists()


def test_a_cancel_while_the_unit_commits_lets_the_commit_end_on_its_thread() -> None:
    def slow_hook() -> None:
        committing.set()
        threading.Event().wait(0.3)  # the cancellation arrives now

    async def main() -> tuple[bool, Any]:
        async def request() -> tuple[bool, Any]:
            try:
                async with UnitOfWork() as uow:
                    await Note.objects.acreate(text="committed")
                    uow.before_commit(slow_hook)
            except asyncio.CancelledError:
                return True, current_uow()
            return False, current_uow()

        task = asyncio.create_task(request())
        await asyncio.get_running_loop().run_in_executor(None, committing.wait, 10)
        task.cancel()
        return await task

    committing = threading.Event()
    cancelled, left_open = run(main)
    assert cancelled and left_open is None
    assert list(Note.objects.values_list("text", flat=True)) == ["committed"]


@pytest.mark.postgres
def test_a_cancel_during_a_statement_waits_for_it_then_rolls_back_on_the_units_thread() -> None:
    def slow_statement() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(0.5)")

    def sessions_in_transaction() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])

    async def main() -> None:
        running = asyncio.Event()

        async def request() -> None:
            async with UnitOfWork():
                await Note.objects.acreate(text="cancelled")
                running.set()
                await on_unit_thread(slow_statement)

        task = asyncio.create_task(request())
        await wait_for_flag(running)
        await asyncio.sleep(0.1)  # the statement is running on the unit's thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)
    assert not Note.objects.exists()
    assert sessions_in_transaction() == 0


# -- sync and async units together ---------------------------------------------------------


def test_a_sync_unit_inside_a_coroutine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Django's escape hatch (notebooks) lets sync database code run in a coroutine, and so
    # does the unit of work; the browser tests set it for the whole process.
    monkeypatch.delenv("DJANGO_ALLOW_ASYNC_UNSAFE", raising=False)

    async def main() -> None:
        with UnitOfWork():
            pass

    with pytest.raises(UnitOfWorkContextError, match="async with UnitOfWork"):
        run(main)


def test_sync_code_called_on_the_units_thread_nests_its_unit_as_a_savepoint() -> None:
    @unit_of_work
    def sync_service(text: str) -> bool:
        Note.objects.create(text=text)
        uow = current_uow()
        assert uow is not None
        uow.record_event(Pinged(note=text))
        return uow.is_root

    async def main() -> bool:
        async with UnitOfWork():
            root = await sync_to_async(sync_service)("service")
            await Note.objects.acreate(text="view")
        return root

    assert run(main) is False
    assert sorted(Note.objects.values_list("text", flat=True)) == ["service", "view"]
    assert [e.payload["note"] for e in OutboxEvent.objects.all()] == ["service"]


def test_interleaved_sync_and_async_units_are_refused() -> None:
    def open_sync_unit() -> UnitOfWork:
        return UnitOfWork().begin()  # returns to the event loop with the unit still open

    async def left_open() -> None:
        async with UnitOfWork():
            await sync_to_async(open_sync_unit)()
            async with UnitOfWork():
                pass

    async def on_a_thread_pool() -> None:
        async with UnitOfWork():
            await sync_to_async(lambda: UnitOfWork().__enter__(), thread_sensitive=False)()

    async def saved_on_a_thread_pool() -> None:
        async with UnitOfWork():
            order = await Order.objects.acreate(total=Decimal("1"))
            order.place()
            await sync_to_async(order.save, thread_sensitive=False)()

    with pytest.raises(UnitOfWorkContextError, match="saved on another thread"):
        run(saved_on_a_thread_pool)
    with pytest.raises(UnitOfWorkContextError, match="left open across an await"):
        run(left_open)
    with pytest.raises(UnitOfWorkContextError, match="another thread"):
        run(on_a_thread_pool)

    async def afterwards() -> None:
        async with UnitOfWork():
            await Note.objects.acreate(text="afterwards")

    run(afterwards)  # no later unit inherits what the refused ones left
    assert list(Note.objects.values_list("text", flat=True)) == ["afterwards"]


@pytest.mark.server_db  # an in-memory SQLite connection is never closed
def test_later_units_reuse_the_thread_on_a_fresh_connection_when_conn_max_age_is_0() -> None:
    async def main() -> list[int]:
        threads = []
        for _ in range(3):
            async with UnitOfWork():
                await Note.objects.acreate(text="n")
                threads.append(await on_unit_thread(threading.get_ident))
        return threads

    with statements_of_new_connections() as statements:
        threads = run(main)
    assert len(set(threads)) == 1
    assert statements.count("INSERT testapp_note") == 3  # each unit on a new connection


def test_entering_from_sync_code_joins_a_sync_unit_and_is_refused_inside_plain_atomic() -> None:
    async def service(text: str) -> bool:
        async with UnitOfWork() as uow:
            await Note.objects.acreate(text=text)
            uow.record_event(Pinged(note=text))
            return uow.is_root

    with UnitOfWork() as outer:
        nested_root = async_to_sync(service)("inside a sync unit")
        outer.record_event(Pinged(note="outer"))
    assert nested_root is False
    assert list(Note.objects.values_list("text", flat=True)) == ["inside a sync unit"]
    assert [e.payload["note"] for e in OutboxEvent.objects.order_by("id")] == [
        "inside a sync unit",
        "outer",
    ]

    with pytest.raises(UnitOfWorkContextError, match="async_to_sync.*no unit of work owns"):
        with transaction.atomic():
            async_to_sync(service)("inside atomic")
    assert async_to_sync(service)("on its own") is True
    assert Note.objects.count() == 2


# -- after the commit ----------------------------------------------------------------------


def test_uow_committed_runs_off_the_event_loop_which_keeps_running() -> None:
    seen: list[tuple[int, bool]] = []

    def receiver(**kwargs: Any) -> None:
        from django_uow.uow.async_unit import running_loop

        seen.append((threading.get_ident(), running_loop() is not None))
        threading.Event().wait(0.3)  # a slow receiver (a fast path waiting on a broker)

    async def main() -> tuple[int, int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.02)

        ticking = asyncio.create_task(ticker())
        async with UnitOfWork() as uow:
            uow.record_event(Pinged(note="committed"))
            before = ticks
        stop.set()
        await ticking
        return threading.get_ident(), ticks - before

    signals.uow_committed.connect(receiver, weak=False)
    try:
        loop_thread, ticks_during_commit = run(main)
    finally:
        signals.uow_committed.disconnect(receiver)
    ((thread, loop_running),) = seen
    assert thread != loop_thread and not loop_running
    assert ticks_during_commit >= 5  # the loop ran other tasks while the commit waited
