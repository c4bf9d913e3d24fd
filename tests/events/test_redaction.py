"""Secrets kept out of view: REDACT, the admin's lookups, and a capped last error."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.core import checks
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_uow.events.decoding import Misfit
from django_uow.events.redaction import DEFAULT_KEYS, MASK, Redactor, redact
from django_uow.models import OutboxEvent
from django_uow.relay import relay_batch
from tests.admin.test_admin import client_for, make_event, staff, url
from tests.support.relay import RecordingPublisher

pytestmark = pytest.mark.django_db

NESTED = {
    "order": {
        "customer": {"name": "Ada", "password": "hunter2"},
        "lines": [{"sku": "A", "meta": {"ssn": "123-45-6789"}}, {"card": {"cvc": "999"}}],
    },
    "Authorization": "Bearer abc",
}


def test_a_key_three_levels_deep_and_inside_lists_is_masked() -> None:
    with override_settings(DJANGO_UOW={"REDACT": ["ssn", "order.lines.card.cvc"]}):
        shown = redact(NESTED)
    assert shown["order"]["customer"] == {"name": "Ada", "password": MASK}
    assert shown["order"]["lines"][0] == {"sku": "A", "meta": {"ssn": MASK}}
    assert shown["order"]["lines"][1] == {"card": {"cvc": MASK}}
    assert shown["Authorization"] == MASK
    assert NESTED["order"]["customer"]["password"] == "hunter2"  # the original is untouched


def test_a_dotted_path_masks_only_that_place_and_names_ignore_case() -> None:
    secret = Redactor(["a.b", "SSN"])
    assert secret({"a": {"b": 1}, "b": 2, "c": {"a": {"b": 3}}}) == {
        "a": {"b": MASK},
        "b": 2,
        "c": {"a": {"b": 3}},
    }
    assert secret({"Ssn": 1, "x": [{"sSN": 2}]}) == {"Ssn": MASK, "x": [{"sSN": MASK}]}


def test_the_setting_extends_the_default_list() -> None:
    with override_settings(DJANGO_UOW={"REDACT": ["pin"]}):
        shown = redact({"pin": 1, "password": 2, "token": 3, "plain": 4})
    assert shown == {"pin": MASK, "password": MASK, "token": MASK, "plain": 4}
    assert {"authorization", "set-cookie", "refresh_token"} <= set(DEFAULT_KEYS)


@pytest.mark.parametrize("value", ["ssn", ["ssn", 3], [""], {"ssn": 1}])
def test_a_bad_redact_setting_is_refused_by_its_own_check(value: Any) -> None:
    with override_settings(DJANGO_UOW={"REDACT": value}):
        errors = [e for e in checks.run_checks() if e.id.startswith("django_uow.E")]
    assert [e.id for e in errors] == ["django_uow.E050"]


def test_a_decoding_error_does_not_quote_a_secret_field() -> None:
    from django_uow.events.decoding import _misfit

    assert "hunter2" not in str(_misfit("customer.password", "int", "hunter2"))
    assert "'[redacted]'" in str(_misfit("customer.password", "int", "hunter2"))
    assert "'oops'" in str(_misfit("customer.age", "int", "oops"))
    assert isinstance(_misfit("x", "int", 1), Misfit)


def test_the_admin_page_raw_json_and_timeline_show_masked_values(admin_client: Client) -> None:
    event = make_event(
        payload=NESTED, headers={"authorization": "Bearer abc", "actor": 7, "request_id": "r-1"}
    )
    with override_settings(DJANGO_UOW={"REDACT": ["ssn", "actor"]}):
        page = admin_client.get(url("change", event.pk)).content.decode()
        raw = admin_client.get(url("raw", event.pk)).json()
        raw_headers = admin_client.get(url("raw", event.pk) + "?field=headers").json()
        timeline = admin_client.get(url("timeline", event.pk)).content.decode()
    for secret in ("hunter2", "123-45-6789", "Bearer abc"):
        assert secret not in page
    assert MASK in page
    assert raw["order"]["customer"]["password"] == MASK
    assert raw["order"]["lines"][0]["meta"]["ssn"] == MASK
    assert raw_headers["authorization"] == MASK and raw_headers["request_id"] == "r-1"
    assert MASK in timeline and "r-1" in timeline


def test_publishers_still_send_the_real_values() -> None:
    event = make_event(aggregate_id="", payload=NESTED, headers={"authorization": "Bearer abc"})
    publisher = RecordingPublisher()
    with override_settings(DJANGO_UOW={"REDACT": ["ssn"]}):
        result = relay_batch(publishers=[publisher])
    assert result.dispatched == 1
    (envelope,) = publisher.published
    assert envelope.event_id == event.event_id
    assert envelope.payload["order"]["customer"]["password"] == "hunter2"
    assert envelope.payload["order"]["lines"][0]["meta"]["ssn"] == "123-45-6789"
    assert envelope.headers["authorization"] == "Bearer abc"


# -- lookups -----------------------------------------------------------------------------


def outbox_queries(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if "django_uow_outboxevent" in q["sql"]]


@pytest.mark.parametrize(
    "query",
    [
        {"last_error__contains": "e"},
        {"payload__x__startswith": "x"},
        {"headers__actor": "1"},
        {"event_id__regex": ".*"},
        {"status__exact": "failed", "aggregate_id__icontains": "4"},
    ],
)
def test_arbitrary_lookups_are_refused_before_any_outbox_query(
    admin_client: Client, query: dict[str, str]
) -> None:
    make_event()
    admin_client.get(url("changelist"))  # warm the session and content types
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(url("changelist"), query)
    assert response.status_code == 302
    assert response["Location"].endswith("?e=1")
    assert outbox_queries(ctx) == []


@pytest.mark.parametrize(
    "query",
    [{"last_error__contains": "e"}, {"handler__startswith": "x"}, {"event_id__regex": "."}],
)
def test_the_inbox_list_refuses_them_too(admin_client: Client, query: dict[str, str]) -> None:
    changelist = reverse("admin:django_uow_processedevent_changelist")
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(changelist, query)
    assert response.status_code == 302 and response["Location"].endswith("?e=1")
    assert not [q for q in ctx.captured_queries if "django_uow_processedevent" in q["sql"]]


def test_the_filters_that_exist_keep_working(admin_client: Client) -> None:
    failed = make_event(status=OutboxEvent.Status.FAILED, event_type="testapp.OrderPaid")
    pending = make_event(aggregate_type="testapp.counter")
    for query in (
        {"status__exact": "failed"},
        {"event_type": "testapp.OrderPaid"},
        {"aggregate_type": "testapp.order"},
        {
            "created_at__gte": "2000-01-01 00:00:00+00:00",
            "created_at__lt": "2999-01-01 00:00:00+00:00",
        },
        {"actor": "none"},
        {"request_id": "r-1"},
        {"q": str(failed.event_id), "o": "1", "p": "0"},
    ):
        response = admin_client.get(url("changelist"), query)
        assert response.status_code == 200, query
    page = admin_client.get(url("changelist"), {"status__exact": "failed"}).content.decode()
    assert str(failed.event_id)[:8] in page and str(pending.event_id)[:8] not in page
    inbox = reverse("admin:django_uow_processedevent_changelist")
    assert admin_client.get(inbox, {"q": str(uuid.uuid4())}).status_code == 200


def test_every_list_filter_parameter_is_allowed(admin_client: Client) -> None:
    from django.contrib import admin

    from django_uow.admin.lookups import filter_parameters

    for model in (OutboxEvent, admin.site._registry[OutboxEvent].model):
        model_admin = admin.site._registry[model]
        allowed = filter_parameters(model_admin, None)  # type: ignore[arg-type]
        assert {"status__exact", "event_type", "aggregate_type", "actor", "request_id"} <= allowed
        assert {"created_at__gte", "created_at__lt"} <= allowed
        assert model_admin.lookup_allowed("status__exact", "failed")
        assert not model_admin.lookup_allowed("last_error__contains", "e")


# -- last error --------------------------------------------------------------------------


def test_a_megabyte_error_makes_a_small_page_with_the_full_text_behind_a_link(
    admin_client: Client,
) -> None:
    error = "ValueError: " + "x" * 1_000_000 + "THE-END"
    event = make_event(status=OutboxEvent.Status.FAILED, last_error=error)
    response = admin_client.get(url("change", event.pk))
    assert response.status_code == 200
    assert len(response.content) < 100_000
    page = response.content.decode()
    assert "THE-END" not in page and "Showing the first 2,000 of" in page
    full = admin_client.get(url("error", event.pk))
    assert full.status_code == 200 and full["Content-Type"].startswith("text/plain")
    assert full.content.decode() == error


def test_the_full_error_needs_the_change_permission() -> None:
    event = make_event(status=OutboxEvent.Status.FAILED, last_error="E: " + "y" * 3000)
    viewer = client_for(staff("viewer2", "view_outboxevent"))
    assert viewer.get(url("change", event.pk)).status_code == 200
    assert viewer.get(url("error", event.pk)).status_code == 403
    changer = client_for(staff("changer2", "view_outboxevent", "change_outboxevent"))
    assert changer.get(url("error", event.pk)).status_code == 200
