"""VersionedAPIViewMixin with real Django REST framework generic views."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from django_uow.http import etag_for
from tests.testapp.models import Counter

pytest.importorskip("rest_framework", reason="djangorestframework is not installed")

pytestmark = pytest.mark.django_db


@pytest.fixture
def counter() -> Counter:
    return Counter.objects.create(name="hits", value=1)


def send(client: Client, method: str, url: str, body: dict[str, Any], **headers: str) -> Any:
    return getattr(client, method)(
        url, json.dumps(body), content_type="application/json", headers=headers
    )


def stored(counter: Counter) -> tuple[int, int]:
    row = Counter.objects.get(pk=counter.pk)
    return row.value, row.version


def test_get_carries_the_etag_and_if_none_match_is_304(client: Client, counter: Counter) -> None:
    response = client.get(f"/drf/counters/{counter.pk}/")
    assert response.status_code == 200
    assert response["ETag"] == etag_for(counter)
    assert response.json() == {"name": "hits", "value": 1, "version": 1}
    cached = client.get(
        f"/drf/counters/{counter.pk}/", headers={"if-none-match": etag_for(counter)}
    )
    assert cached.status_code == 304


@pytest.mark.parametrize("method", ["put", "patch"])
def test_a_write_with_the_current_etag_answers_with_the_new_one(
    client: Client, counter: Counter, method: str
) -> None:
    body = {"name": "hits", "value": 5} if method == "put" else {"value": 5}
    response = send(
        client, method, f"/drf/counters/{counter.pk}/", body, if_match=etag_for(counter)
    )
    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert response["ETag"] == f'"testapp.counter:{counter.pk}:2"'
    assert stored(counter) == (5, 2)


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_a_stale_if_match_is_412_and_changes_nothing(
    client: Client, counter: Counter, method: str
) -> None:
    stale = etag_for(counter)
    Counter.objects.filter(pk=counter.pk).update_versioned(value=3)
    response = send(client, method, f"/drf/counters/{counter.pk}/", {"value": 9}, if_match=stale)
    assert response.status_code == 412
    body = response.json()
    assert (body["error"], body["expected_version"], body["current_version"]) == (
        "precondition_failed",
        1,
        2,
    )
    assert response["ETag"] == f'"testapp.counter:{counter.pk}:2"'
    assert stored(counter) == (3, 2)


def test_if_match_is_required_when_asked(client: Client, counter: Counter) -> None:
    url = f"/drf/strict/counters/{counter.pk}/"
    for method in ("put", "patch", "delete"):
        response = send(client, method, url, {"name": "hits", "value": 4})
        assert response.status_code == 428
        assert response.json()["error"] == "precondition_required"
    assert client.get(url).status_code == 200  # reads need no precondition
    assert stored(counter) == (1, 1)
    deleted = send(client, "delete", url, {}, if_match=etag_for(counter))
    assert deleted.status_code == 204 and not Counter.objects.exists()


@pytest.mark.django_db(transaction=True)  # the stale save marks a test's atomic block for rollback
def test_a_writer_racing_the_check_is_a_409(client: Client, counter: Counter) -> None:
    response = send(
        client,
        "patch",
        f"/drf/stale/counters/{counter.pk}/",
        {"value": 8},
        if_match=etag_for(counter),
    )
    assert response.status_code == 409
    body = response.json()
    assert (body["error"], body["expected_version"], body["current_version"]) == ("conflict", 1, 2)
    assert stored(counter) == (0, 2)  # the racing writer's change, not ours
