"""Optimistic locking on ``VersionedModel``: runs on SQLite and PostgreSQL alike."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from django_uow import ConcurrencyError, UnitOfWork
from django_uow.models import OutboxEvent
from tests.testapp.models import Counter, Order

pytestmark = pytest.mark.django_db

FIXTURE = Path(__file__).parents[1] / "fixtures" / "versioned_counters.json"


def stored(pk: int) -> tuple[int, int]:
    """(value, version) of the Counter row as the database holds it."""
    row = Counter.objects.filter(pk=pk).values_list("value", "version").get()
    return row[0], row[1]


def stale_pair(**fields: Any) -> tuple[Counter, Counter]:
    """Two in-memory copies of one fresh row, as two requests would load them."""
    counter = Counter.objects.create(name="c", **fields)
    return Counter.objects.get(pk=counter.pk), Counter.objects.get(pk=counter.pk)


def only_update(captured: Any) -> str:
    sqls = [q["sql"] for q in captured.captured_queries]
    assert len(sqls) == 1, sqls
    assert sqls[0].upper().startswith("UPDATE"), sqls
    return str(sqls[0])


def test_new_object_starts_at_version_1_with_one_insert(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(1) as captured:
        counter = Counter.objects.create(name="new")
    assert captured.captured_queries[0]["sql"].upper().startswith("INSERT")
    assert counter.version == 1
    assert stored(counter.pk) == (0, 1)


def test_save_is_exactly_one_versioned_update(django_assert_num_queries: Any) -> None:
    counter, _ = stale_pair()
    counter.value = 5
    with django_assert_num_queries(1) as captured:
        counter.save()
    set_part, where_part = only_update(captured).split(" WHERE ", 1)
    # The check and the bump are in the UPDATE itself: no SELECT before or after.
    quoted = connection.ops.quote_name("version")
    assert f"{quoted} = 2" in set_part
    assert f"{quoted} = 1" in where_part
    assert counter.version == 2
    assert stored(counter.pk) == (5, 2)


def test_every_save_bumps_the_version_by_one(django_assert_num_queries: Any) -> None:
    counter = Counter.objects.create(name="c")
    for expected in range(2, 6):
        counter.value += 1
        with django_assert_num_queries(1):
            counter.save()
        assert counter.version == expected
    assert stored(counter.pk) == (4, 5)


def test_stale_save_raises_and_writes_nothing() -> None:
    first, second = stale_pair()
    first.value = 1
    first.save()

    second.value = 99
    with pytest.raises(ConcurrencyError) as caught, transaction.atomic():
        second.save()

    error = caught.value
    assert error.model_label == "testapp.Counter"
    assert error.pk == first.pk
    assert error.expected_version == 1
    assert error.actual_version == 2
    assert error.deleted is False
    message = str(error)
    assert "testapp.Counter" in message
    assert f"pk={first.pk!r}" in message
    assert "expected version 1" in message
    assert "version 2" in message
    assert stored(first.pk) == (1, 2)
    assert second.version == 1  # the failed save did not pretend to succeed


def test_save_of_a_deleted_row_raises_and_does_not_resurrect_it() -> None:
    first, second = stale_pair()
    pk = first.pk
    first.delete()

    second.value = 3
    with pytest.raises(ConcurrencyError, match="no longer exists") as caught, transaction.atomic():
        second.save()
    assert caught.value.deleted is True
    assert not Counter.objects.filter(pk=pk).exists()


def test_delete_is_version_checked_and_a_stale_delete_deletes_nothing() -> None:
    first, second = stale_pair()
    first.value = 1
    first.save()

    expected = r"Cannot delete testapp\.Counter"
    with pytest.raises(ConcurrencyError, match=expected) as caught, transaction.atomic():
        second.delete()
    assert caught.value.expected_version == 1
    assert caught.value.actual_version == 2
    assert stored(first.pk) == (1, 2)

    assert first.delete()[0] == 1
    assert not Counter.objects.filter(pk=first.pk).exists()


def test_update_fields_save_still_checks_and_bumps(django_assert_num_queries: Any) -> None:
    first, second = stale_pair()
    first.value = 10
    first.name = "not saved"
    with django_assert_num_queries(1) as captured:
        first.save(update_fields=["value"])
    sql = only_update(captured)
    assert "version" in sql.split("WHERE", 1)[1]
    assert first.version == 2
    assert Counter.objects.get(pk=first.pk).name == "c"
    assert stored(first.pk) == (10, 2)

    second.value = 20
    with pytest.raises(ConcurrencyError), transaction.atomic():
        second.save(update_fields=["value"])
    assert stored(first.pk) == (10, 2)


def test_exempt_only_update_fields_neither_checks_nor_bumps(
    django_assert_num_queries: Any,
) -> None:
    first, second = stale_pair()
    first.value = 1
    first.save()  # second is now stale

    seen = timezone.now().replace(microsecond=0)
    second.last_seen = seen
    with django_assert_num_queries(1) as captured:
        second.save(update_fields=["last_seen"])
    sql = only_update(captured)
    assert "version" not in sql  # no check, no bump
    assert second.version == 1
    row = Counter.objects.get(pk=first.pk)
    assert (row.value, row.version, row.last_seen) == (1, 2, seen)


def test_exempt_field_saved_with_a_business_field_is_checked() -> None:
    first, second = stale_pair()
    first.value = 1
    first.save()

    second.value = 2
    second.last_seen = timezone.now()
    with pytest.raises(ConcurrencyError), transaction.atomic():
        second.save(update_fields=["value", "last_seen"])
    row = Counter.objects.get(pk=first.pk)
    assert (row.value, row.version, row.last_seen) == (1, 2, None)


def test_full_save_checks_even_when_only_an_exempt_field_changed() -> None:
    """Without update_fields a save writes every column, so it must be checked."""
    first, second = stale_pair()
    first.value = 1
    first.save()
    second.last_seen = timezone.now()
    with pytest.raises(ConcurrencyError), transaction.atomic():
        second.save()
    assert stored(first.pk) == (1, 2)


def test_exempt_flag_does_not_leak_into_the_next_save() -> None:
    first, second = stale_pair()
    second.last_seen = timezone.now()
    second.save(update_fields=["last_seen"])
    first.value = 1
    first.save()
    second.value = 2
    with pytest.raises(ConcurrencyError), transaction.atomic():
        second.save()
    assert stored(first.pk) == (1, 2)


def test_refresh_from_db_picks_up_the_new_version() -> None:
    first, second = stale_pair()
    first.value = 1
    first.save()

    second.refresh_from_db()
    assert second.version == 2
    second.value += 1
    second.save()
    assert stored(first.pk) == (2, 3)

    first.refresh_from_db(fields=["version"])
    assert first.version == 3


def test_update_versioned_bumps_versions_so_loaded_copies_become_stale() -> None:
    loaded = Counter.objects.create(name="a")
    other = Counter.objects.create(name="b", value=5)

    assert Counter.objects.filter(pk=loaded.pk).update_versioned(value=41) == 1
    assert stored(loaded.pk) == (41, 2)
    assert stored(other.pk) == (5, 1)  # untouched rows keep their version

    loaded.value = 1
    with pytest.raises(ConcurrencyError), transaction.atomic():
        loaded.save()
    assert stored(loaded.pk) == (41, 2)

    assert Counter.objects.all().update_versioned() == 2  # bump only
    assert stored(loaded.pk) == (41, 3)
    assert stored(other.pk) == (5, 2)


def test_update_versioned_refuses_an_explicit_version() -> None:
    with pytest.raises(TypeError, match=r"update_versioned\(version=\.\.\.\) on testapp\.Counter"):
        Counter.objects.update_versioned(version=7)


def test_plain_queryset_update_does_not_bump(django_assert_num_queries: Any) -> None:
    """Documented: ``update()`` is Django's; use ``update_versioned()`` to invalidate copies."""
    counter = Counter.objects.create(name="a")
    Counter.objects.filter(pk=counter.pk).update(value=3)
    assert stored(counter.pk) == (3, 1)


def test_loaddata_stores_the_fixture_version_as_given() -> None:
    call_command("loaddata", str(FIXTURE), verbosity=0)
    counter = Counter.objects.get(pk=9001)
    assert (counter.name, counter.value, counter.version) == ("from-fixture", 7, 42)
    order = Order.objects.get(pk=9001)
    assert (order.total, order.status, order.version) == (Decimal("12.50"), "placed", 5)
    assert not OutboxEvent.objects.exists()  # loading data is not a business event

    # Saving a loaded object goes on from the fixture's version.
    counter.value += 1
    counter.save()
    assert stored(9001) == (8, 43)


def test_loaddata_twice_reloads_the_rows_as_given() -> None:
    call_command("loaddata", str(FIXTURE), verbosity=0)
    call_command("loaddata", str(FIXTURE), verbosity=0)
    assert Counter.objects.filter(pk=9001).count() == 1
    assert stored(9001) == (7, 42)


def test_loaddata_over_a_changed_row_restores_fixture_state() -> None:
    """Raw saves are not version-checked: a fixture is the state you asked for."""
    call_command("loaddata", str(FIXTURE), verbosity=0)
    counter = Counter.objects.get(pk=9001)
    counter.value = 100
    counter.save()
    assert stored(9001) == (100, 43)

    call_command("loaddata", str(FIXTURE), verbosity=0)
    assert stored(9001) == (7, 42)
    counter.value = 1
    # The in-memory copy (version 43) is stale against the reloaded row (42).
    with pytest.raises(ConcurrencyError), transaction.atomic():
        counter.save()


def test_dumpdata_round_trips_the_version(tmp_path: Path) -> None:
    counter = Counter.objects.create(name="dumped", value=3)
    counter.value = 4
    counter.save()
    out = tmp_path / "dump.json"
    call_command("dumpdata", "testapp.counter", output=str(out), verbosity=0)
    Counter.objects.all().delete()
    call_command("loaddata", str(out), verbosity=0)
    assert stored(counter.pk) == (4, 2)


def test_aggregate_events_carry_the_version_after_the_save() -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("9.50"))
    assert order.version == 1

    with UnitOfWork():
        order.place()
        order.save()
    event = OutboxEvent.objects.get()
    assert order.version == 2
    assert event.aggregate_type == "testapp.order"
    assert event.aggregate_id == str(order.pk)
    assert event.aggregate_version == 2
    assert Order.objects.get(pk=order.pk).version == 2

    with UnitOfWork():
        order.pay()
        order.save()
        order.note = "second save, same unit of work"
        order.save()
    paid = OutboxEvent.objects.get(event_type__endswith="OrderPaid")
    assert Order.objects.get(pk=order.pk).version == 4
    assert paid.aggregate_version == 4


def test_stale_aggregate_save_raises_and_stages_no_event() -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("1"))
    stale = Order.objects.get(pk=order.pk)
    with UnitOfWork():
        order.note = "first"
        order.save()

    with pytest.raises(ConcurrencyError), UnitOfWork():
        stale.place()
        stale.save()
    assert Order.objects.get(pk=order.pk).status == "new"
    assert not OutboxEvent.objects.exists()
