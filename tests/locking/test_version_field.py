"""The version field is the model's choice: ``Product`` keeps it in ``version_number``.

Every place that reads or writes versions finds the field by its type
(``VersionField``): saves, deletes, ``update_versioned``, event versions, ETags, the
admin, change tracking and the testing kit.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import transaction
from django.test import Client
from django.test.utils import isolate_apps
from django.urls import reverse

from django_uow import ConcurrencyError, UnitOfWork, VersionField
from django_uow.http import etag_for
from django_uow.locking.fields import version_field_of
from django_uow.models import OutboxEvent
from django_uow.testing import simulate_conflict
from django_uow.uow.journal import snapshot_of
from tests.allocation.events import OutOfStock
from tests.allocation.models import Product
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db


def test_the_version_field_is_found_by_its_type() -> None:
    assert version_field_of(Product).name == "version_number"
    assert version_field_of(Counter).name == "version"
    assert isinstance(version_field_of(Product), VersionField)
    with pytest.raises(FieldDoesNotExist):
        Product._meta.get_field("version")


def test_a_version_field_migrates_as_a_plain_integer_column() -> None:
    """Projects that already have ``version`` columns get no new migration."""
    _name, path, _args, kwargs = version_field_of(Product).deconstruct()
    assert path == "django.db.models.PositiveBigIntegerField"
    assert kwargs["default"] == 1


def test_save_checks_and_bumps_the_chosen_field() -> None:
    product = Product.objects.create(sku="LAMP")
    assert product.version_number == 1
    product.sku = "LAMP-2"
    product.save()
    assert product.version_number == 2
    stale = Product.objects.get(pk=product.pk)
    product.save()
    with pytest.raises(ConcurrencyError) as caught:
        stale.save()
    assert (caught.value.expected_version, caught.value.actual_version) == (2, 3)


def test_delete_is_version_checked() -> None:
    product = Product.objects.create(sku="LAMP")
    simulate_conflict(product)
    with pytest.raises(ConcurrencyError), transaction.atomic():
        product.delete()
    assert Product.objects.filter(pk=product.pk).exists()


def test_update_versioned_bumps_the_chosen_field() -> None:
    product = Product.objects.create(sku="LAMP")
    assert Product.objects.filter(pk=product.pk).update_versioned(sku="LAMP-2") == 1
    assert Product.objects.values_list("version_number", flat=True).get() == 2
    with pytest.raises(TypeError, match="version_number"):
        Product.objects.update_versioned(version_number=9)


def test_events_carry_the_chosen_field_as_their_version() -> None:
    product = Product.objects.create(sku="LAMP")
    with UnitOfWork():
        product.record_event(OutOfStock(sku="LAMP"))  # recorded, not saved: touched at commit
    assert product.version_number == 2
    assert OutboxEvent.objects.values_list("aggregate_version", flat=True).get() == 2


def test_the_etag_names_the_chosen_field() -> None:
    product = Product.objects.create(sku="LAMP")
    assert etag_for(product) == f'"allocation.product:{product.pk}:1"'


def test_tracking_ignores_the_version_field() -> None:
    product = Product.objects.create(sku="LAMP")
    assert "version_number" not in snapshot_of(product)
    with UnitOfWork() as uow:
        loaded = uow.repository(Product).get(product.pk)
        loaded.save()
        assert uow.dirty == []


@isolate_apps("tests.allocation")
def test_a_model_with_two_version_fields_is_refused() -> None:
    from django_uow.models import VersionedModel

    with pytest.raises(ImproperlyConfigured, match="more than one VersionField"):

        class Twice(VersionedModel):  # keeps the inherited `version` and adds another
            other_version = VersionField()

            class Meta:
                app_label = "allocation"


# -- the admin --------------------------------------------------------------------------


@pytest.fixture
def staff(client: Client, admin_user: Any, settings: Any) -> Client:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    client.force_login(admin_user)
    return client


def test_the_admin_form_carries_and_checks_the_chosen_field(staff: Client) -> None:
    product = Product.objects.create(sku="LAMP")
    url = reverse("admin:allocation_product_change", args=[product.pk])
    html = staff.get(url).content.decode()
    match = re.search(r'<input type="hidden" name="version_number" value="(\d+)"', html)
    assert match, "the change form does not carry version_number"
    simulate_conflict(product)  # someone else saved meanwhile
    response = staff.post(url, {"sku": "LAMP-2", "version_number": match.group(1)})
    assert response.status_code == 200
    assert "version 1, now 2" in response.content.decode()
    assert Product.objects.get().sku == "LAMP"


def test_the_admin_changelist_posts_and_checks_the_chosen_field(staff: Client) -> None:
    product = Product.objects.create(sku="LAMP")
    product.save()  # version_number 2
    url = reverse("admin:allocation_product_changelist")
    html = staff.get(url).content.decode()
    assert f'name="_uow_version_{product.pk}" value="2"' in html
    confirm = staff.post(
        url,
        {
            "action": "delete_selected",
            "_selected_action": [str(product.pk)],
            f"_uow_version_{product.pk}": "2",
        },
    ).content.decode()
    assert f'name="_uow_version_{product.pk}" value="2"' in confirm
    simulate_conflict(product)  # changed after the confirmation page was shown
    response = staff.post(
        url,
        {
            "action": "delete_selected",
            "post": "yes",
            "_selected_action": [str(product.pk)],
            f"_uow_version_{product.pk}": "2",
        },
        follow=True,
    )
    assert "version 2, now 3" in response.content.decode()
    assert Product.objects.filter(pk=product.pk).exists()
