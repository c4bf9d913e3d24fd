"""ETag / If-Match / 409 helpers, through Django's test client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory

from django_uow import ConcurrencyError
from django_uow.http import ConcurrencyErrorMiddleware, etag_for
from tests.testapp.models import Counter

pytestmark = pytest.mark.django_db


@pytest.fixture
def counter() -> Counter:
    return Counter.objects.create(name="hits", value=1)


def put(client: Client, url: str, value: int, **headers: str) -> Any:
    return client.put(
        url, json.dumps({"value": value}), content_type="application/json", headers=headers
    )


def stored(counter: Counter) -> tuple[int, int]:
    row = Counter.objects.get(pk=counter.pk)
    return row.value, row.version


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_get_sends_the_version_as_a_strong_etag(
    client: Client, counter: Counter, base: str
) -> None:
    response = client.get(f"{base}{counter.pk}/")
    assert response.status_code == 200
    assert response["ETag"] == f'"testapp.counter:{counter.pk}:1"' == etag_for(counter)
    assert response.json() == {"name": "hits", "value": 1, "version": 1}


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_if_none_match_answers_304(client: Client, counter: Counter, base: str) -> None:
    tag = etag_for(counter)
    assert client.get(f"{base}{counter.pk}/", headers={"if-none-match": tag}).status_code == 304
    weak = client.get(f"{base}{counter.pk}/", headers={"if-none-match": f"W/{tag}"})
    assert weak.status_code == 304
    counter.save()
    changed = client.get(f"{base}{counter.pk}/", headers={"if-none-match": tag})
    assert changed.status_code == 200
    assert changed["ETag"] == etag_for(counter)


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_put_with_current_if_match_saves_and_returns_the_new_etag(
    client: Client, counter: Counter, base: str
) -> None:
    response = put(client, f"{base}{counter.pk}/", 5, if_match=etag_for(counter))
    assert response.status_code == 200
    assert response["ETag"] == f'"testapp.counter:{counter.pk}:2"'
    assert stored(counter) == (5, 2)


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_put_with_stale_if_match_is_412_and_writes_nothing(
    client: Client, counter: Counter, base: str
) -> None:
    read_tag = etag_for(counter)
    assert put(client, f"{base}{counter.pk}/", 5, if_match=read_tag).status_code == 200

    response = put(client, f"{base}{counter.pk}/", 7, if_match=read_tag)
    assert response.status_code == 412
    assert response["ETag"] == f'"testapp.counter:{counter.pk}:2"'
    body = response.json()
    assert body["error"] == "precondition_failed"
    assert (body["model"], body["pk"]) == ("testapp.Counter", counter.pk)
    assert (body["expected_version"], body["current_version"]) == (1, 2)
    assert "Fetch it again" in body["detail"]
    assert stored(counter) == (5, 2)


def test_weak_or_foreign_tags_never_satisfy_if_match(client: Client, counter: Counter) -> None:
    other = Counter.objects.create(name="other")
    url = f"/counters/{counter.pk}/"
    assert put(client, url, 5, if_match=f"W/{etag_for(counter)}").status_code == 412
    foreign = put(client, url, 5, if_match=etag_for(other))
    assert foreign.status_code == 412
    assert foreign.json()["expected_version"] is None
    assert put(client, url, 5, if_match="*").status_code == 200  # * matches any version
    assert stored(counter) == (5, 2)


def test_if_match_is_optional_unless_required(client: Client, counter: Counter) -> None:
    assert put(client, f"/counters/{counter.pk}/", 3).status_code == 200

    for url in (f"/strict/counters/{counter.pk}/", f"/cbv/strict/counters/{counter.pk}/"):
        response = put(client, url, 4)
        assert response.status_code == 428
        body = response.json()
        assert body["error"] == "precondition_required"
        assert f"If-Match: {etag_for(Counter.objects.get(pk=counter.pk))}" in body["detail"]
    assert stored(counter) == (3, 2)
    # Safe methods never need If-Match.
    assert client.get(f"/strict/counters/{counter.pk}/").status_code == 200
    ok = put(
        client, f"/strict/counters/{counter.pk}/", 4, if_match=f'"testapp.counter:{counter.pk}:2"'
    )
    assert ok.status_code == 200


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_a_write_racing_the_check_is_a_409_with_json(
    client: Client, counter: Counter, base: str
) -> None:
    response = put(client, f"{base}{counter.pk}/?race=1", 9, if_match=etag_for(counter))
    assert response.status_code == 409
    assert response.json() == {
        "error": "conflict",
        "model": "testapp.Counter",
        "pk": counter.pk,
        "expected_version": 1,
        "current_version": 2,
        "detail": response.json()["detail"],
    }
    assert "Cannot save testapp.Counter" in response.json()["detail"]
    assert stored(counter) == (-1, 2)  # the racing writer's value, not ours


def test_delete_with_if_match(client: Client, counter: Counter) -> None:
    url = f"/counters/{counter.pk}/"
    stale = etag_for(counter)
    counter.save()
    assert client.delete(url, headers={"if-match": stale}).status_code == 412
    assert Counter.objects.filter(pk=counter.pk).exists()
    response = client.delete(url, headers={"if-match": etag_for(counter)})
    assert response.status_code == 204
    assert not response.has_header("ETag")
    assert not Counter.objects.filter(pk=counter.pk).exists()
    assert client.get(url).status_code == 404


def test_custom_lookup_and_queryset(client: Client, counter: Counter) -> None:
    assert client.get("/counters/by-name/hits/")["ETag"] == etag_for(counter)
    assert client.get("/counters/by-name/nope/").status_code == 404
    Counter.objects.create(name="negative", value=-5)
    assert client.get("/counters/by-name/negative/").status_code == 404  # outside the queryset


def test_conflict_as_409_on_any_view(client: Client, counter: Counter) -> None:
    response = client.post(f"/counters/{counter.pk}/stale/")
    assert response.status_code == 409
    body = response.json()
    assert (body["error"], body["model"], body["pk"]) == ("conflict", "testapp.Counter", counter.pk)
    assert (body["expected_version"], body["current_version"]) == (1, 2)
    assert stored(counter) == (1, 2)


def test_middleware_turns_escaping_conflicts_into_409() -> None:
    error = ConcurrencyError("shop.Order", "a1", 4, actual_version=None, deleted=True)
    middleware = ConcurrencyErrorMiddleware(lambda request: HttpResponse())
    request: HttpRequest = RequestFactory().post("/")
    response = middleware.process_exception(request, error)
    assert response is not None
    assert response.status_code == 409
    assert json.loads(response.content)["expected_version"] == 4
    assert json.loads(response.content)["current_version"] is None
    assert middleware.process_exception(request, ValueError("x")) is None


def test_versioned_view_names_a_missing_url_kwarg() -> None:
    from tests.testapp import views

    request = RequestFactory().get("/")
    with pytest.raises(TypeError, match=r"passes no 'pk' argument"):
        views.counter_resource(request, id=1)


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_if_none_match_star_on_a_put_is_create_only(
    client: Client, counter: Counter, base: str
) -> None:
    response = put(client, f"{base}{counter.pk}/", 9, if_none_match="*")
    assert response.status_code == 412
    assert response.json()["error"] == "precondition_failed"
    current = put(client, f"{base}{counter.pk}/", 9, if_none_match=etag_for(counter))
    assert current.status_code == 412  # "only if it is not this version"
    assert stored(counter) == (1, 1)
    other = put(client, f"{base}{counter.pk}/", 9, if_none_match='"testapp.counter:0:0"')
    assert other.status_code == 200
    assert stored(counter) == (9, 2)


@pytest.mark.parametrize("base", ["/counters/", "/cbv/counters/"])
def test_a_stale_if_match_on_a_get_is_412(client: Client, counter: Counter, base: str) -> None:
    stale = etag_for(counter)
    counter.save()
    response = client.get(f"{base}{counter.pk}/", headers={"if-match": stale})
    assert response.status_code == 412
    assert response["ETag"] == etag_for(counter)
    fresh = client.get(f"{base}{counter.pk}/", headers={"if-match": etag_for(counter)})
    assert fresh.status_code == 200


def test_a_huge_if_match_is_refused_without_being_echoed(client: Client, counter: Counter) -> None:
    huge = '"' + "x" * 1_000_000 + '"'
    response = put(client, f"/counters/{counter.pk}/", 5, if_match=huge)
    assert response.status_code == 412
    assert len(response.content) < 2000
    assert b"xxxxxxxx" not in response.content
    assert stored(counter) == (1, 1)
    listed = put(client, f"/counters/{counter.pk}/", 5, if_match=f"{huge}, {etag_for(counter)}")
    assert listed.status_code == 412  # too long to parse: it matches nothing
    ignored = client.get(f"/counters/{counter.pk}/", headers={"if-none-match": huge})
    assert ignored.status_code == 200
