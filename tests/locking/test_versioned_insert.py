"""A versioned object being added is inserted, never a blind UPDATE of a row it never read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from django_uow import UnitOfWork
from tests.support.helpers import capture_statements
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("stored_version", [1, 2])
def test_a_new_instance_with_an_existing_pk_does_not_overwrite_the_row(
    stored_version: int,
) -> None:
    existing = Counter.objects.create(name="a", value=5)
    Counter.objects.filter(pk=existing.pk).update(version=stored_version)
    with pytest.raises(IntegrityError, match=rf"Counter pk={existing.pk}.*already"):
        with transaction.atomic():
            Counter(pk=existing.pk, name="b", value=9).save()
    row = Counter.objects.get(pk=existing.pk)
    assert (row.name, row.value, row.version) == ("a", 5, stored_version)


def test_an_added_instance_goes_straight_to_insert() -> None:
    with capture_statements() as statements:
        Counter(pk=42, name="fresh").save()
    assert statements == ["INSERT testapp_counter"]
    assert Counter.objects.get(pk=42).version == 1


def test_an_added_instance_with_an_existing_pk_fails_inside_a_unit_of_work_too() -> None:
    existing = Counter.objects.create(name="a")
    with pytest.raises(IntegrityError, match="already"), UnitOfWork():
        Counter(pk=existing.pk, name="b").save()
    assert Counter.objects.get(pk=existing.pk).name == "a"


def test_loaded_instances_still_update() -> None:
    counter = Counter.objects.create(name="a")
    counter.value = 3
    counter.save()
    assert (Counter.objects.get().value, counter.version) == (3, 2)


def test_loaddata_over_existing_rows_keeps_working(tmp_path: Path) -> None:
    counter = Counter.objects.create(name="a", value=1)
    counter.save()  # version 2
    fixture = tmp_path / "counters.json"
    fixture.write_text(
        json.dumps(
            [
                {
                    "model": "testapp.counter",
                    "pk": counter.pk,
                    "fields": {"name": "a", "value": 7, "version": 5, "last_seen": None},
                },
                {
                    "model": "testapp.counter",
                    "pk": counter.pk + 100,
                    "fields": {"name": "new", "value": 1, "version": 3, "last_seen": None},
                },
            ]
        )
    )
    call_command("loaddata", str(fixture), verbosity=0)
    assert list(Counter.objects.order_by("pk").values_list("name", "value", "version")) == [
        ("a", 7, 5),
        ("new", 1, 3),
    ]
