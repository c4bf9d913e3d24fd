"""uow.repository(Model): identity map and new/dirty/deleted change tracking flushed at commit."""

from __future__ import annotations

from decimal import Decimal

import pytest

from django_uow import ConcurrencyError, UnitOfWork
from django_uow.models import OutboxEvent
from tests.support.helpers import capture_statements
from tests.testapp.models import Counter, Note, Order

pytestmark = pytest.mark.django_db(transaction=True)


def test_identity_map_returns_one_instance_per_row() -> None:
    order = Order.objects.create(total=1)
    with capture_statements() as statements, UnitOfWork() as uow:
        orders = uow.repository(Order)
        first = orders.get(order.pk)
        again = orders.get(str(order.pk))
        (filtered,) = orders.filter(pk=order.pk)
        locked = orders.get_for_update(order.pk)
        assert first is again is filtered is locked
    # get() once; get() again from the map; filter() and get_for_update() query.
    assert statements == ["SELECT testapp_order"] * 3


def test_dirty_tracking_flushes_only_changed_rows_and_fields() -> None:
    a = Counter.objects.create(name="a", value=1)
    b = Counter.objects.create(name="b", value=1)
    with capture_statements() as statements, UnitOfWork() as uow:
        counters = uow.repository(Counter)
        loaded_a, loaded_b = counters.get(a.pk), counters.get(b.pk)
        loaded_a.value = 2
        assert uow.dirty == [loaded_a]
        assert loaded_b not in uow.dirty
    assert statements == [
        "SELECT testapp_counter",
        "SELECT testapp_counter",
        "UPDATE testapp_counter",
    ]
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.value, a.version) == (2, 2)
    assert (b.value, b.version) == (1, 1)


def test_changed_field_only_is_written(django_assert_num_queries) -> None:
    a = Counter.objects.create(name="a", value=1)
    with capture_statements() as statements, UnitOfWork() as uow:
        loaded = uow.repository(Counter).get(a.pk)
        loaded.value = 5
        Counter.objects.filter(pk=a.pk).update(name="renamed elsewhere")  # no version bump
    assert statements[-1] == "UPDATE testapp_counter"
    a.refresh_from_db()
    assert (a.name, a.value) == ("renamed elsewhere", 5)


def test_explicit_save_makes_object_clean_again() -> None:
    note = Note.objects.create(text="a")
    with capture_statements() as statements, UnitOfWork() as uow:
        loaded = uow.repository(Note).get(note.pk)
        loaded.text = "b"
        loaded.save()
        assert uow.dirty == []
    assert statements == ["SELECT testapp_note", "UPDATE testapp_note"]


def test_new_objects_are_inserted_in_one_batch_per_model() -> None:
    with capture_statements() as statements, UnitOfWork() as uow:
        notes = uow.repository(Note)
        for i in range(3):
            notes.add(Note(text=f"n{i}"))
        order = uow.repository(Order).add(Order(total=Decimal("4")))
        order.place()
        assert len(uow.new) == 4
    assert statements == [
        "INSERT testapp_note",
        "INSERT testapp_order",
        "INSERT django_uow_outboxevent",
    ]
    assert sorted(Note.objects.values_list("text", flat=True)) == ["n0", "n1", "n2"]
    row = OutboxEvent.objects.get()
    assert row.aggregate_id == str(order.pk)


def test_removed_objects_are_deleted_version_checked() -> None:
    counter = Counter.objects.create(name="gone")
    stale = Counter.objects.create(name="stale")
    with UnitOfWork() as uow:
        uow.repository(Counter).remove(counter)
        assert uow.deleted == [counter]
    assert not Counter.objects.filter(pk=counter.pk).exists()

    Counter.objects.filter(pk=stale.pk).update_versioned(value=9)
    with (
        pytest.raises(ConcurrencyError, match="Cannot delete testapp.Counter"),
        UnitOfWork() as uow,
    ):
        uow.remove(stale)
    assert Counter.objects.filter(pk=stale.pk).exists()


def test_stale_dirty_object_fails_the_commit_and_writes_nothing() -> None:
    counter = Counter.objects.create(name="c", value=1)
    stale = Counter.objects.get(pk=counter.pk)
    Counter.objects.filter(pk=counter.pk).update_versioned(value=7)  # another writer commits
    with pytest.raises(ConcurrencyError, match=r"expected version 1, but the row is at version 2"):
        with UnitOfWork() as uow:
            stale.value = 100
            uow.add(stale)
            Note.objects.create(text="same transaction")
    counter.refresh_from_db()
    assert counter.value == 7
    assert not Note.objects.exists()


def test_added_existing_object_is_saved_in_full() -> None:
    note = Note.objects.create(text="a")
    note.text = "changed before add"
    with UnitOfWork() as uow:
        uow.add(note)
    note.refresh_from_db()
    assert note.text == "changed before add"


def test_new_object_removed_before_commit_is_never_inserted() -> None:
    with UnitOfWork() as uow:
        note = Note(text="temporary")
        uow.add(note)
        uow.remove(note)
        assert uow.new == []
    assert not Note.objects.exists()


def test_savepoint_rollback_forgets_registrations() -> None:
    with UnitOfWork() as uow:
        uow.add(Note(text="kept"))
        with pytest.raises(RuntimeError), uow.savepoint() as sp:
            sp.add(Note(text="dropped"))
            raise RuntimeError
    assert list(Note.objects.values_list("text", flat=True)) == ["kept"]
