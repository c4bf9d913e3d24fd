"""Units of work tell the truth: a rollback is a rollback at every level, versions and
events stay in step through savepoints, ``uow_committed`` marks every root commit, and
scope objects are reentrant and thread-safe like ``atomic``."""

from __future__ import annotations

import threading
from contextlib import suppress
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from django_uow import UnitOfWork, UnitOfWorkError, signals, unit_of_work
from django_uow.models import OutboxEvent
from tests.testapp.models import Counter, Note, Order

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 20.0


class Boom(Exception):
    pass


@pytest.fixture
def received() -> Any:
    """The uow_committed / uow_rolled_back signals sent during the test, in order."""
    log: list[tuple[str, Any]] = []

    def committed(sender: Any, uow: Any, events: Any, **kwargs: Any) -> None:
        log.append(("committed", list(events)))

    def rolled_back(sender: Any, uow: Any, **kwargs: Any) -> None:
        log.append(("rolled back", uow))

    signals.uow_committed.connect(committed, dispatch_uid="truth-committed")
    signals.uow_rolled_back.connect(rolled_back, dispatch_uid="truth-rolled-back")
    yield log
    signals.uow_committed.disconnect(dispatch_uid="truth-committed")
    signals.uow_rolled_back.disconnect(dispatch_uid="truth-rolled-back")


def outbox() -> list[tuple[str, str, int | None]]:
    return list(
        OutboxEvent.objects.order_by("id").values_list(
            "event_type", "aggregate_id", "aggregate_version"
        )
    )


# -- 1. set_rollback() and swallowed database errors -----------------------------------


def test_set_rollback_in_a_nested_unit_discards_its_events() -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork():
        with UnitOfWork():
            order.note = "inner"
            order.place()
            order.save()
            transaction.set_rollback(True)
    order.refresh_from_db()
    assert (order.note, order.status) == ("", "new")
    assert outbox() == []  # no phantom OrderPlaced
    assert order.pending_events == []


def test_a_nested_unit_marked_for_rollback_reports_and_hooks_a_rollback(
    received: list[tuple[str, Any]],
) -> None:
    calls: list[str] = []
    with UnitOfWork() as outer:
        with UnitOfWork() as inner:
            inner.on_rollback(lambda: calls.append("inner rollback"))
            inner.on_commit(lambda: calls.append("inner commit"))
            Note.objects.create(text="gone")
            transaction.set_rollback(True)
        assert inner.state == "rolled back"
        assert received == [("rolled back", inner)]
        Note.objects.create(text="kept")
    assert outer.state == "committed"
    assert calls == ["inner rollback"]
    assert list(Note.objects.values_list("text", flat=True)) == ["kept"]


@pytest.mark.parametrize("with_events", [True, False])
def test_a_root_unit_marked_for_rollback_rolls_back_quietly(
    with_events: bool, received: list[tuple[str, Any]]
) -> None:
    calls: list[str] = []
    order = Order.objects.create(total=1)
    with UnitOfWork() as uow:  # no TransactionManagementError, like atomic
        uow.on_rollback(lambda: calls.append("rollback"))
        order.note = "changed"
        if with_events:
            order.place()
        order.save()
        transaction.set_rollback(True)
    assert uow.state == "rolled back"
    assert calls == ["rollback"]
    assert received == [("rolled back", uow)]
    order.refresh_from_db()
    assert (order.note, order.version) == ("", 1)
    assert outbox() == []


def test_a_swallowed_database_error_rolls_the_unit_back_quietly(
    received: list[tuple[str, Any]],
) -> None:
    Counter.objects.create(name="taken")
    order = Order.objects.create(total=1)
    with UnitOfWork() as uow:
        order.place()
        order.save()
        with suppress(IntegrityError):
            Counter.objects.create(name="taken")  # marks the transaction for rollback
    assert uow.state == "rolled back"
    assert received == [("rolled back", uow)]
    order.refresh_from_db()
    assert order.status == "new"
    assert outbox() == []


# -- reentrant and thread-safe scope objects -------------------------------------------


@pytest.mark.parametrize("make", [UnitOfWork, unit_of_work], ids=["UnitOfWork", "unit_of_work"])
def test_one_scope_object_can_be_entered_twice(make: Any) -> None:
    scope = make()
    with scope:
        Note.objects.create(text="outer")
        with scope:
            Note.objects.create(text="inner")
        with suppress(Boom), scope:
            Note.objects.create(text="rolled back")
            raise Boom
    assert not connection.in_atomic_block
    assert sorted(Note.objects.values_list("text", flat=True)) == ["inner", "outer"]


@pytest.mark.parametrize("make", [UnitOfWork, unit_of_work], ids=["UnitOfWork", "unit_of_work"])
def test_one_scope_object_is_shared_safely_by_two_threads(make: Any) -> None:
    scope = make()
    both_inside = threading.Barrier(2, timeout=TIMEOUT)
    outcomes: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            with scope:
                both_inside.wait()
                outcomes[name] = connection.in_atomic_block
            outcomes[name + " after"] = connection.in_atomic_block
        except BaseException as error:
            outcomes[name] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert outcomes == {"a": True, "a after": False, "b": True, "b after": False}


def test_beginning_an_open_unit_again_is_refused_and_opens_nothing() -> None:
    uow = UnitOfWork().begin()
    depth = len(connection.atomic_blocks)
    with pytest.raises(UnitOfWorkError, match="already active"):
        uow.begin()
    assert len(connection.atomic_blocks) == depth
    uow.rollback()
    assert not connection.in_atomic_block


# -- 2. savepoint rollback restores versions and events ---------------------------------


def test_event_versions_match_the_row_after_a_rolled_back_savepoint() -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork() as uow:
        order.place()
        order.save()  # version 2, OrderPlaced
        with suppress(Boom), uow.savepoint():
            order.pay()
            order.save()  # version 3, rolled back below
            raise Boom
        assert order.version == 2
    order.refresh_from_db()
    assert order.version == 2
    assert outbox() == [("testapp.OrderPlaced", str(order.pk), 2)]

    with UnitOfWork():
        order.pay()
        order.save()  # the in-memory copy is still current: no conflict
    assert outbox()[-1] == ("testapp.OrderPaid", str(order.pk), 3)
    versions = [v for _, _, v in outbox()]
    assert len(set(versions)) == len(versions)  # no two commits share a version


def test_a_save_rolled_back_in_a_savepoint_leaves_the_event_to_be_versioned_at_commit() -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork() as uow:
        order.place()  # recorded before the savepoint
        with suppress(Boom), uow.savepoint():
            order.save()
            raise Boom
    order.refresh_from_db()
    # The event is kept (it was recorded outside the savepoint), so the row's version
    # moves for it at commit and the event carries that version.
    assert order.version == 2
    assert outbox() == [("testapp.OrderPlaced", str(order.pk), 2)]


def test_a_plain_versioned_model_gets_its_version_back_after_a_savepoint_rollback() -> None:
    counter = Counter.objects.create(name="c")
    with UnitOfWork() as uow:
        with suppress(Boom), uow.savepoint():
            counter.value = 5
            counter.save()
            raise Boom
        assert counter.version == 1
        counter.value = 7
        counter.save()  # no ConcurrencyError: the in-memory version is the row's
    counter.refresh_from_db()
    assert (counter.value, counter.version) == (7, 2)


def test_an_object_inserted_in_a_rolled_back_savepoint_is_new_again() -> None:
    with UnitOfWork() as uow:
        with suppress(Boom), uow.savepoint():
            order = Order.objects.create(total=Decimal("3"))
            raise Boom
        assert order._state.adding
        assert order.pk is None
        order.save()
    assert Order.objects.get().version == 1


# -- 3. no bump for an aggregate whose events were all discarded ------------------------


def test_a_savepoint_that_discards_an_event_does_not_bump_the_version() -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork() as uow:
        order.place()
        order.save()  # version 2
        with suppress(Boom), uow.savepoint():
            order.pay()  # recorded only, then discarded
            raise Boom
    order.refresh_from_db()
    assert order.version == 2
    assert outbox() == [("testapp.OrderPlaced", str(order.pk), 2)]


def test_an_aggregate_whose_only_events_were_discarded_is_not_touched() -> None:
    order = Order.objects.create(total=1)
    with UnitOfWork() as uow:
        with suppress(Boom), uow.savepoint():
            order.place()
            raise Boom
    order.refresh_from_db()
    assert order.version == 1
    assert outbox() == []


# -- 5. uow_committed on every root commit ---------------------------------------------


def test_uow_committed_is_sent_for_every_root_commit(received: list[tuple[str, Any]]) -> None:
    with UnitOfWork():
        Note.objects.create(text="no events")
        with UnitOfWork():
            Note.objects.create(text="nested")  # a released savepoint is not a commit
    assert received == [("committed", [])]

    order = Order.objects.create(total=1)
    with UnitOfWork():
        order.place()
        order.save()
    assert [(kind, [e.event_type for e in events]) for kind, events in received] == [
        ("committed", []),
        ("committed", ["testapp.OrderPlaced"]),
    ]


def test_uow_committed_waits_for_the_real_commit(received: list[tuple[str, Any]]) -> None:
    with transaction.atomic():
        with UnitOfWork():
            Note.objects.create(text="inside ATOMIC_REQUESTS")
        assert received == []
    assert received == [("committed", [])]
