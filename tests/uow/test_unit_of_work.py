"""UnitOfWork: commit and rollback, savepoints, hooks, manual control, tracking, guards."""

from __future__ import annotations

import asyncio
import inspect
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction

from django_uow import (
    NoActiveUnitOfWork,
    UnitOfWork,
    UnitOfWorkError,
    current_uow,
    signals,
    unit_of_work,
)
from django_uow.models import OutboxEvent
from tests.support.helpers import capture_statements
from tests.testapp.events import OrderPaid, Pinged
from tests.testapp.models import Note, Order


class BusinessRuleBroken(Exception):
    pass


@pytest.fixture(params=["top-level", "inside-atomic"])
def outer(request: pytest.FixtureRequest, transactional_db: None):
    """Run a test at top level and again inside an outer atomic(), as ATOMIC_REQUESTS does."""
    if request.param == "top-level":
        yield
        return
    with transaction.atomic():
        yield


def event_types() -> list[str]:
    return list(OutboxEvent.objects.order_by("id").values_list("event_type", flat=True))


# ----------------------------------------------------------------------- commit / rollback


def test_commit_writes_change_and_events_together(outer: None) -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("10"))
        order.place()
        order.save()
    order.refresh_from_db()
    assert order.status == "placed"
    assert event_types() == ["testapp.OrderPlaced"]


def test_exception_rolls_back_everything_and_propagates_unchanged(outer: None) -> None:
    calls: list[str] = []
    with pytest.raises(BusinessRuleBroken, match="no stock"), UnitOfWork() as uow:
        uow.on_commit(lambda: calls.append("commit"))
        uow.on_rollback(lambda: calls.append("rollback"))
        order = Order.objects.create(total=1)
        order.place()
        order.save()
        raise BusinessRuleBroken("no stock")
    assert Order.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
    assert calls == ["rollback"]
    assert order.pending_events == []  # discarded, never published later


def test_savepoint_rollback_discards_its_events_and_keeps_earlier_ones(outer: None) -> None:
    with UnitOfWork() as uow:
        order = Order.objects.create(total=1)
        order.place()
        order.save()
        with pytest.raises(BusinessRuleBroken), uow.savepoint():
            order.pay()
            order.save()
            uow.record_event(Pinged(note="inside"))
            Note.objects.create(text="inside")
            raise BusinessRuleBroken()
        assert [type(e).__name__ for e in order.pending_events] == ["OrderPlaced"]
        uow.record_event(Pinged(note="after"))
    assert event_types() == ["testapp.OrderPlaced", "testapp.Pinged"]
    assert OutboxEvent.objects.get(event_type="testapp.Pinged").payload["note"] == "after"
    assert Note.objects.count() == 0


def test_nested_unit_of_work_is_a_savepoint(outer: None) -> None:
    with UnitOfWork() as outer_uow:
        Note.objects.create(text="outer")
        outer_uow.record_event(Pinged(note="outer"))
        try:
            with UnitOfWork() as inner:
                assert current_uow() is inner
                assert not inner.is_root
                Note.objects.create(text="inner")
                inner.record_event(Pinged(note="inner"))
                raise BusinessRuleBroken()
        except BusinessRuleBroken:
            pass
        assert current_uow() is outer_uow
        with UnitOfWork() as kept:
            kept.record_event(Pinged(note="kept"))
    assert list(Note.objects.values_list("text", flat=True)) == ["outer"]
    notes = [e.payload["note"] for e in OutboxEvent.objects.order_by("id")]
    assert notes == ["outer", "kept"]


def test_on_commit_runs_after_commit_only(transactional_db: None) -> None:
    seen: list[int] = []
    with UnitOfWork() as uow:
        uow.on_commit(lambda: seen.append(OutboxEvent.objects.count()))
        uow.record_event(Pinged(note="x"))
        assert seen == []
    assert seen == [1]


def test_on_commit_callbacks_do_not_run_on_rollback(transactional_db: None) -> None:
    seen: list[str] = []
    with UnitOfWork() as uow:
        uow.on_commit(lambda: seen.append("outer"))
        with pytest.raises(BusinessRuleBroken), uow.savepoint() as sp:
            sp.on_commit(lambda: seen.append("savepoint"))
            raise BusinessRuleBroken()
    assert seen == ["outer"]
    with pytest.raises(BusinessRuleBroken), UnitOfWork() as uow:
        uow.on_commit(lambda: seen.append("rolled back"))
        raise BusinessRuleBroken()
    assert seen == ["outer"]


def test_on_rollback_of_committed_savepoint_runs_when_outer_rolls_back(outer: None) -> None:
    seen: list[str] = []
    with pytest.raises(BusinessRuleBroken), UnitOfWork() as uow:
        with uow.savepoint() as sp:
            sp.on_rollback(lambda: seen.append("inner"))
        assert seen == []
        raise BusinessRuleBroken()
    assert seen == ["inner"]


# ----------------------------------------------------------------------------- hooks


def test_before_commit_runs_after_collection_before_writing(transactional_db: None) -> None:
    observed: list[tuple[int, int]] = []
    with UnitOfWork() as uow:
        uow.record_event(Pinged(note="a"))

        @uow.before_commit
        def validate() -> None:
            observed.append((len(uow.events), OutboxEvent.objects.count()))

    assert observed == [(1, 0)]
    assert OutboxEvent.objects.count() == 1


def test_before_commit_raising_rolls_back(transactional_db: None) -> None:
    def refuse() -> None:
        raise BusinessRuleBroken("refused")

    with pytest.raises(BusinessRuleBroken, match="refused"), UnitOfWork() as uow:
        Note.objects.create(text="x")
        uow.record_event(Pinged(note="a"))
        uow.before_commit(refuse)
    assert Note.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


def test_check_invariants_runs_for_tracked_aggregates(transactional_db: None) -> None:
    order = Order.objects.create(total=5)
    with pytest.raises(ValueError, match="must not be negative"), UnitOfWork():
        order.total = Decimal("-1")
        order.place()
        order.save()
    order.refresh_from_db()
    assert order.total == 5
    assert OutboxEvent.objects.count() == 0


# -------------------------------------------------------------------- manual control


def test_begin_and_commit_without_with(transactional_db: None) -> None:
    uow = UnitOfWork().begin()
    assert current_uow() is uow
    uow.record_event(Pinged(note="manual"))
    uow.commit()
    assert current_uow() is None
    assert OutboxEvent.objects.count() == 1
    with pytest.raises(UnitOfWorkError, match="already committed"):
        uow.begin()


def test_manual_rollback_exits_block_without_committing_or_raising(outer: None) -> None:
    with UnitOfWork() as uow:
        Note.objects.create(text="x")
        uow.record_event(Pinged(note="x"))
        uow.rollback()
    assert Note.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
    assert current_uow() is None


def test_commit_of_outer_while_inner_open_is_refused(transactional_db: None) -> None:
    with UnitOfWork() as outer_uow, UnitOfWork():
        with pytest.raises(UnitOfWorkError, match="nested one is still open"):
            outer_uow.commit()


def test_rollback_if_rolls_back_and_returns_result(transactional_db: None) -> None:
    @unit_of_work(rollback_if=lambda result: not result["ok"])
    def service(ok: bool) -> dict[str, bool]:
        Note.objects.create(text=str(ok))
        current_uow().record_event(Pinged(note=str(ok)))  # type: ignore[union-attr]
        return {"ok": ok}

    assert service(False) == {"ok": False}
    assert Note.objects.count() == 0
    assert service(True) == {"ok": True}
    assert list(Note.objects.values_list("text", flat=True)) == ["True"]
    assert OutboxEvent.objects.count() == 1


# ------------------------------------------------------------------------- decorator


def test_decorator_bare_and_with_options(transactional_db: None) -> None:
    @unit_of_work
    def bare() -> UnitOfWork | None:
        return current_uow()

    @unit_of_work(using="default")
    def configured() -> UnitOfWork | None:
        return current_uow()

    assert isinstance(bare(), UnitOfWork)
    assert isinstance(configured(), UnitOfWork)
    with unit_of_work() as uow:
        assert current_uow() is uow
    assert bare.__name__ == "bare"


def test_an_async_function_is_decorated_into_a_coroutine_function_and_a_generator_refused() -> None:
    async def view() -> None:
        await asyncio.sleep(0)

    async def stream() -> Any:
        yield 1

    assert inspect.iscoroutinefunction(unit_of_work(view))
    with pytest.raises(TypeError, match=r"async generator .*stream\(\).*coroutine function"):
        unit_of_work(stream)


def test_nested_retries_are_refused_inside_a_plain_atomic_block(transactional_db: None) -> None:
    @unit_of_work(retries=3)
    def inner() -> None:
        pass

    with pytest.raises(UnitOfWorkError, match=r"retries=3.*inner\(\).*outermost"):
        with transaction.atomic():
            inner()
    with pytest.raises(TypeError, match="cannot take retries"), unit_of_work(retries=2):
        pass


def test_current_uow_is_per_thread(transactional_db: None) -> None:
    seen: list[object] = []
    with UnitOfWork() as uow:
        thread = threading.Thread(target=lambda: seen.append(current_uow()))
        thread.start()
        thread.join()
        assert current_uow() is uow
    assert seen == [None]
    assert current_uow() is None


# ---------------------------------------------------------------- aggregates and guards


def test_saving_aggregate_with_events_outside_uow_raises_and_writes_nothing(db: None) -> None:
    order = Order.objects.create(total=1)
    order.place()
    with pytest.raises(NoActiveUnitOfWork, match=r"testapp.Order pk=\d+ has 1 pending event"):
        order.save()
    order.refresh_from_db()
    assert order.status == "new"
    assert order.version == 1


def test_events_recorded_before_the_uow_are_staged_when_saved_inside(
    transactional_db: None,
) -> None:
    order = Order.objects.create(total=1)
    order.place()
    with UnitOfWork():
        order.save()
    assert event_types() == ["testapp.OrderPlaced"]
    assert order.pending_events == []


def test_new_aggregate_gets_its_pk_as_aggregate_id(transactional_db: None) -> None:
    with UnitOfWork():
        order = Order(total=3)
        order.record_event(OrderPaid(order_id=0))
        order.save()
    row = OutboxEvent.objects.get()
    assert row.aggregate_id == str(order.pk)
    assert row.aggregate_version == 1


def test_event_without_save_bumps_the_aggregate_version(transactional_db: None) -> None:
    order = Order.objects.create(total=1)
    with capture_statements() as statements, UnitOfWork():
        order.record_event(OrderPaid(order_id=order.pk))
    assert statements == ["UPDATE testapp_order", "INSERT django_uow_outboxevent"]
    assert OutboxEvent.objects.get().aggregate_version == 2
    order.refresh_from_db()
    assert order.version == 2


def test_new_aggregate_recording_events_without_save_is_an_error(transactional_db: None) -> None:
    with pytest.raises(UnitOfWorkError, match="new testapp.Order recorded .* never saved"):
        with UnitOfWork():
            Order(total=1).record_event(OrderPaid(order_id=0))
    assert OutboxEvent.objects.count() == 0


def test_deleted_aggregate_keeps_its_id_on_its_events(transactional_db: None) -> None:
    order = Order.objects.create(total=1)
    pk = order.pk
    with UnitOfWork():
        order.cancel("gone")
        order.delete()
    row = OutboxEvent.objects.get()
    assert row.aggregate_id == str(pk)
    assert not Order.objects.exists()


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
def test_saving_tracked_aggregate_on_another_database_is_refused() -> None:
    with pytest.raises(
        UnitOfWorkError, match="on database 'other' inside a UnitOfWork on 'default'"
    ):
        with UnitOfWork():
            order = Order(total=1)
            order.place()
            order.save(using="other")
    assert Order.objects.using("other").count() == 0
    assert OutboxEvent.objects.count() == 0


@pytest.mark.django_db(databases=["default", "other"], transaction=True)
def test_unit_of_work_on_another_alias_writes_outbox_there() -> None:
    with UnitOfWork(using="other"):
        order = Order(total=1)
        order.place()
        order.save(using="other")
    assert OutboxEvent.objects.using("other").count() == 1
    assert OutboxEvent.objects.using("default").count() == 0


# -------------------------------------------------------------------------- signals


def test_signals_report_staging_commit_and_rollback(transactional_db: None) -> None:
    received: list[tuple[str, int]] = []

    def staged(sender: object, events: list[OutboxEvent], **kwargs: object) -> None:
        received.append(("staged", len(events)))

    def committed(sender: object, events: list[OutboxEvent], **kwargs: object) -> None:
        received.append(("committed", len(events)))

    def rolled_back(sender: object, **kwargs: object) -> None:
        received.append(("rolled_back", 0))

    signals.events_staged.connect(staged)
    signals.uow_committed.connect(committed)
    signals.uow_rolled_back.connect(rolled_back)
    try:
        with UnitOfWork() as uow:
            uow.record_event(Pinged(note="a"))
            uow.record_event(Pinged(note="b"))
        with pytest.raises(BusinessRuleBroken), UnitOfWork():
            raise BusinessRuleBroken()
    finally:
        signals.events_staged.disconnect(staged)
        signals.uow_committed.disconnect(committed)
        signals.uow_rolled_back.disconnect(rolled_back)
    assert received == [("staged", 2), ("committed", 2), ("rolled_back", 0)]
