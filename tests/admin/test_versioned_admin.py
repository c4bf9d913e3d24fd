"""The admin of a versioned model refuses stale change forms and stale action selections."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin import helpers
from django.db import transaction
from django.db.models.signals import pre_save
from django.test import Client, RequestFactory
from django.urls import reverse

from django_uow import ConcurrencyError, UnitOfWork
from django_uow.admin.locking import VERSION_POST_PREFIX
from tests.testapp.models import Counter, Order

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(client: Client, admin_user: Any) -> Client:
    client.force_login(admin_user)
    return client


def change_url(obj: Any) -> str:
    return reverse(f"admin:testapp_{obj._meta.model_name}_change", args=[obj.pk])


def changelist_url(model: Any) -> str:
    return reverse(f"admin:testapp_{model._meta.model_name}_changelist")


def hidden_version(html: str) -> str:
    match = re.search(r'<input type="hidden" name="version" value="(\d+)"', html)
    assert match, "the change form does not carry the version"
    return match.group(1)


def open_counter_form(staff: Client, counter: Counter, **changes: Any) -> dict[str, Any]:
    """GET the change form and return the POST data it would submit, with ``changes``."""
    html = staff.get(change_url(counter)).content.decode()
    data = {
        "name": counter.name,
        "value": str(counter.value),
        "last_seen_0": "",
        "last_seen_1": "",
        "version": hidden_version(html),
    }
    data.update(changes)
    return data


def test_change_form_carries_the_version_as_a_hidden_input(staff: Client) -> None:
    counter = Counter.objects.create(name="c")
    counter.save()
    html = staff.get(change_url(counter)).content.decode()
    assert hidden_version(html) == "2"
    add_html = staff.get(reverse("admin:testapp_counter_add")).content.decode()
    assert 'name="version"' not in add_html


def test_stale_change_form_shows_an_error_and_keeps_the_first_change(staff: Client) -> None:
    counter = Counter.objects.create(name="c", value=1)
    alice = open_counter_form(staff, counter, value="10")
    bob = open_counter_form(staff, counter, value="20")

    first = staff.post(change_url(counter), alice)
    assert first.status_code == 302

    second = staff.post(change_url(counter), bob)
    assert second.status_code == 200  # the form again, not a redirect
    errors = second.context["adminform"].form.non_field_errors()
    assert errors == [
        "This counter was changed by someone else since you opened it "
        "(version 1, now 2). Reload to see their changes."
    ]
    assert "This counter was changed by someone else" in second.content.decode()
    row = Counter.objects.get(pk=counter.pk)
    assert (row.value, row.version) == (10, 2)


def test_fresh_form_after_reload_saves(staff: Client) -> None:
    counter = Counter.objects.create(name="c", value=1)
    staff.post(change_url(counter), open_counter_form(staff, counter, value="10"))
    response = staff.post(change_url(counter), open_counter_form(staff, counter, value="30"))
    assert response.status_code == 302
    row = Counter.objects.get(pk=counter.pk)
    assert (row.value, row.version) == (30, 3)


@pytest.mark.parametrize("version", ["", "abc"])
def test_missing_or_bad_version_is_refused(staff: Client, version: str) -> None:
    counter = Counter.objects.create(name="c", value=1)
    data = open_counter_form(staff, counter, value="5", version=version)
    response = staff.post(change_url(counter), data)
    assert response.status_code == 200
    (error,) = response.context["adminform"].form.non_field_errors()
    assert error.startswith("This form did not send a valid version of the counter")
    assert Counter.objects.get(pk=counter.pk).value == 1


def test_a_save_racing_the_form_check_becomes_a_form_error(staff: Client) -> None:
    """A writer between the form's check and the UPDATE: no overwrite, no 500."""
    counter = Counter.objects.create(name="c", value=1)
    data = open_counter_form(staff, counter, value="10")
    raced: list[int] = []

    def concurrent_writer(sender: Any, instance: Counter, **kwargs: Any) -> None:
        if not raced:
            raced.append(1)
            Counter.objects.filter(pk=instance.pk).update_versioned(value=99)

    pre_save.connect(concurrent_writer, sender=Counter)
    try:
        response = staff.post(change_url(counter), data)
    finally:
        pre_save.disconnect(concurrent_writer, sender=Counter)

    assert response.status_code == 200
    (error,) = response.context["adminform"].form.non_field_errors()
    assert "Cannot save testapp.Counter" in error
    assert "expected version 1" in error
    row = Counter.objects.get(pk=counter.pk)  # the racing write shared our rolled-back transaction
    assert (row.value, row.version) == (1, 1)


def test_fieldsets_get_the_version_and_aggregates_are_protected(staff: Client) -> None:
    with UnitOfWork():
        order = Order.objects.create(total=Decimal("5.00"))
    html = staff.get(change_url(order)).content.decode()
    version = hidden_version(html)
    data = {"status": "new", "total": "7.00", "note": "mine", "version": version}
    Order.objects.filter(pk=order.pk).update_versioned(note="theirs")

    response = staff.post(change_url(order), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.non_field_errors() == [
        "This order was changed by someone else since you opened it "
        "(version 1, now 2). Reload to see their changes."
    ]
    row = Order.objects.get(pk=order.pk)
    assert (row.note, row.total) == ("theirs", Decimal("5.00"))


def test_view_only_staff_do_not_see_a_version_input(client: Client, django_user_model: Any) -> None:
    from django.contrib.auth.models import Permission

    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_counter"))
    client.force_login(viewer)
    counter = Counter.objects.create(name="c")
    html = client.get(change_url(counter)).content.decode()
    assert 'name="version"' not in html
    assert "Version" not in html


# -- changelist actions ----------------------------------------------------------------------


def action_post(counters: list[Counter], versions: dict[int, int], **extra: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "action": "delete_selected",
        "index": "0",
        helpers.ACTION_CHECKBOX_NAME: [str(c.pk) for c in counters],
    }
    for pk, version in versions.items():
        data[f"{VERSION_POST_PREFIX}{pk}"] = str(version)
    data.update(extra)
    return data


def test_changelist_posts_each_rows_version(staff: Client) -> None:
    counter = Counter.objects.create(name="c")
    counter.save()
    html = staff.get(changelist_url(Counter)).content.decode()
    assert f'<input type="hidden" name="{VERSION_POST_PREFIX}{counter.pk}" value="2">' in html
    assert 'id="action-toggle"' in html  # the select-all header survives the override


def test_action_on_a_stale_selection_is_refused(staff: Client) -> None:
    a = Counter.objects.create(name="a")
    b = Counter.objects.create(name="b")
    Counter.objects.filter(pk=b.pk).update_versioned(value=5)  # after the list was loaded

    response = staff.post(
        changelist_url(Counter), action_post([a, b], {a.pk: 1, b.pk: 1}), follow=True
    )
    messages = [str(m) for m in response.context["messages"]]
    assert messages == [
        f"1 selected counter was changed by someone else since the list was loaded "
        f"(pk {b.pk}: version 1, now 2). Nothing was done; reload the list and try again."
    ]
    assert Counter.objects.count() == 2


def test_delete_selected_carries_versions_through_the_confirmation(staff: Client) -> None:
    a = Counter.objects.create(name="a")
    b = Counter.objects.create(name="b")
    versions = {a.pk: 1, b.pk: 1}

    confirm = staff.post(changelist_url(Counter), action_post([a, b], versions))
    assert confirm.status_code == 200
    html = confirm.content.decode()
    for obj in (a, b):
        assert f'name="{VERSION_POST_PREFIX}{obj.pk}" value="1"' in html

    done = staff.post(
        changelist_url(Counter),
        {
            "action": "delete_selected",
            "post": "yes",
            helpers.ACTION_CHECKBOX_NAME: [str(a.pk), str(b.pk)],
            **{f"{VERSION_POST_PREFIX}{pk}": "1" for pk in versions},
        },
        follow=True,
    )
    assert [str(m) for m in done.context["messages"]] == ["Successfully deleted 2 counters."]
    assert not Counter.objects.exists()


def test_delete_confirmed_after_a_change_is_refused(staff: Client) -> None:
    from django.contrib.admin.models import LogEntry

    a = Counter.objects.create(name="a")
    staff.post(changelist_url(Counter), action_post([a], {a.pk: 1}))  # confirmation shown
    a.value = 3
    a.save()  # someone edits it meanwhile

    done = staff.post(
        changelist_url(Counter),
        {
            "action": "delete_selected",
            "post": "yes",
            helpers.ACTION_CHECKBOX_NAME: [str(a.pk)],
            f"{VERSION_POST_PREFIX}{a.pk}": "1",
        },
        follow=True,
    )
    (message,) = [str(m) for m in done.context["messages"]]
    assert message.startswith("1 selected counter was changed by someone else")
    assert Counter.objects.filter(pk=a.pk, value=3).exists()
    assert not LogEntry.objects.exists()


def test_delete_queryset_is_version_checked_per_object(admin_user: Any) -> None:
    """The last line of defence when a write slips in after the selection was checked."""
    a = Counter.objects.create(name="a")
    b = Counter.objects.create(name="b")
    b.save()  # now at version 2; the selection below still says 1
    request = RequestFactory().post(
        "/",
        {
            helpers.ACTION_CHECKBOX_NAME: [str(a.pk), str(b.pk)],
            f"{VERSION_POST_PREFIX}{a.pk}": "1",
            f"{VERSION_POST_PREFIX}{b.pk}": "1",
        },
    )
    request.user = admin_user
    model_admin = admin.site._registry[Counter]
    with pytest.raises(ConcurrencyError, match="Cannot delete testapp.Counter"):
        with transaction.atomic():
            model_admin.delete_queryset(request, Counter.objects.order_by("pk"))
    assert Counter.objects.count() == 2


def test_registering_for_an_unversioned_model_is_refused() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from django_uow.admin.locking import VersionedModelAdmin
    from tests.testapp.models import Note

    with pytest.raises(ImproperlyConfigured, match=r"testapp\.Note, which is not a VersionedModel"):
        VersionedModelAdmin(Note, admin.site)
